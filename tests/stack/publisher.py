"""The REAL notary CLI as a publisher: init, add, publish, delegations, key rotation.

Every method runs ``notary -s URL -d TRUSTDIR --tlscacert CA …`` as a subprocess with the
passphrases in ``NOTARY_*_PASSPHRASE``; the one confirmation the CLI asks for (rotating the root
key) is answered on stdin, and an aborted command is an error, not a silent no-op.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tests.stack.notary_keys import load_notary_key, read_key_file
from tests.stack.notary_server import NotaryServer
from tests.stack.pki import TestPKI
from tests.stack.ports import StackError

_PASSPHRASE_ROLES = ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")
_KEY_ID = re.compile(r"^[0-9a-f]{64}$")
_ABORTED = "Aborting action."


class NotaryCLIError(StackError):
    """A notary command exited non-zero; the message holds the command and its stderr."""


class SignedTarget(NamedTuple):
    tag: str
    digest: str  # "sha256:…"
    size: int
    role: str


def metadata_key_id(cert_path: Path) -> str:
    """The ID notary gives a delegation certificate's ``ecdsa-x509`` key in targets metadata.

    It differs from the CLI's ID for the same key (``notary delegation list``, the private key's
    file name), which hashes the bare public key instead of the certificate.
    """
    key = {
        "keytype": "ecdsa-x509",
        "keyval": {"private": None, "public": base64.b64encode(cert_path.read_bytes()).decode()},
    }
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class NotaryPublisher:
    """One trust directory publishing to one notary-server."""

    def __init__(
        self,
        server: NotaryServer,
        trust_dir: Path,
        passphrase: str = "trustd-test-passphrase",
        pki: TestPKI | None = None,
    ) -> None:
        self.server = server
        self.trust_dir = Path(trust_dir)
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        self.passphrase = passphrase
        # Delegation signer certificates are made here; a private CA directory if none is given.
        self.pki = pki
        self.signer_certs: dict[str, Path] = {}
        # The CLI's key files of delegation keys name no GUN, and one trust dir serves every
        # test's repositories: which GUN a signer was made for is only known here.
        self._delegation_keys: dict[tuple[str, str], list[str]] = {}
        self._files = self.trust_dir.parent / (self.trust_dir.name + "-files")
        self._files.mkdir(parents=True, exist_ok=True)
        self._file_counter = 0

    # --- running the CLI --------------------------------------------------------------------

    def run(self, *args: str, stdin: str = "") -> str:
        """Run one notary command against this server and trust dir; return its stdout.

        ``stdin`` answers the CLI's prompts; without it the CLI reads end-of-file, never the
        test runner's own stdin.
        """
        command = [
            "notary",
            "-s",
            self.server.url,
            "-d",
            str(self.trust_dir),
            "--tlscacert",
            str(self.server.ca_file),
            *args,
        ]
        environment = dict(os.environ)
        for role in _PASSPHRASE_ROLES:
            environment[f"NOTARY_{role}_PASSPHRASE"] = self.passphrase
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise NotaryCLIError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        # A declined or unanswered confirmation prints this and still exits 0.
        if _ABORTED in result.stdout or _ABORTED in result.stderr:
            raise NotaryCLIError(
                f"{' '.join(command)} aborted: {(result.stdout + result.stderr).strip()}"
            )
        return result.stdout

    @staticmethod
    def _role_flags(roles: Sequence[str] | None) -> list[str]:
        return [flag for role in roles or () for flag in ("-r", role)]

    def _scratch_file(self, data: bytes, stem: str) -> Path:
        self._file_counter += 1
        path = self._files / f"{self._file_counter:05d}-{stem}"
        path.write_bytes(data)
        return path

    # --- repositories and targets -----------------------------------------------------------

    def initialised(self, gun: str) -> bool:
        """Whether this trust dir already holds the repository's metadata."""
        return (self.trust_dir / "tuf" / gun / "metadata" / "root.json").exists()

    def init(self, gun: str, server_managed_snapshot: bool = True) -> None:
        """Create and publish an empty repository; like docker, the server signs snapshots."""
        self.run("init", gun)
        if server_managed_snapshot:
            self.run("key", "rotate", gun, "snapshot", "-r")
        self.publish(gun)

    def ensure_initialised(self, gun: str) -> None:
        if not self.initialised(gun):
            self.init(gun)

    def add(
        self,
        gun: str,
        tag: str,
        manifest: bytes,
        roles: Sequence[str] | None = None,
        publish: bool = False,
    ) -> None:
        """Stage ``tag`` -> sha256/length of ``manifest`` (the registry's raw manifest bytes)."""
        manifest_file = self._scratch_file(manifest, "manifest.json")
        args = ["add", gun, tag, str(manifest_file), *self._role_flags(roles)]
        self.run(*args, *(["--publish"] if publish else []))

    def remove(
        self, gun: str, tag: str, roles: Sequence[str] | None = None, publish: bool = False
    ) -> None:
        self.run("remove", gun, tag, *self._role_flags(roles), *(["--publish"] if publish else []))

    def publish(self, gun: str) -> None:
        self.run("publish", gun)

    def lookup(self, gun: str, tag: str) -> tuple[str, int]:
        """(``sha256:…``, size) the server's trust data gives for ``tag``; raises if unsigned."""
        line = self.run("lookup", gun, tag).strip().splitlines()[-1]
        # "TAG sha256:HEX SIZE"; split from the right because a tag could hold spaces.
        _, digest, size = line.rsplit(maxsplit=2)
        return digest, int(size)

    def list(self, gun: str, roles: Sequence[str] | None = None) -> list[SignedTarget]:
        """Every signed target as ``notary list`` shows it (digests as ``sha256:…``)."""
        targets: list[SignedTarget] = []
        for line in self.run("list", gun, *self._role_flags(roles)).splitlines():
            fields = line.rsplit(maxsplit=3)
            if len(fields) != 4 or not _KEY_ID.match(fields[1]):
                continue  # header, ruler, blank line or "No targets present …"
            name, digest, size, role = fields
            targets.append(SignedTarget(name, f"sha256:{digest}", int(size), role))
        return targets

    # --- delegations ------------------------------------------------------------------------

    def delegation_add(
        self,
        gun: str,
        role: str,
        cert_path: Path,
        paths: Iterable[str] | None = None,
        publish: bool = False,
    ) -> None:
        """Stage a delegation key; ``paths=None`` means ``--all-paths``."""
        path_flags = ["--all-paths"] if paths is None else [f"--paths={p}" for p in paths]
        self.run(
            "delegation",
            "add",
            gun,
            role,
            str(cert_path),
            *path_flags,
            *(["--publish"] if publish else []),
        )

    def delegation_remove(
        self,
        gun: str,
        role: str,
        key_ids: Sequence[str] = (),
        paths: Iterable[str] | None = None,
        publish: bool = False,
    ) -> None:
        """Remove keys (CLI key IDs) or paths from ``role``; neither removes the whole role."""
        path_flags = [f"--paths={p}" for p in paths or ()]
        self.run(
            "delegation",
            "remove",
            gun,
            role,
            *key_ids,
            *path_flags,
            "--yes",
            *(["--publish"] if publish else []),
        )

    def delegation_list(self, gun: str) -> str:
        return self.run("delegation", "list", gun)

    def add_delegation_signer(
        self,
        gun: str,
        role: str,
        paths: Iterable[str] | None = None,
        publish: bool = True,
    ) -> str:
        """Make a signer key and certificate for ``role``, import the key, delegate to it.

        Returns the CLI's key ID (as ``notary delegation list`` shows it); the certificate is
        ``signer_certs[key_id]`` and ``metadata_key_id`` of it is the ID in targets metadata.
        """
        self.ensure_initialised(gun)
        pki = self.pki or TestPKI(self.trust_dir.parent / (self.trust_dir.name + "-signers"))
        self.pki = pki
        cert_path, key_path = pki.self_signed_cert(role.rsplit("/", 1)[-1])
        before = set(self._key_files())
        self.run("key", "import", str(key_path), "-r", role, "-g", gun)
        imported = [path for path in self._key_files() if path not in before]
        if len(imported) != 1:
            raise StackError(f"notary key import for {role} wrote {len(imported)} key files")
        key_id = imported[0].stem
        self.signer_certs[key_id] = cert_path
        self._delegation_keys.setdefault((gun, role), []).append(key_id)
        self.delegation_add(gun, role, cert_path, paths=paths, publish=publish)
        return key_id

    # --- keys -------------------------------------------------------------------------------

    def rotate_key(self, gun: str, role: str, server_managed: bool = False) -> None:
        """``notary key rotate``: published at once by the CLI.

        Rotating root asks "Are you sure you want to proceed?" and has no flag to skip it.
        """
        self.run(
            "key",
            "rotate",
            gun,
            role,
            *(["-r"] if server_managed else []),
            stdin="yes\n" if role == "root" else "",
        )

    def _key_files(self) -> list[Path]:
        private = self.trust_dir / "private"
        if not private.is_dir():
            return []
        return sorted(private.glob("*.key"), key=lambda path: path.stat().st_mtime_ns)

    def key_ids(self, gun: str, role: str) -> list[str]:
        """CLI key IDs of this trust dir's private keys for ``role``, oldest first.

        Root keys are not bound to a GUN; targets (and local snapshot) keys are. Delegation keys
        are those ``add_delegation_signer`` made for ``gun``.
        """
        if role.startswith("targets/"):
            return list(self._delegation_keys.get((gun, role), []))
        found = []
        for path in self._key_files():
            headers, _ = read_key_file(path)
            if headers.get("role") == role and headers.get("gun", gun) == gun:
                found.append(path.stem)
        return found

    def private_key(self, role_or_key_id: str, gun: str) -> PrivateKeyTypes:
        """The decrypted private key, by key ID or by role (the newest key of that role)."""
        if _KEY_ID.match(role_or_key_id):
            key_id = role_or_key_id
        else:
            candidates = self.key_ids(gun, role_or_key_id)
            if not candidates:
                raise StackError(f"no private key for role {role_or_key_id} of {gun}")
            key_id = candidates[-1]
        return load_notary_key(self.trust_dir / "private" / f"{key_id}.key", self.passphrase)
