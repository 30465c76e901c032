"""The whole real stack for one work dir, each part started the first time it is used."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.stack.containerd import Containerd
from tests.stack.images import PushedImage, push_image
from tests.stack.notary_server import NotaryServer
from tests.stack.pki import TestPKI
from tests.stack.ports import StackError
from tests.stack.publisher import NotaryPublisher
from tests.stack.registry import Registry

REQUIRED_PROGRAMS: dict[str, tuple[str, ...]] = {
    "registry": ("docker-registry",),
    "images": ("skopeo",),
    "notary_server": ("notary-server",),
    "publisher": ("notary",),
    "containerd": ("containerd", "ctr"),
}


class MissingProgram(StackError):
    """A Debian program the stack needs is not installed."""


def require_programs(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise MissingProgram(
            f"missing program(s): {', '.join(missing)}; run scripts/install-deps.sh "
            "(installs containerd, runc, docker-registry, notary, skopeo, openssl, busybox-static)"
        )


class Stack:
    """PKI, registry, notary-server, notary publisher and containerd under ``workdir``.

    Nothing starts until first used, so a test that needs only the registry starts only the
    registry; ``Stack.start`` starts everything at once.
    """

    def __init__(
        self, workdir: Path, notary_log_level: str = "warn", registry_access_log: bool = False
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.notary_log_level = notary_log_level
        self.registry_access_log = registry_access_log
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pki: TestPKI | None = None
        self._registry: Registry | None = None
        self._notary_server: NotaryServer | None = None
        self._publisher: NotaryPublisher | None = None
        self._containerd: Containerd | None = None

    @classmethod
    def start(
        cls,
        workdir: Path,
        containerd: bool = True,
        notary_log_level: str = "warn",
        registry_access_log: bool = False,
    ) -> Stack:
        stack = cls(workdir, notary_log_level, registry_access_log)
        try:
            _ = stack.registry, stack.notary_server, stack.publisher
            if containerd:
                _ = stack.containerd
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def pki(self) -> TestPKI:
        if self._pki is None:
            self._pki = TestPKI(self.workdir / "pki")
        return self._pki

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            require_programs(*REQUIRED_PROGRAMS["registry"])
            self._registry = Registry.start(
                self.workdir / "registry", access_log=self.registry_access_log
            )
        return self._registry

    @property
    def notary_server(self) -> NotaryServer:
        if self._notary_server is None:
            require_programs(*REQUIRED_PROGRAMS["notary_server"])
            self._notary_server = NotaryServer.start(
                self.workdir / "notary-server", self.pki, log_level=self.notary_log_level
            )
        return self._notary_server

    @property
    def publisher(self) -> NotaryPublisher:
        if self._publisher is None:
            require_programs(*REQUIRED_PROGRAMS["publisher"])
            self._publisher = NotaryPublisher(
                self.notary_server, self.workdir / "notary-trust", pki=self.pki
            )
        return self._publisher

    @property
    def containerd(self) -> Containerd:
        if self._containerd is None:
            require_programs(*REQUIRED_PROGRAMS["containerd"])
            self._containerd = Containerd.launch(self.workdir / "containerd", [self.registry.host])
        return self._containerd

    def started(self) -> list[str]:
        """Names of the parts running now (for diagnostics)."""
        parts = {
            "registry": self._registry,
            "notary-server": self._notary_server,
            "containerd": self._containerd,
        }
        return [name for name, part in parts.items() if part is not None]

    def push_image(self, repo: str, tag: str, seed: str | int | None = None) -> PushedImage:
        require_programs(*REQUIRED_PROGRAMS["images"])
        return push_image(self.registry, repo, tag, seed=seed, workdir=self.workdir / "images")

    def sign(
        self, image: PushedImage, gun: str | None = None, roles: Sequence[str] | None = None
    ) -> None:
        """Sign ``image.tag`` -> its registry manifest in Notary (GUN = repository) and publish."""
        gun = gun or image.repository
        self.publisher.ensure_initialised(gun)
        self.publisher.add(gun, image.tag, image.manifest, roles=roles)
        self.publisher.publish(gun)

    def stop(self) -> None:
        """Stop every started part; safe to call twice."""
        for part in (self._containerd, self._notary_server, self._registry):
            if part is not None:
                part.stop()
        self._containerd = self._notary_server = self._registry = None
        self._publisher = None
