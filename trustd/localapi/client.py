"""Finding the running daemon's verifier socket and asking it one question, stdlib only.

Shared by the programs that ask the daemon instead of building a trust engine of their own:
containerd's image verifier (``trustd.programs.image_verifier``, once per pull) and ``trustctl
verify`` (``trustd.programs.trustctl``). Both run as short processes whose start-up is the cost, so
this module, like ``trustd.localapi.wire``, imports only what the interpreter has loaded at start-up
and C modules: the config is read for its one key without a TOML parser when it can be, and the
socket is ``_socket``, not ``socket``.
"""

from __future__ import annotations

import os
import time

from trustd.config.paths import DEFAULT_VERIFIER_SOCKET
from trustd.localapi.wire import MAX_ANSWER_BYTES, AnswerTimeout, ProtocolError, read_frame

# typing costs the fast path an import of re; type checkers treat this name as always true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    Answer = TypeVar("Answer")


# --- where the daemon listens --------------------------------------------------------------------


def verifier_socket(config: str) -> str | None:
    """``server.verifier_socket`` of the config; None when it is "" (not served). The default
    when the file is unreadable or invalid: the daemon may run with an earlier version of it."""
    try:
        with open(config, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return DEFAULT_VERIFIER_SOCKET
    value = plainly_set_verifier_socket(text)
    if value is UNSURE:
        # Anything but the plain forms: the TOML parser decides (about 15 ms on a slow node,
        # most of it compiling the regular expressions tomllib and re build on import).
        import tomllib

        try:
            server = tomllib.loads(text).get("server", {})
        except tomllib.TOMLDecodeError:
            return DEFAULT_VERIFIER_SOCKET
        value = server.get("verifier_socket") if isinstance(server, dict) else None
    if not isinstance(value, str):
        return DEFAULT_VERIFIER_SOCKET
    if not value:
        return None
    # Relative paths are relative to the config file, as in trustd.config.model.
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config)), value))


UNSURE = object()


def plainly_set_verifier_socket(text: str) -> str | object | None:
    """The key as almost every config has it, read without a TOML parser: absent (None), or one
    ``verifier_socket = "PATH"`` (or ``'PATH'``) line in ``[server]``, with at most a comment
    after it. Any other form - dotted or quoted keys, escapes, multi-line strings, the key in
    another table or twice - is ``UNSURE``, for the TOML parser."""
    if "\\u" in text or "\\U" in text or '"""' in text or "'''" in text:
        return UNSURE  # could spell the key, or hide lines inside a string
    if "verifier_socket" not in text:
        return None
    table = ""
    found: str | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("#"):
            continue
        if line.startswith("["):
            table = "".join(line.split("#", 1)[0].split())
            continue
        if "verifier_socket" not in line:
            continue
        if table != "[server]" or found is not None or not line.startswith("verifier_socket"):
            return UNSURE
        rest = line.removeprefix("verifier_socket").lstrip()
        if not rest.startswith("="):
            return UNSURE
        rest = rest[1:].lstrip()
        quote = rest[:1]
        closing = rest.find(quote, 1) if quote in ('"', "'") else -1
        if closing < 0:
            return UNSURE
        value, after = rest[1:closing], rest[closing + 1 :].strip()
        if "\\" in value or (after and not after.startswith("#")):
            return UNSURE
        found = value
    return found


# --- asking it -----------------------------------------------------------------------------------


class DaemonAbsent(Exception):
    """Nothing answers on the socket: the daemon is stopped (or not installed), or this user may
    not connect to it (the socket is root's, mode 0600)."""


class DaemonFailed(Exception):
    """The daemon took the question but gave no usable answer."""


def ask_daemon(
    path: str, request: bytes, deadline: float, parse: Callable[[bytes], Answer]
) -> Answer:
    """``parse`` of the daemon's answer to the ``request`` frame, before ``deadline``
    (``time.monotonic()``); DaemonAbsent or DaemonFailed (an answer ``parse`` refuses with
    ProtocolError included) when there is none."""
    # _socket, not socket: the module's enums cost the fast path more than the daemon's answer.
    import _socket

    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            connection.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as error:
            raise DaemonAbsent(error.strerror or str(error)) from None
        except TimeoutError:
            raise DaemonFailed("accepted no connection before the deadline") from None
        except OSError as error:
            raise DaemonAbsent(error.strerror or str(error)) from None
        try:
            connection.sendall(request)
            return parse(read_frame(connection, MAX_ANSWER_BYTES, deadline))
        except (TimeoutError, AnswerTimeout):
            raise DaemonFailed("did not answer before the deadline") from None
        except (ProtocolError, OSError) as error:
            raise DaemonFailed(f"gave no usable answer ({error})") from None
    finally:
        connection.close()
