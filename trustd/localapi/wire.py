"""The wire format between the daemon and the programs that ask it: containerd's image verifier
(``trustd.programs.image_verifier``) and ``trustctl verify`` (``trustd.programs.trustctl``).

One question per connection on a unix socket: the client sends a request frame, the daemon
answers with one frame and closes. A frame is a 4-byte big-endian length and that many bytes of
payload. The payload is the protocol version (one byte, 2), then the frame's ``kind``, then
key/value fields; kind, keys and values are each a 4-byte big-endian length and that many bytes
of UTF-8 (docs/architecture.md, "The local socket's frames")::

    payload = version:1 byte | item(kind) | item(key) item(value) | item(key) item(value) ...
    item    = size:4 bytes big-endian | size bytes of UTF-8

Every value is text: booleans are ``true`` or ``false``, numbers decimal digits with at most one
``.``. A key appears at most once; keys a reader does not know are ignored. Every request names
the ``config`` file (absolute path) it is asked under, and the daemon answers only questions
about the config file it serves.

``verify-pull``: may containerd pull what it resolved (the image verifier)::

    request  verify-pull  config=/etc/trustd/trustd.toml  name=registry.example.com/app:1.4
             digest=sha256:…  timeout=7.500  descriptor={"mediaType":…,"digest":"sha256:…",…}
    answer   verify-pull  allowed=true  message=trustd: signed by targets/releases as sha256:…

``descriptor`` (optional) is the OCI descriptor containerd gave the verifier on stdin, as it
came; the daemon takes the request only if it is a JSON object whose ``digest`` is ``digest``.

``trustctl-verify``: what ``trustctl verify IMAGE [--json]`` prints, the image as typed::

    request  trustctl-verify  config=/etc/trustd/trustd.toml  image=registry.example.com/app:1.4
             json=false  timeout=59.500
    answer   trustctl-verify  status=0  stdout=registry.example.com/app:1.4@sha256:…  stderr=

A request the daemon does not take (malformed, another version or kind, another config file) is
answered with an error, which the client reports and then judges in its own process::

    answer   error  error=unsupported protocol version 3; this daemon speaks version 2

Version 1 frames were one JSON object; their payload starts with ``{``, and either side names
them as such. ``timeout`` (seconds, optional) is how long the client will wait: the daemon bounds
its Notary requests by it, so that a slow Notary is reported with trustd's reason rather than as
a client that timed out. The daemon caps it (``trustd.localapi.server``: 30 s for a
trustctl-verify, ``server.pull_timeout`` for a verify-pull). Lengths are bounded on both sides,
so neither end can be made to buffer without limit.

The daemon also answers with an error a client it does not serve (``SO_PEERCRED``: neither root,
nor its own user, nor in ``server.verifier_group``), possibly before reading the request, and a
request it has no room for (``busy: …``); the client judges in its own process either way.

This module is on the fast paths of both programs, which run as short processes: it imports
nothing beyond what the interpreter has loaded at start-up. Only the daemon (and the verifier
when it judges in its own process) reads JSON here, the descriptor's; ``json`` is imported then.
"""

from __future__ import annotations

import time

# typing would cost the fast path an import; type checkers treat this name as always true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Receiver(Protocol):
        """What ``read_frame`` needs of a socket."""

        def settimeout(self, seconds: float | None, /) -> None: ...

        def recv(self, size: int, /) -> bytes: ...


VERSION = 2
VERIFY_PULL = "verify-pull"
TRUSTCTL_VERIFY = "trustctl-verify"
ERROR = "error"

# A name is at most ~400 characters, a config path at most 4096, a descriptor a few hundred bytes
# (one that does not fit is checked by the verifier itself and not sent).
MAX_REQUEST_BYTES = 16 * 1024
MAX_ANSWER_BYTES = 64 * 1024
HEADER_BYTES = 4  # the big-endian length before each payload, and before each item in it
MAX_TIMEOUT = 3600.0  # seconds; no client waits longer
_SHOWN_CHARS = 100  # of a value echoed in an error
_JSON_START = ord("{")  # the first byte of a version 1 payload


class ProtocolError(Exception):
    """A frame that is too long, cut short, or not the payload expected."""


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


