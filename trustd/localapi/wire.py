"""The wire format between the daemon and the programs that ask it: containerd's image verifier
(``trustd.programs.image_verifier``) and ``trustctl verify`` (``trustd.programs.trustctl``).

One question per connection on a unix socket: the client sends a request frame, the daemon
answers with one frame and closes. A frame is a 4-byte big-endian length and that many bytes of
UTF-8 JSON, one object. The image verifier asks whether containerd may pull what it resolved:

    request  {"name": "registry.example.com/app:1.4", "digest": "sha256:…", "timeout": 7.5}
    answer   {"allowed": true, "message": "trustd: signed by targets/releases as sha256:…"}

trustctl asks for what ``trustctl verify IMAGE [--json]`` prints, as typed (a request with a
``"verify"`` key is this kind):

    request  {"verify": "registry.example.com/app:1.4", "json": false, "timeout": 59.5}
    answer   {"status": 0, "stdout": "registry.example.com/app:1.4@sha256:…\tsize …\n",
              "stderr": ""}

``timeout`` (seconds, optional) is how long the client will wait: the daemon bounds its Notary
requests by it, so that a slow Notary is reported with trustd's reason rather than as a client
that timed out. Lengths are bounded on both sides, so neither end can be made to buffer without
limit. A daemon that predates a kind of request answers it as a bad request, in the verifier's
shape, which the newer client recognises as "not understood".

This module is on the verifier's fast path, which runs once per pull on the node: it imports
the standard library's ``json`` and nothing of the trust engine.
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


MAX_REQUEST_BYTES = 16 * 1024  # a name is at most ~400 characters
MAX_ANSWER_BYTES = 64 * 1024
HEADER_BYTES = 4  # the big-endian length before each payload


class ProtocolError(Exception):
    """A frame that is too long, cut short, or not the JSON object expected."""


class AnswerTimeout(ProtocolError):
    """The other end did not complete its frame before the deadline."""


class QueryError(ProtocolError):
    """A trustctl query (a request with a ``"verify"`` key) that is malformed: answered in the
    query's shape, not the image verifier's."""


class VerifyQuery:
    """trustctl's ``verify IMAGE [--json]`` asked of the daemon: the image as typed."""

    # A plain class: dataclasses would cost the fast path imports of inspect and re.
    __slots__ = ("as_json", "image", "timeout")

    def __init__(self, image: str, as_json: bool, timeout: float | None = None) -> None:
        self.image = image
        self.as_json = as_json
        self.timeout = timeout

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyQuery):
            return NotImplemented
        return (self.image, self.as_json, self.timeout) == (
            other.image,
            other.as_json,
            other.timeout,
        )

    def __repr__(self) -> str:
        return f"VerifyQuery({self.image!r}, as_json={self.as_json}, timeout={self.timeout})"


# --- JSON ----------------------------------------------------------------------------------------


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


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


def json_string(text: str) -> str:
    """``text`` as a JSON string literal (ASCII only)."""
    return json.dumps(text)


# --- frames --------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def request_frame(name: str, digest: str, timeout: float | None = None) -> bytes:
    fields = f'"name":{json_string(name)},"digest":{json_string(digest)}'
    if timeout is not None:
        fields += f',"timeout":{timeout:.3f}'
    return frame(f"{{{fields}}}".encode())


def answer_frame(allowed: bool, message: str) -> bytes:
    allowed_text = "true" if allowed else "false"
    return frame(f'{{"allowed":{allowed_text},"message":{json_string(message)}}}'.encode())


def query_frame(image: str, as_json: bool, timeout: float | None = None) -> bytes:
    json_text = "true" if as_json else "false"
    fields = f'"verify":{json_string(image)},"json":{json_text}'
    if timeout is not None:
        fields += f',"timeout":{timeout:.3f}'
    return frame(f"{{{fields}}}".encode())


def query_answer_frame(status: int, stdout: str, stderr: str) -> bytes:
    fields = f'"status":{int(status)},"stdout":{json_string(stdout)},"stderr":{json_string(stderr)}'
    return frame(f"{{{fields}}}".encode())


def read_frame(connection: Receiver, limit: int, deadline: float) -> bytes:
    """The payload of one frame of at most ``limit`` bytes, read before ``deadline``
    (``time.monotonic()``)."""
    header = _read_exactly(connection, HEADER_BYTES, deadline)
    length = int.from_bytes(header, "big")
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes; at most {limit} are accepted")
    return _read_exactly(connection, length, deadline)


def parse_request(payload: bytes) -> tuple[str, str, float | None]:
    """(name, digest, timeout) of an image verifier's request; ProtocolError when malformed."""
    return _verifier_request(loads_object(payload))


def parse_any_request(payload: bytes) -> tuple[str, str, float | None] | VerifyQuery:
    """An image verifier's request as ``parse_request`` gives it, or a trustctl query;
    QueryError for a malformed query, ProtocolError for anything else malformed."""
    request = loads_object(payload)
    if "verify" not in request:
        return _verifier_request(request)
    image, as_json = request["verify"], request.get("json", False)
    if not isinstance(image, str):
        raise QueryError('"verify" must be the image as a string')
    if not isinstance(as_json, bool):
        raise QueryError('"json" must be true or false')
    return VerifyQuery(image, as_json, _timeout(request, QueryError))


def _verifier_request(request: dict[str, object]) -> tuple[str, str, float | None]:
    name, digest = request.get("name"), request.get("digest")
    if not isinstance(name, str) or not isinstance(digest, str):
        raise ProtocolError('a request needs "name" and "digest" strings')
    return name, digest, _timeout(request, ProtocolError)


def _timeout(request: dict[str, object], error: type[ProtocolError]) -> float | None:
    timeout = request.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise error('"timeout" must be a number of seconds above 0')
    return float(timeout)


def parse_answer(payload: bytes) -> tuple[bool, str]:
    """(allowed, message) of an answer; ProtocolError when malformed."""
    answer = loads_object(payload)
    allowed, message = answer.get("allowed"), answer.get("message")
    if not isinstance(allowed, bool) or not isinstance(message, str):
        raise ProtocolError('an answer needs "allowed" (true or false) and a "message" string')
    return allowed, message


def parse_query_answer(payload: bytes) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the answer to a trustctl query; ProtocolError when
    malformed, or when it is an image verifier's answer (a daemon that predates queries)."""
    answer = loads_object(payload)
    status, stdout, stderr = answer.get("status"), answer.get("stdout"), answer.get("stderr")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255:
        message = answer.get("message")
        if "allowed" in answer and isinstance(message, str):
            raise ProtocolError(f"not a query answer: {message}")
        raise ProtocolError('a query answer needs "status", an exit status from 0 to 255')
    if not isinstance(stdout, str) or not isinstance(stderr, str):
        raise ProtocolError('a query answer needs "stdout" and "stderr" strings')
    return status, stdout, stderr


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
