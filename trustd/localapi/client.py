"""Finding the running daemon's verifier socket and asking it one question, stdlib only.

Shared by the programs that ask the daemon instead of building a trust engine of their own:
containerd's image verifier (``trustd.programs.image_verifier``, once per pull) and ``trustctl
verify`` (``trustd.programs.trustctl``). Both run as short processes whose start-up is the cost, so
this module, like ``trustd.localapi.wire``, imports the standard library only, and the config is
read, when it must be (see ``ask``), for its one key with ``tomllib``, not ``trustd.config.model``.
"""

from __future__ import annotations

import os
import socket
import time

from trustd.config.paths import DEFAULT_CONFIG, DEFAULT_VERIFIER_SOCKET
from trustd.localapi.peer import (
    peer_credentials,
    socket_directory_problem,
    trusted_uids,
    user_name,
)
from trustd.localapi.wire import (
    MAX_ANSWER_BYTES,
    AnswerTimeout,
    ProtocolError,
    Refused,
    read_frame,
)

# typing would cost the fast path an import; type checkers treat this name as always true.
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


class Unanswered(Exception):
    """No answer of the daemon to use; the message says why, naming the socket."""


class DaemonAbsent(Unanswered):
    """Nothing answers on the socket: the daemon is stopped (or not installed), this user may
    not connect to it (the socket is root's, mode 0600), or the config serves no socket."""


class DaemonUntrusted(DaemonAbsent):
    """A socket whose answer would not be trusted: in a directory other users can write, or
    served by a process that runs as neither root nor this client's user. The client judges in
    its own process, as without a daemon."""


class DaemonFailed(Unanswered):
    """The daemon took the question but gave no usable answer."""


class DaemonRefused(DaemonFailed):
    """The daemon answered that it does not take the request: another protocol version, or a
    question about a config file it does not serve."""


def ask(
    config: str, request: bytes, deadline: float, parse: Callable[[bytes], Answer]
) -> tuple[Answer, str]:
    """``parse`` of the answer to ``request`` of the daemon that serves ``config`` (an absolute
    path), before ``deadline`` (``time.monotonic()``), and the socket it answered on;
    Unanswered when there is none.

    A default install (``DEFAULT_CONFIG``) is asked on ``DEFAULT_VERIFIER_SOCKET`` without
    reading the config, which would cost more than the answer: every request names its config
    file, and the daemon refuses questions about a file it does not serve. Only when nothing
    answers there, or the daemon there refuses, is the config read for its
    ``server.verifier_socket``.
    """
    asked: Unanswered | None = None
    if config == DEFAULT_CONFIG:
        try:
            answer = ask_daemon(DEFAULT_VERIFIER_SOCKET, request, deadline, parse)
            return answer, DEFAULT_VERIFIER_SOCKET
        except (DaemonAbsent, DaemonRefused) as error:
            asked = error
    path = verifier_socket(config)
    if path is None:
        raise DaemonAbsent(f"{config} serves no verifier socket")
    if asked is not None and path == DEFAULT_VERIFIER_SOCKET:
        raise asked
    return ask_daemon(path, request, deadline, parse), path


def ask_daemon(
    path: str, request: bytes, deadline: float, parse: Callable[[bytes], Answer]
) -> Answer:
    """``parse`` of the answer to ``request`` of the daemon on socket ``path``, before
    ``deadline`` (``time.monotonic()``); DaemonAbsent or DaemonFailed (an answer ``parse``
    refuses with ProtocolError included) when there is none.

    DaemonUntrusted (a DaemonAbsent) when the socket's directory can be written by another user
    than root and this one, or the process listening runs as neither (``SO_PEERCRED``): the
    request is not even sent then.
    """
    problem = socket_directory_problem(path)
    if problem is not None:
        raise DaemonUntrusted(f"not asking the daemon on {path}: {problem}")
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            connection.connect(path)
        except TimeoutError:
            raise DaemonFailed(
                f"the trustd daemon on {path} accepted no connection before the deadline"
            ) from None
        except OSError as error:  # not there, not listening, not this user's to open
            raise DaemonAbsent(f"no daemon on {path} ({error.strerror or error})") from None
        _, uid, _ = peer_credentials(connection)
        if uid not in trusted_uids():
            raise DaemonUntrusted(
                f"the process listening on {path} runs as {user_name(uid)}, neither root nor "
                "this user: not asking it"
            )
        try:
            # Not contextlib.suppress: this path spares itself that import.
            try:  # noqa: SIM105
                connection.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it may have answered (refused this user) and closed before reading
            return parse(read_frame(connection, MAX_ANSWER_BYTES, deadline))
        except (TimeoutError, AnswerTimeout):
            raise DaemonFailed(
                f"the trustd daemon on {path} did not answer before the deadline"
            ) from None
        except Refused as error:
            raise DaemonRefused(
                f"the trustd daemon on {path} refused the request: {error}"
            ) from None
        except (ProtocolError, OSError) as error:
            raise DaemonFailed(
                f"the trustd daemon on {path} gave no usable answer ({error})"
            ) from None
    finally:
        connection.close()
