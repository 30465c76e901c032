"""Registry requests counted on the registry's side: docker-registry's access log.

The bench's stack runs docker-registry with its access log on (one line per request, combined log
format, with the user agent). ``RegistryRequests`` reads the lines written between two marks and
says, per repository, what trustd asked (user agent ``trustd``, as trustd/registry/transport.py
sends it) and what containerd asked (``containerd/<version>``), so the figures do not depend on
trustd reporting on itself. Other clients (skopeo pushing, notation and cosign signing) are
left out.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.stack import PushedImage
from trustd.registry.transport import USER_AGENT as TRUSTD_USER_AGENT

# docker-registry writes its line after the response; give it this long to reach the file.
_LOG_SETTLE_SECONDS = 0.2
# host ident user [time] "METHOD URI PROTOCOL" status bytes "referer" "user agent"
_LINE = re.compile(
    rb'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) \S+ '
    rb'"[^"]*" "(?P<agent>[^"]*)"$'
)
_ROUTE = re.compile(r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/?]+)")
_REFERRERS_TAG = re.compile(r"^sha256-[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha(256|512):[0-9a-f]+$")

TRUSTD = "trustd"
CONTAINERD = "containerd"


@dataclass(frozen=True)
class Request:
    """One line of the access log: who asked what of which repository, and the status."""

    client: str  # TRUSTD, CONTAINERD or the user agent as logged
    repository: str  # "bench/notation" (without the registry host); "" for /v2/
    what: str  # "HEAD tag", "manifest", "referrers API 404", ... (see ``_what``)
    status: int


def parse_line(line: bytes) -> Request | None:
    """The request a combined-log-format line records; None for any other line."""
    match = _LINE.match(line.strip())
    if match is None:
        return None
    agent = match["agent"].decode(errors="replace")
    if agent == TRUSTD_USER_AGENT:
        client = TRUSTD
    elif agent.startswith("containerd/"):
        client = CONTAINERD
    else:
        client = agent
    method = match["method"].decode()
    status = int(match["status"])
    route = _ROUTE.match(match["uri"].decode(errors="replace"))
    if route is None:
        return Request(client, "", f"{method} {match['uri'].decode(errors='replace')}", status)
    return Request(
        client, route["repository"], _what(method, route["kind"], route["ref"], status), status
    )


def _what(method: str, kind: str, reference: str, status: int) -> str:
    """A short name for the request: what a reader of the table needs to tell them apart."""
    if kind == "referrers":
        name = "referrers API"
    elif kind == "blobs":
        name = "blob"
    elif _DIGEST.match(reference):
        name = "manifest"
    elif _REFERRERS_TAG.match(reference):
        name = "referrers tag"
    elif reference.endswith(".sig"):
        name = ".sig tag"
    else:
        name = "tag"
    if method != "GET":
        name = f"{method} {name}"
    return name if status < 400 else f"{name} {status}"


class RegistryRequests:
    """Requests in docker-registry's access log, read between two marks."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def mark(self) -> int:
        """A position in the log; ``since(mark)`` reads what was logged after it."""
        time.sleep(_LOG_SETTLE_SECONDS)
        return self.log_path.stat().st_size

    def since(self, mark: int) -> list[Request]:
        time.sleep(_LOG_SETTLE_SECONDS)
        with self.log_path.open("rb") as log:
            log.seek(mark)
            data = log.read()
        return [request for line in data.splitlines() if (request := parse_line(line))]


def count(requests: Sequence[Request], client: str, repositories: Collection[str]) -> Counter[str]:
    """What ``client`` asked of ``repositories`` (host-less paths), by kind of request."""
    return Counter(r.what for r in requests if r.client == client and r.repository in repositories)


def _repository(image: PushedImage) -> str:
    """The repository as the access log shows it: ``bench/notation``, without the host."""
    return image.repository.split("/", 1)[1]


def _per(counts: Counter[str], events: int) -> float:
    return sum(counts.values()) / max(events, 1)


@dataclass(frozen=True)
class RegistryUse:
    """Registry requests of one row: trustd's own and containerd's on trustd's path, and
    containerd's on the direct path."""

    pulls: int  # on trustd's path
    direct_pulls: int
    verification: Counter[str]  # what trustd asked
    pull: Counter[str]  # what containerd asked, on trustd's path
    direct: Counter[str]  # what containerd asked, on the direct path

    @classmethod
    def of(
        cls,
        requests: Sequence[Request],
        trustd_images: Sequence[PushedImage],
        direct_images: Sequence[PushedImage],
    ) -> RegistryUse:
        """Attributed by repository: the two paths' images live in repositories of their own."""
        mine = {_repository(image) for image in trustd_images}
        theirs = {_repository(image) for image in direct_images}
        if mine & theirs:
            raise ValueError(f"repositories on both paths: {sorted(mine & theirs)}")
        return cls(
            len(trustd_images),
            len(direct_images),
            count(requests, TRUSTD, mine),
            count(requests, CONTAINERD, mine),
            count(requests, CONTAINERD, theirs),
        )

    @property
    def added(self) -> float:
        """Requests per pull on trustd's path beyond a direct pull's: trustd's own, and any more
        that containerd made for the pinned pull."""
        return (
            _per(self.verification, self.pulls)
            + _per(self.pull, self.pulls)
            - _per(self.direct, self.direct_pulls)
        )

    def describe(self) -> str:
        """``trustd 4.00/pull: 100 (25 HEAD tag, ...); containerd 4.00/pull, direct 4.00``:
        trustd's requests in the order of their first appearance, which for sequential requests
        is the order of one lookup."""
        listed = ", ".join(f"{number} {what}" for what, number in self.verification.items())
        total = sum(self.verification.values())
        return (
            f"trustd {_per(self.verification, self.pulls):.2f}/pull"
            + (f": {total} ({listed})" if total else "")
            + f"; containerd {_per(self.pull, self.pulls):.2f}/pull, direct "
            f"{_per(self.direct, self.direct_pulls):.2f}"
        )