def verify_pull_frame(
    config: str,
    name: str,
    digest: str,
    timeout: float | None = None,
    descriptor: str | None = None,
) -> bytes:
    """The verifier's request; ``descriptor`` is the OCI descriptor (JSON) from its stdin."""
    fields = {"config": config, "name": name, "digest": digest}
    if timeout is not None:
        fields["timeout"] = _seconds(timeout)
    if descriptor is not None:
        fields["descriptor"] = descriptor
    return frame(encode(VERIFY_PULL, fields))


def trustctl_verify_frame(
    config: str, image: str, as_json: bool, timeout: float | None = None
) -> bytes:
    fields = {"config": config, "image": image, "json": _boolean(as_json)}
    if timeout is not None:
        fields["timeout"] = _seconds(timeout)
    return frame(encode(TRUSTCTL_VERIFY, fields))


def parse_request(payload: bytes) -> Request:
    """The request in ``payload``; ProtocolError, in words for the client, when the daemon cannot
    take it."""
    kind, request = decode(payload, "this daemon")
    if kind not in (VERIFY_PULL, TRUSTCTL_VERIFY):
        raise ProtocolError(
            f"unknown request kind {_shown(kind)}; this daemon answers "
            f'"{VERIFY_PULL}" and "{TRUSTCTL_VERIFY}"'
        )
    config = request.get("config")
    if config is None or not config.startswith("/"):
        raise ProtocolError('a request needs "config", the absolute path of a config file')
    timeout = _timeout(request.get("timeout"))
    if kind == VERIFY_PULL:
        name, digest = request.get("name"), request.get("digest")
        if name is None or digest is None:
            raise ProtocolError(f'a "{VERIFY_PULL}" request needs "name" and "digest"')
        descriptor = request.get("descriptor")
        if descriptor is not None:
            _check_descriptor(descriptor, digest)
        return VerifyPull(config, name, digest, timeout)
    image = request.get("image")
    if image is None:
        raise ProtocolError(f'a "{TRUSTCTL_VERIFY}" request needs "image"')
    return TrustctlVerify(config, image, _parse_boolean(request.get("json", "false")), timeout)


def _seconds(timeout: float) -> str:
    # Fixed-point: never the exponent form repr() gives small floats.
    return f"{timeout:.3f}"


def _timeout(text: str | None) -> float | None:
    if text is None:
        return None
    seconds = _parse_decimal(text)
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT:
        raise ProtocolError(f'"timeout" must be seconds above 0, at most {MAX_TIMEOUT:g}')
    return seconds


def _check_descriptor(descriptor: str, digest: str) -> None:
    try:
        described = described_digest(descriptor.encode())
    except ProtocolError as error:
        raise ProtocolError(f'"descriptor" is not an OCI descriptor: {error}') from None
    if described != digest:
        raise ProtocolError(
            f'"descriptor" is for {_shown(described)}, but "digest" is {_shown(digest)}'
        )


# --- answers -------------------------------------------------------------------------------------


def verify_pull_answer_frame(allowed: bool, message: str) -> bytes:
    return frame(encode(VERIFY_PULL, {"allowed": _boolean(allowed), "message": message}))


def trustctl_verify_answer_frame(status: int, stdout: str, stderr: str) -> bytes:
    fields = {"status": str(int(status)), "stdout": stdout, "stderr": stderr}
    return frame(encode(TRUSTCTL_VERIFY, fields))


def error_frame(error: str) -> bytes:
    return frame(encode(ERROR, {"error": error}))


def parse_verify_pull_answer(payload: bytes) -> tuple[bool, str]:
    """(allowed, message); Refused for an error answer, ProtocolError when malformed."""
    answer = _answer(payload, VERIFY_PULL)
    allowed, message = answer.get("allowed"), answer.get("message")
    if allowed not in ("true", "false") or message is None:
        raise ProtocolError('an answer needs "allowed" (true or false) and "message"')
    return allowed == "true", message


