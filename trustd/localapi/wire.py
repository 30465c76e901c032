"""The wire format between the daemon and the programs that ask it: containerd's image verifier
(``trustd.programs.image_verifier``) and ``trustctl verify`` (``trustd.programs.trustctl``).

One question per connection on a unix socket: the client sends a request frame, the daemon
answers with one frame and closes. A frame is a 4-byte big-endian length and that many bytes of
UTF-8 JSON, one object. Every frame carries the protocol ``version`` (1) and its ``kind``; every
request names the ``config`` file (absolute path) it is asked under, and the daemon answers only
questions about the config file it serves.

``verify-pull``: may containerd pull what it resolved (the image verifier)::

    request  {"version": 1, "kind": "verify-pull", "config": "/etc/trustd/trustd.toml",
              "name": "registry.example.com/app:1.4", "digest": "sha256:…", "timeout": 7.5}
    answer   {"version": 1, "kind": "verify-pull", "allowed": true,
              "message": "trustd: signed by targets/releases as sha256:…"}

``trustctl-verify``: what ``trustctl verify IMAGE [--json]`` prints, the image as typed::

    request  {"version": 1, "kind": "trustctl-verify", "config": "/etc/trustd/trustd.toml",
              "image": "registry.example.com/app:1.4", "json": false, "timeout": 59.5}
    answer   {"version": 1, "kind": "trustctl-verify", "status": 0,
              "stdout": "registry.example.com/app:1.4@sha256:…\\tsize …\\n", "stderr": ""}

A request the daemon does not take (malformed, another version or kind, another config file) is
answered with an error, which the client reports and then judges in its own process::

    answer   {"version": 1, "kind": "error", "error": "unsupported protocol version 2; …"}

``timeout`` (seconds, optional) is how long the client will wait: the daemon bounds its Notary
requests by it, so that a slow Notary is reported with trustd's reason rather than as a client
that timed out. Lengths are bounded on both sides, so neither end can be made to buffer without
limit.

This module is on the fast paths of both programs, which run as short processes: it imports the
standard library's ``json`` and nothing of the trust engine.
"""

from __future__ import annotations

import json
import time

# typing would cost the fast path an import; type checkers treat this name as always true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Receiver(Protocol):
        """What ``read_frame`` needs of a socket."""

        def settimeout(self, seconds: float | None, /) -> None: ...

        def recv(self, size: int, /) -> bytes: ...


VERSION = 1
VERIFY_PULL = "verify-pull"
TRUSTCTL_VERIFY = "trustctl-verify"
ERROR = "error"

MAX_REQUEST_BYTES = 16 * 1024  # a name is at most ~400 characters, a config path at most 4096
MAX_ANSWER_BYTES = 64 * 1024
HEADER_BYTES = 4  # the big-endian length before each payload
MAX_TIMEOUT = 3600.0  # seconds; no client waits longer
_SHOWN_CHARS = 100  # of a value echoed in an error


class ProtocolError(Exception):
    """A frame that is too long, cut short, or not the JSON object expected."""


class AnswerTimeout(ProtocolError):
    """The other end did not complete its frame before the deadline."""


class Refused(ProtocolError):
    """The daemon answered with an error: it did not take the request; the message is its."""


# --- requests ------------------------------------------------------------------------------------

# Plain classes: dataclasses would cost the fast path an import of inspect.


class VerifyPull:
    """The image verifier's question: may containerd pull ``name`` resolved to ``digest``?"""

    __slots__ = ("config", "digest", "name", "timeout")

    def __init__(self, config: str, name: str, digest: str, timeout: float | None = None) -> None:
        self.config = config
        self.name = name
        self.digest = digest
        self.timeout = timeout

    def _fields(self) -> tuple[object, ...]:
        return (self.config, self.name, self.digest, self.timeout)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyPull):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"VerifyPull{self._fields()!r}"


class TrustctlVerify:
    """trustctl's ``verify IMAGE [--json]`` asked of the daemon: the image as typed."""

    __slots__ = ("as_json", "config", "image", "timeout")

    def __init__(
        self, config: str, image: str, as_json: bool, timeout: float | None = None
    ) -> None:
        self.config = config
        self.image = image
        self.as_json = as_json
        self.timeout = timeout

    def _fields(self) -> tuple[object, ...]:
        return (self.config, self.image, self.as_json, self.timeout)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustctlVerify):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"TrustctlVerify{self._fields()!r}"


Request = VerifyPull | TrustctlVerify


def verify_pull_frame(config: str, name: str, digest: str, timeout: float | None = None) -> bytes:
    fields: dict[str, object] = {"config": config, "name": name, "digest": digest}
    if timeout is not None:
        fields["timeout"] = round(timeout, 3)
    return _frame(VERIFY_PULL, fields)


def trustctl_verify_frame(
    config: str, image: str, as_json: bool, timeout: float | None = None
) -> bytes:
    fields: dict[str, object] = {"config": config, "image": image, "json": as_json}
    if timeout is not None:
        fields["timeout"] = round(timeout, 3)
    return _frame(TRUSTCTL_VERIFY, fields)


