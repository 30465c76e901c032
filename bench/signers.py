"""Notation and cosign signatures for the bench, made by the real programs (tests/peers).

``notation`` (1.3.2) signs by the referrers tag schema into the stack's docker-registry, which
has no referrers API; ``cosign2`` (2.6.5) writes the classic ``sha256-<hex>.sig`` tag. Both
with the flags tests/peers/README.md records, each in a home directory of its own, offline, run
by the test stack's helpers (tests/stack/peer_program.py, tests/stack/cosign.py).
A peer that is not built here gives a reason instead of a signer: the bench prints its row
as skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import push_many
from tests.peers import peer_path, peer_unavailable_reason
from tests.stack import PushedImage, Stack
from tests.stack.cosign import Cosign
from tests.stack.peer_program import PeerProgram
from tests.stack.trustd_config import toml_value

# One at a time: signers pushing into one repository at once upload the same config blob
# together, and docker-registry then refuses one of the manifests (blob unknown).
SIGN_WORKERS = 1


def peer(name: str) -> tuple[Path | None, str]:
    """The peer's binary, or None and why it is not available."""
    path = peer_path(name)
    return path, "" if path is not None else peer_unavailable_reason(name).splitlines()[0]


class NotationSigner:
    """A test certificate (``notation cert generate-test``) and a trust policy for it: the
    directory trustd's ``[notation] config_dir`` names."""

    def __init__(self, program: Path, home: Path) -> None:
        self.peer = PeerProgram(program, home)
        self.peer.ok("cert", "generate-test", "--default", "trustd-bench")

    @property
    def config_dir(self) -> Path:
        return self.peer.config / "notation"

    def trust(self, repositories: Sequence[str]) -> None:
        """A strict trust policy for ``repositories``, trusting the test certificate."""
        policy = {
            "version": "1.0",
            "trustPolicies": [
                {
                    "name": "trustd-bench",
                    "registryScopes": list(repositories),
                    "signatureVerification": {"level": "strict"},
                    "trustStores": ["ca:trustd-bench"],
                    "trustedIdentities": ["*"],
                }
            ],
        }
        (self.config_dir / "trustpolicy.json").write_text(json.dumps(policy, indent=2))

    def sign(self, images: Sequence[PushedImage]) -> None:
        sign_all(
            images,
            lambda image: self.peer.ok(
                "sign", "--insecure-registry", "--signature-format", "jws", image.by_digest
            ),
        )


class CosignSigner:
    """A cosign key; ``public_key`` is what trustd's ``[policy.cosign] keys`` names."""

    def __init__(self, program: Path, home: Path) -> None:
        self.cosign = Cosign(program, home)
        self.key = self.cosign.new_key("trustd-bench")
        self.public_key = self.key.public

    def sign(self, images: Sequence[PushedImage]) -> None:
        sign_all(images, lambda image: self.cosign.sign(image.by_digest, self.key))


def sign_all(images: Sequence[PushedImage], sign: Callable[[PushedImage], object]) -> None:
    with ThreadPoolExecutor(SIGN_WORKERS) as pool:
        list(pool.map(sign, images))


# --- the bench's verified images -----------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImages:
    """Images of one repository signed in one format (the first for warming up), or the reason
    there are none."""

    format: str  # "Notation", "cosign"
    images: tuple[PushedImage, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Verification:
    """What the verified-pull rows pull, and the trustd config that verifies it."""

    formats: tuple[VerifiedImages, ...]
    direct: tuple[PushedImage, ...]  # unsigned, pulled straight from containerd
    config: str  # TOML: [registry], [notation] and one [[policy]] rule per format


def prepare(stack: Stack, workdir: Path, count: int) -> Verification:
    """``count`` new images per format in a repository of its own, signed by the real peer, and
    ``count`` unsigned ones for the direct path; the trustd config for them."""
    direct = push_many(stack, "bench/direct-verified", _tags("d", count), prefix="direct-verified")
    hosts_dir = stack.containerd.hosts_dir
    # Where trustd reaches the registry: the hosts.toml containerd itself uses.
    lines = ["[registry]", f"hosts_dirs = [{toml_value(str(hosts_dir))}]", ""]
    formats: list[VerifiedImages] = []

    program, reason = peer("notation")
    if program is None:
        formats.append(VerifiedImages("Notation", reason=f"notation: {reason}"))
    else:
        images = push_many(stack, "bench/notation", _tags("n", count), prefix="notation")
        notation = NotationSigner(program, workdir / "notation")
        notation.trust([images[0].repository])
        notation.sign(images)
        formats.append(VerifiedImages("Notation", tuple(images)))
        lines += ["[notation]", f"config_dir = {toml_value(str(notation.config_dir))}", ""]
        lines += _rule(images[0].repository, "notation")

    program, reason = peer("cosign2")
    if program is None:
        formats.append(VerifiedImages("cosign", reason=f"cosign2: {reason}"))
    else:
        images = push_many(stack, "bench/cosign", _tags("c", count), prefix="cosign")
        cosign = CosignSigner(program, workdir / "cosign")
        cosign.sign(images)
        formats.append(VerifiedImages("cosign", tuple(images)))
        lines += _rule(images[0].repository, "cosign")
        lines += ["[policy.cosign]", f"keys = [{toml_value(str(cosign.public_key))}]", ""]
    return Verification(tuple(formats), tuple(direct), "\n".join(lines) + "\n")


def _tags(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index:02d}" for index in range(count)]


def _rule(repository: str, signatures: str) -> list[str]:
    return [
        "[[policy]]",
        f"match = {toml_value(repository)}",
        f"signatures = {toml_value(signatures)}",
        "",
    ]
