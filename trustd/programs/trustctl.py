"""``trustctl``, the program: ``trustctl verify`` asks the running daemon when it can.

A node's daemon holds the warm trust cache; a trustctl process that built a trust engine of its
own would spend most of its run importing it (requests, cryptography, the config's modules) and
then ask Notary again. So ``trustctl verify IMAGE`` sends the image as typed to the daemon's
verifier socket (``server.verifier_socket``, the socket containerd's image verifier asks) and
prints the answer: what ``trustctl verify`` prints and its exit status, made by the daemon with
``trustd.policy.queries.verify_answer``, the function the in-process command uses too. The daemon
answers under the config it has loaded (a changed file counts from its next reload) and may reuse
a lookup verified within its ``freshness_window``.

Like the image verifier (``trustd.programs.image_verifier``), this path imports the standard
library's socket (and tomllib when the config must be read: ``trustd.localapi.client.ask``) and
three small modules of trustd: no json, argparse, logging, trust engine or trustd.config.model.

Only ``verify IMAGE`` with ``-c FILE``, ``--config FILE``, ``--config=FILE`` and ``--json`` is
asked of the daemon. Anything else (``--local``, ``--state-dir``, ``--username``,
``--password-stdin``, ``-h``, options argparse would abbreviate or refuse, other commands) goes to
``trustd.programs.trustctl_commands.trustctl_main``, which judges in this process. So does
``verify`` when the daemon cannot answer: no socket configured, nothing listening, a socket this
user may not open (it is root's, mode 0600), no answer in ``DAEMON_TIMEOUT``, or a refusal (the
daemon serves another config file, speaks another version of the protocol, does not answer this
user, or is busy with other queries). A socket in a directory other users can write, or served
by a process running as neither root nor this user, is not asked either, with a warning on
stderr.
``TRUSTCTL_DEBUG=1`` says on stderr which of the two answered, and why.
"""

from __future__ import annotations

import os
import sys
import time

from trustd.config.paths import config_file
from trustd.localapi.client import DaemonAbsent, DaemonFailed, DaemonUntrusted, ask
from trustd.localapi.wire import (
    HEADER_BYTES,
    MAX_REQUEST_BYTES,
    parse_trustctl_verify_answer,
    trustctl_verify_frame,
)

# How long to wait for the daemon before judging here: beyond a lookup's worst case under the
# default Notary settings (three attempts of 10 s at one file), so that a slow Notary is
# answered by the daemon, and bounded, so that a hung daemon does not hang trustctl.
DAEMON_TIMEOUT = 60.0
# The daemon bounds its Notary requests by the time left less this, to have its answer delivered.
_ANSWER_MARGIN = 0.5


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    verify = fast_verify_arguments(arguments)
    if verify is not None:
        answer = _ask_daemon(*verify)
        if answer is not None:
            status, stdout, stderr = answer
            sys.stdout.write(stdout)
            sys.stderr.write(stderr)
            return status
    from trustd.programs.trustctl_commands import trustctl_main

    return trustctl_main(arguments)


def fast_verify_arguments(arguments: list[str]) -> tuple[str, str | None, bool] | None:
    """(image, config file or None, --json) when ``arguments`` are a plain ``verify``; None for
    anything the full parser must see."""
    if not arguments or arguments[0] != "verify":
        return None
    image: str | None = None
    config: str | None = None
    as_json = False
    rest = iter(arguments[1:])
    for argument in rest:
        if argument == "--json":
            as_json = True
        elif argument in ("-c", "--config"):
            value = next(rest, None)
            if value is None or value.startswith("-"):
                return None  # argparse's to refuse, in its words
            config = value
        elif argument.startswith("--config="):
            config = argument.removeprefix("--config=")
        elif argument.startswith("-") or image is not None:
            return None
        else:
            image = argument
    if image is None:
        return None
    return image, config, as_json


def _ask_daemon(image: str, config: str | None, as_json: bool) -> tuple[int, str, str] | None:
    """The daemon's (exit status, stdout, stderr) for ``verify image``; None to judge here."""
    # The config file as the in-process commands find it; the daemon must serve this file.
    config_path = os.path.abspath(config_file(config))
    request = trustctl_verify_frame(config_path, image, as_json, DAEMON_TIMEOUT - _ANSWER_MARGIN)
    if len(request) - HEADER_BYTES > MAX_REQUEST_BYTES:
        _debug("the image is too long to ask the daemon; judging in this process")
        return None
    deadline = time.monotonic() + DAEMON_TIMEOUT
    try:
        answer, path = ask(config_path, request, deadline, parse_trustctl_verify_answer)
    except DaemonUntrusted as error:
        # Not a daemon that is merely down: someone else's socket, or one others could replace.
        sys.stderr.write(f"trustctl: warning: {error}; judging in this process\n")
        return None
    except (DaemonAbsent, DaemonFailed) as error:
        _debug(f"{error}; judging in this process")
        return None
    _debug(f"answered by the trustd daemon on {path}")
    return answer


def _debug(text: str) -> None:
    if os.environ.get("TRUSTCTL_DEBUG"):
        sys.stderr.write(f"trustctl: debug: {text}\n")


if __name__ == "__main__":
    sys.exit(main())
