"""Build the Go programs the tests use as independent peers, from pinned module versions.

Usage: ``python3 -m tests.peers.build [NAME ...]`` (all peers without names).

Each peer is built with the machine's Go toolchain from the Go module proxy into
``${TRUSTD_PEER_CACHE:-/var/cache/trustd-test-peers}/bin``, outside the repository, at low
priority and one package at a time (the machine is small and shared). A peer whose binary and
stamp match its table entry is skipped. A peer that cannot be built never fails the run: the
reason goes to ``<cache>/reasons/<name>.txt``, and the tests that need it skip with that reason.
One line is printed per peer; the exit status is always 0 unless the arguments are wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/trustd-test-peers")
# A cold build of cosign with -p 1 on a busy 2-core machine is slow; past these a build is
# abandoned (and recorded), so a stuck download cannot eat the whole CI run.
DEFAULT_BUILD_TIMEOUT = 1800.0  # one peer
DEFAULT_BUILD_BUDGET = 2700.0  # one run of the build step, all peers
_HERE = Path(__file__).resolve().parent
_REASON_TAIL_LINES = 15
_GO_FALLBACK = Path("/usr/local/go/bin/go")


@dataclasses.dataclass(frozen=True)
class Peer:
    """One program built for the tests.

    Without ``module_dir`` the peer is ``go install PACKAGE@VERSION`` straight from the proxy
    (the module's own go.mod decides every dependency). With ``module_dir`` (a directory in this
    repository holding a go.mod, its go.sum and possibly ``replace`` lines or a small main
    package) it is ``go build -o BIN PACKAGE`` run in that directory; ``module@version`` then
    names what that go.mod requires, for the stamp and the messages.
    """

    name: str
    module: str
    version: str
    package: str
    binary: str
    purpose: str
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cgo: bool = False
    module_dir: Path | None = None

    @property
    def pinned(self) -> str:
        return f"{self.module}@{self.version}"

    def stamp(self) -> str:
        """What a built binary must have been built from to count as this peer."""
        parts = [
            f"module {self.pinned}",
            f"package {self.package}",
            f"tags {','.join(self.tags)}",
            f"ldflags {' '.join(self.ldflags)}",
            f"env {' '.join(f'{key}={value}' for key, value in self.env)}",
            f"cgo {int(self.cgo)}",
        ]
        if self.module_dir is not None:
            parts.append(f"module_dir {_tree_digest(self.module_dir)}")
        return "\n".join(parts) + "\n"


def _tree_digest(directory: Path) -> str:
    """sha256 over the names and contents of a build module's files (go.mod, go.sum, *.go)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and (path.suffix in {".go", ".mod", ".sum"}):
            digest.update(str(path.relative_to(directory)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


# kubelet's release; tests/peers/kubelet/go.mod requires it (and its staging modules' v0.X.Y).
_KUBERNETES = "v1.37.2"

# In priority order: the first ones matter most to the tests.
PEERS: tuple[Peer, ...] = (
    Peer(
        name="notation",
        module="github.com/notaryproject/notation",
        version="v1.3.2",
        package="github.com/notaryproject/notation/cmd/notation",
        binary="notation",
        # The newest 1.x the proxy serves here (it refuses the version list; v1.3.3 and v1.4.0
        # are refused as well).
        purpose="Notation signer and verifier (JWS/COSE, referrers API and tag schema)",
        # 'go install pkg@version' also reads the module's version list (for deprecations),
        # which the proxy here refuses for this module; a build module needs only the pin.
        module_dir=_HERE / "notation",
        # A tagged release reports no build metadata.
        ldflags=("-X", "github.com/notaryproject/notation/internal/version.BuildMetadata="),
    ),
    Peer(
        name="crane",
        module="github.com/google/go-containerregistry",
        version="v0.22.1",
        package="github.com/google/go-containerregistry/cmd/crane",
        binary="crane",
        purpose="crane: registry client; 'crane registry serve' (OCI 1.0, no referrers API)",
    ),
    Peer(
        name="referrers-registry",
        module="github.com/google/go-containerregistry",
        version="v0.22.1",
        package=".",
        binary="referrers-registry",
        purpose=(
            "crane's registry (go-containerregistry pkg/registry) with the OCI referrers API "
            "on, which 'crane registry serve' leaves off"
        ),
        module_dir=_HERE / "referrers_registry",
    ),
    Peer(
        name="cosign2",
        module="github.com/sigstore/cosign/v2",
        version="v2.6.5",
        package="github.com/sigstore/cosign/v2/cmd/cosign",
        binary="cosign2",
        purpose="cosign v2: classic sha256-<hex>.sig signatures",
    ),
    Peer(
        name="cosign3",
        module="github.com/sigstore/cosign/v3",
        version="v3.1.3",
        package="github.com/sigstore/cosign/v3/cmd/cosign",
        binary="cosign3",
        purpose="cosign v3: Sigstore bundles pushed as referrers",
    ),
    Peer(
        name="skopeo-sigstore",
        module="github.com/containers/skopeo",
        version="v1.20.0",
        package="github.com/containers/skopeo/cmd/skopeo",
        binary="skopeo-sigstore",
        purpose="skopeo with sigstore enabled (Debian bookworm's 1.9 has it patched out)",
        # The proxy here answers 403 for this module (its version list and every version tried:
        # v1.14.0, v1.18.0, v1.20.0), so this entry records that reason; containers-policy
        # below runs the same containers/image policy code instead.
        # Pure Go: OpenPGP instead of gpgme, no containers-storage or docker-daemon transport,
        # no graph drivers that need C.
        tags=(
            "containers_image_openpgp",
            "containers_image_storage_stub",
            "containers_image_docker_daemon_stub",
            "exclude_graphdriver_btrfs",
            "exclude_graphdriver_devicemapper",
            "exclude_graphdriver_overlay",
        ),
    ),
    Peer(
        name="containers-policy",
        module="github.com/containers/image/v5",
        version="v5.36.2",
        package=".",
        binary="containers-policy",
        purpose=(
            "containers/image's policy evaluation (sigstoreSigned, use-sigstore-attachments), "
            "the code skopeo, podman and CRI-O verify with"
        ),
        tags=("containers_image_openpgp",),
        module_dir=_HERE / "containers_policy",
    ),
    Peer(
        name="kubelet",
        module="k8s.io/kubernetes",
        version=_KUBERNETES,
        package="k8s.io/kubernetes/cmd/kubelet",
        binary="kubelet",
        purpose="a standalone kubelet in front of trustd (static pods, no API server)",
        # Not go-installable: its staging modules need replace lines to their published
        # versions, which the build module holds.
        module_dir=_HERE / "kubelet",
        # A plain build says v0.0.0-master; Kubernetes' own build stamps the release.
        ldflags=(
            f"-X k8s.io/component-base/version.gitVersion={_KUBERNETES}",
            "-X k8s.io/component-base/version.gitMajor=1",
            f"-X k8s.io/component-base/version.gitMinor={_KUBERNETES.split('.')[1]}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
        ),
    ),
)


def peer_named(name: str) -> Peer:
    for peer in PEERS:
        if peer.name == name:
            return peer
    known = ", ".join(peer.name for peer in PEERS)
    raise KeyError(f"no test peer named {name!r} (known: {known})")


def cache_dir() -> Path:
    return Path(os.environ.get("TRUSTD_PEER_CACHE") or DEFAULT_CACHE)


def binary_path(peer: Peer, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "bin" / peer.binary


def stamp_path(peer: Peer, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "stamps" / f"{peer.name}.txt"


def reason_path(peer: Peer, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "reasons" / f"{peer.name}.txt"


def is_built(peer: Peer, cache: Path | None = None) -> bool:
    """Whether the cached binary was built from exactly this table entry."""
    binary = binary_path(peer, cache)
    try:
        recorded = stamp_path(peer, cache).read_text()
    except OSError:
        return False
    return binary.is_file() and os.access(binary, os.X_OK) and recorded == peer.stamp()


class BuildFailed(Exception):
    """A peer could not be built; the message is what tests report when they skip."""


def _build_env(peer: Peer, gobin: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GOBIN": str(gobin),
            "CGO_ENABLED": "1" if peer.cgo else "0",
            "GOFLAGS": "-buildvcs=false",
            # Never fall back to fetching from version control: only the proxy is reachable.
            "GOPROXY": _proxy_without_direct(env.get("GOPROXY", "")),
        }
    )
    env.update(dict(peer.env))
    return env


def _proxy_without_direct(configured: str) -> str:
    """The configured proxy list without ``direct`` (which would try to clone from VCS hosts)."""
    if not configured:
        configured = _go_env("GOPROXY") or ""
    kept = [part for part in configured.replace("|", ",").split(",") if part and part != "direct"]
    return ",".join(kept) if kept else "off"


def _go_env(name: str) -> str | None:
    go = _go()
    if go is None:
        return None
    result = subprocess.run([go, "env", name], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def _tail(text: str, lines: int = _REASON_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _go() -> str | None:
    """The go command: on PATH, else where the official Go distribution installs it."""
    found = shutil.which("go")
    if found is None and os.access(_GO_FALLBACK, os.X_OK):
        found = str(_GO_FALLBACK)
    return found


def _build(peer: Peer, cache: Path, timeout: float) -> None:
    go = _go()
    if go is None:
        raise BuildFailed(f"no Go toolchain: 'go' is neither on PATH nor at {_GO_FALLBACK}")
    (cache / "bin").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{peer.name}-", dir=cache))
    try:
        # One job where people share the machine; CI runs nothing else while it builds.
        jobs = str(os.cpu_count() or 1) if os.environ.get("CI") else "1"
        common = ["-p", jobs, "-trimpath"]
        if peer.tags:
            common += ["-tags", ",".join(peer.tags)]
        if peer.ldflags:
            common += ["-ldflags", " ".join(peer.ldflags)]
        if peer.module_dir is None:
            command = [go, "install", *common, f"{peer.package}@{peer.version}"]
            cwd = work
            built = work / Path(peer.package).name
        else:
            built = work / peer.binary
            command = [go, "build", *common, "-o", str(built), peer.package]
            cwd = peer.module_dir
        # Its own process group, so a timeout stops go's compiler children too.
        with subprocess.Popen(
            ["nice", "-n", "19", *command],
            cwd=cwd,
            env=_build_env(peer, work),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise BuildFailed(
                    f"go {' '.join(command[1:])} did not finish within {timeout:.0f}s "
                    "(TRUSTD_PEER_BUILD_TIMEOUT and TRUSTD_PEER_BUILD_BUDGET allow longer)"
                ) from None
        if process.returncode != 0:
            raise BuildFailed(
                f"go {' '.join(command[1:])} failed (exit {process.returncode}):\n"
                + _tail(stderr or stdout)
            )
        if not built.is_file():
            raise BuildFailed(f"go {' '.join(command[1:])} succeeded but produced no {built.name}")
        # Rename within one file system: a test never sees a half-written binary.
        staged = cache / "bin" / f".{peer.binary}.new"
        shutil.move(str(built), staged)
        os.replace(staged, binary_path(peer, cache))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(message: str, limit: int = 200) -> str:
    """The gist of a build failure on one line: go's own error line (with the proxy's answer
    when one follows), else the last line; the end of a long line is the part that says why."""
    progress = ("go: downloading ", "go: finding ", "go: extracting ")
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip() and not line.strip().startswith(progress)
    ]
    if not lines:
        return "no message"
    index = next((i for i, line in enumerate(lines) if line.startswith("go: ")), len(lines) - 1)
    chosen = lines[index]
    if index + 1 < len(lines) and lines[index + 1].startswith("server response:"):
        chosen += "; " + lines[index + 1]
    return chosen if len(chosen) <= limit else "..." + chosen[-(limit - 3) :]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(text)
    os.replace(staged, path)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (several checkouts may share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(peer: Peer, cache: Path, timeout: float) -> str:
    """Build ``peer`` unless it is current; returns the one-line report."""
    if is_built(peer, cache):
        return f"peer {peer.name}: {peer.pinned} present"
    started = time.monotonic()
    try:
        _build(peer, cache, timeout)
    except (BuildFailed, OSError) as error:
        summary = _summary(str(error))
        # The first line is what a skipped test reports; the details follow for a person.
        reason = f"{peer.name} ({peer.pinned}) could not be built here: {summary}\n\n{error}\n"
        _write(reason_path(peer, cache), reason)
        stamp_path(peer, cache).unlink(missing_ok=True)
        return f"peer {peer.name}: NOT built ({summary}); see {reason_path(peer, cache)}"
    _write(stamp_path(peer, cache), peer.stamp())
    reason_path(peer, cache).unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    return f"peer {peer.name}: built {peer.pinned} in {elapsed:.0f}s"


def build_timeout() -> float:
    return float(os.environ.get("TRUSTD_PEER_BUILD_TIMEOUT") or DEFAULT_BUILD_TIMEOUT)


def ensure_locked(peer: Peer) -> str:
    """``ensure`` under the cache lock (for a test that finds its peer missing); the report."""
    cache = cache_dir()
    try:
        with _locked(cache):
            return ensure(peer, cache, build_timeout())
    except OSError as error:
        return f"peer {peer.name}: NOT built (cache {cache} unusable: {error})"


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    try:
        peers = [peer_named(name) for name in names] if names else list(PEERS)
    except KeyError as error:
        print(f"tests.peers.build: {error.args[0]}", file=sys.stderr)
        return 2
    cache = cache_dir()
    budget = float(os.environ.get("TRUSTD_PEER_BUILD_BUDGET") or DEFAULT_BUILD_BUDGET)
    deadline = time.monotonic() + budget
    try:
        with _locked(cache):
            for peer in peers:
                # Each build gets what is left of the run's budget, at most its own timeout.
                timeout = min(build_timeout(), deadline - time.monotonic())
                print(ensure(peer, cache, max(timeout, 1.0)), flush=True)
    except OSError as error:
        print(f"tests.peers.build: cache {cache} unusable: {error}; tests needing peers will skip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