def parse_request(payload: bytes) -> Request:
    """The request in ``payload``; ProtocolError, in words for the client, when the daemon cannot
    take it."""
    request = loads_object(payload)
    _check_version(request, "a request", "this daemon")
    kind = request.get("kind")
    config = request.get("config")
    if kind not in (VERIFY_PULL, TRUSTCTL_VERIFY):
        if kind is None:
            raise ProtocolError('a request needs a "kind"')
        raise ProtocolError(
            f"unknown request kind {_shown(kind)}; this daemon answers "
            f'"{VERIFY_PULL}" and "{TRUSTCTL_VERIFY}"'
        )
    if not isinstance(config, str) or not config.startswith("/"):
        raise ProtocolError('a request needs "config", the absolute path of a config file')
    timeout = _timeout(request)
    if kind == VERIFY_PULL:
        name, digest = request.get("name"), request.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise ProtocolError(f'a "{VERIFY_PULL}" request needs "name" and "digest" strings')
        return VerifyPull(config, name, digest, timeout)
    image, as_json = request.get("image"), request.get("json", False)
    if not isinstance(image, str):
        raise ProtocolError(f'a "{TRUSTCTL_VERIFY}" request needs "image" as a string')
    if not isinstance(as_json, bool):
        raise ProtocolError('"json" must be true or false')
    return TrustctlVerify(config, image, as_json, timeout)


def _timeout(request: dict[str, object]) -> float | None:
    timeout = request.get("timeout")
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ProtocolError(f'"timeout" must be seconds above 0, at most {MAX_TIMEOUT:g}')
    return float(timeout)


# --- answers -------------------------------------------------------------------------------------


def verify_pull_answer_frame(allowed: bool, message: str) -> bytes:
    return _frame(VERIFY_PULL, {"allowed": allowed, "message": message})


def trustctl_verify_answer_frame(status: int, stdout: str, stderr: str) -> bytes:
    return _frame(TRUSTCTL_VERIFY, {"status": int(status), "stdout": stdout, "stderr": stderr})


def error_frame(error: str) -> bytes:
    return _frame(ERROR, {"error": error})


def parse_verify_pull_answer(payload: bytes) -> tuple[bool, str]:
    """(allowed, message); Refused for an error answer, ProtocolError when malformed."""
    answer = _answer(payload, VERIFY_PULL)
    allowed, message = answer.get("allowed"), answer.get("message")
    if not isinstance(allowed, bool) or not isinstance(message, str):
        raise ProtocolError('an answer needs "allowed" (true or false) and a "message" string')
    return allowed, message


def parse_trustctl_verify_answer(payload: bytes) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); Refused for an error answer, ProtocolError when
    malformed."""
    answer = _answer(payload, TRUSTCTL_VERIFY)
    status, stdout, stderr = answer.get("status"), answer.get("stdout"), answer.get("stderr")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255:
        raise ProtocolError('an answer needs "status", an exit status from 0 to 255')
    if not isinstance(stdout, str) or not isinstance(stderr, str):
        raise ProtocolError('an answer needs "stdout" and "stderr" strings')
    return status, stdout, stderr


def _answer(payload: bytes, kind: str) -> dict[str, object]:
    answer = loads_object(payload)
    _check_version(answer, "an answer", "this program")
    answered = answer.get("kind")
    if answered == ERROR:
        error = answer.get("error")
        if not isinstance(error, str):
            raise ProtocolError('an error answer needs an "error" string')
        raise Refused(error)
    if answered != kind:
        raise ProtocolError(f'an answer of kind {_shown(answered)} to a "{kind}" request')
    return answer


def _check_version(document: dict[str, object], what: str, speaker: str) -> None:
    version = document.get("version")
    if version is None:
        raise ProtocolError(f'{what} needs "version"; {speaker} speaks version {VERSION}')
    if isinstance(version, bool) or version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {_shown(version)}; {speaker} speaks version {VERSION}"
        )


# --- frames --------------------------------------------------------------------------------------


def _frame(kind: str, fields: dict[str, object]) -> bytes:
    document = {"version": VERSION, "kind": kind, **fields}
    # ASCII (json's default) escapes U+2028 and friends too: no reader splits a frame.
    return frame(json.dumps(document, separators=(",", ":")).encode())


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def read_frame(connection: Receiver, limit: int, deadline: float) -> bytes:
    """The payload of one frame of at most ``limit`` bytes, read before ``deadline``
    (``time.monotonic()``)."""
    header = _read_exactly(connection, HEADER_BYTES, deadline)
    length = int.from_bytes(header, "big")
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes; at most {limit} are accepted")
    return _read_exactly(connection, length, deadline)


def _read_exactly(connection: Receiver, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AnswerTimeout("no complete frame before the deadline")
        connection.settimeout(left)
        try:
            chunk = connection.recv(min(remaining, 65536))
        except TimeoutError:
            raise AnswerTimeout("no complete frame before the deadline") from None
        if not chunk:
            raise ProtocolError(
                f"connection closed {size - remaining} bytes into a {size}-byte read"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# --- JSON ----------------------------------------------------------------------------------------


def loads_object(data: bytes) -> dict[str, object]:
    """One JSON object from ``data``; ProtocolError for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"not UTF-8: {error.reason}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"not a JSON object: {type(value).__name__}")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _shown(value: object) -> str:
    """``value`` as it may be echoed in an error: JSON, cut short; the type of a container."""
    plain = value is None or isinstance(value, str | int | float)
    text = json.dumps(value) if plain else type(value).__name__
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
