"""Finding the running daemon's verifier socket and asking it one question, stdlib only.

Shared by the programs that ask the daemon instead of building a trust engine of their own:
containerd's image verifier (``trustd.programs.image_verifier``, once per pull) and ``trustctl
verify`` (``trustd.programs.trustctl``). Both run as short processes whose start-up is the cost, so
this module, like ``trustd.localapi.wire``, imports the standard library only, and the config is
read for its one key with ``tomllib``, not ``trustd.config.model``.
"""

from __future__ import annotations

import os
import socket
import time

from trustd.localapi.wire import MAX_ANSWER_BYTES, AnswerTimeout, ProtocolError, read_frame

# typing would cost the fast path an import; type checkers treat this name as always true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    Answer = TypeVar("Answer")

# trustd.config.model's defaults, repeated so that the fast path never imports it (a test compares).
DEFAULT_CONFIG = "/etc/trustd/trustd.toml"  # trustd.config.model.DEFAULT_CONFIG_PATH
DEFAULT_VERIFIER_SOCKET = "/run/trustd/verify.sock"  # trustd.config.model.DEFAULT_VERIFIER_SOCKET


# --- where the daemon listens --------------------------------------------------------------------


def verifier_socket(config: str) -> str | None:
    """``server.verifier_socket`` of the config; None when it is "" (not served). The default
    when the file is unreadable or invalid: the daemon may run with an earlier version of it."""
    try:
        with open(config, "rb") as handle:
            data = handle.read()
    except OSError:
        return DEFAULT_VERIFIER_SOCKET
    import tomllib

    try:
        server = tomllib.loads(data.decode("utf-8")).get("server", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return DEFAULT_VERIFIER_SOCKET
    value = server.get("verifier_socket") if isinstance(server, dict) else None
    if not isinstance(value, str):
        return DEFAULT_VERIFIER_SOCKET
    if not value:
        return None
    # Relative paths are relative to the config file, as in trustd.config.model.
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config)), value))


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
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