def parse_trustctl_verify_answer(payload: bytes) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); Refused for an error answer, ProtocolError when
    malformed."""
    answer = _answer(payload, TRUSTCTL_VERIFY)
    status, stdout, stderr = answer.get("status"), answer.get("stdout"), answer.get("stderr")
    if status is None or not (0 < len(status) <= 3 and _digits(status)) or int(status) > 255:
        raise ProtocolError('an answer needs "status", an exit status from 0 to 255')
    if stdout is None or stderr is None:
        raise ProtocolError('an answer needs "stdout" and "stderr"')
    return int(status), stdout, stderr


def _answer(payload: bytes, kind: str) -> dict[str, str]:
    answered, answer = decode(payload, "this program")
    if answered == ERROR:
        error = answer.get("error")
        if error is None:
            raise ProtocolError('an error answer needs "error"')
        raise Refused(error)
    if answered != kind:
        raise ProtocolError(f'an answer of kind {_shown(answered)} to a "{kind}" request')
    return answer


# --- values --------------------------------------------------------------------------------------


def _boolean(value: bool) -> str:
    return "true" if value else "false"


def _parse_boolean(text: str) -> bool:
    if text not in ("true", "false"):
        raise ProtocolError('"json" must be true or false')
    return text == "true"


def _digits(text: str) -> bool:
    # isdigit() alone admits other scripts' digits, which int() and float() would read.
    return text.isascii() and text.isdigit()


def _parse_decimal(text: str) -> float | None:
    """``text`` as decimal digits with at most one "."; None when it is not that."""
    whole, _, fraction = text.partition(".")
    if not (whole or fraction) or not all(_digits(part) for part in (whole, fraction) if part):
        return None
    return float(text)


def _shown(value: str) -> str:
    """``value`` as it may be echoed in an error: quoted and escaped, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


# --- payloads ------------------------------------------------------------------------------------


def encode(kind: str, fields: dict[str, str]) -> bytes:
    """The payload of a frame of ``kind`` with ``fields``.

    Text that is not Unicode (a lone surrogate, as Python decodes bytes of an argument that are
    not UTF-8) is written as it is held, which is not UTF-8: the reader refuses the frame, and the
    question is answered without the daemon."""
    items = [VERSION.to_bytes(1, "big"), _item(kind)]
    for key, value in fields.items():
        items += (_item(key), _item(value))
    return b"".join(items)


def _item(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(HEADER_BYTES, "big") + data


def decode(payload: bytes, speaker: str) -> tuple[str, dict[str, str]]:
    """(kind, fields) of ``payload``; ProtocolError, naming ``speaker`` (the reader) where the
    version is not its, for anything else."""
    if not payload:
        raise ProtocolError("an empty payload")
    version = payload[0]
    if version != VERSION:
        shown = "1 (JSON)" if version == _JSON_START else str(version)
        raise ProtocolError(
            f"unsupported protocol version {shown}; {speaker} speaks version {VERSION}"
        )
    items: list[str] = []
    position, end = 1, len(payload)
    while position < end:
        if end - position < HEADER_BYTES:
            raise ProtocolError(f"item {len(items) + 1} cut short: {end - position} bytes left")
        size = int.from_bytes(payload[position : position + HEADER_BYTES], "big")
        position += HEADER_BYTES
        if size > end - position:
            raise ProtocolError(
                f"item {len(items) + 1} of {size} bytes, with {end - position} bytes left"
            )
        try:
            items.append(payload[position : position + size].decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ProtocolError(f"item {len(items) + 1} is not UTF-8: {error.reason}") from None
        position += size
    if not items:
        raise ProtocolError('a payload needs a "kind"')
    if len(items) % 2 == 0:
        raise ProtocolError(f"field {_shown(items[-1])} has no value")
    fields: dict[str, str] = {}
    for index in range(1, len(items), 2):
        key = items[index]
        if key in fields:
            raise ProtocolError(f"field {_shown(key)} twice")
        fields[key] = items[index + 1]
    return items[0], fields


# --- frames --------------------------------------------------------------------------------------


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


# --- JSON: the descriptor containerd gives the verifier ------------------------------------------


def described_digest(data: bytes) -> str:
    """The ``digest`` of the OCI descriptor (a JSON object) in ``data``; ProtocolError when it is
    not one."""
    described = loads_object(data).get("digest")
    if not isinstance(described, str):
        raise ProtocolError('it has no "digest" string')
    return described


def loads_object(data: bytes) -> dict[str, object]:
    """One JSON object from ``data``; ProtocolError for anything else."""
    import json  # not on the fast paths: only the descriptor is JSON

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
