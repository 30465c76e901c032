"""trustd as containerd 2.x's image verifier: judges every pull made through the transfer service.

containerd's ``io.containerd.image-verifier.v1.bindir`` plugin runs every file of its ``bin_dir``
for each pull, after resolving the name and before fetching anything::

    VERIFIER -name REF -digest sha256:… -stdin-media-type application/vnd.oci.descriptor.v1+json

with the image's OCI descriptor as JSON on stdin. Exit status 0 lets the pull go on, anything else
blocks it; standard output is the reason containerd reports (so its first line says it all) and
standard error goes to containerd's debug log.

Exit statuses: 0 allowed (also an audit-mode failure, which is recorded), 1 denied, 2 not judged
(bad arguments or stdin, unusable config, an audit log it cannot open when it judges in its own
process, no judgement before ``--timeout``). All but 0 block.

Fast path: ask the running daemon on its verifier socket (``server.verifier_socket``), the one
owner of the trust cache (``trustd.localapi.client.ask``; a default install does not even read its
config for that). The descriptor goes with the question and the daemon checks it, so that path
imports the standard library's socket and nothing else of weight: no json, nothing of the trust
engine; a Python process that built its own trust engine would cost a cold cache and a Notary
round trip per role on every pull. When no daemon answers, the descriptor is checked and the
same judgement made in this process (``trustd.localapi.server.judge_locally``): same config,
state directory and audit log.

The file installed into containerd's ``bin_dir`` is made by ``entry_script`` (see install.sh).
"""

from __future__ import annotations

import os
import sys
import time

from trustd.config.paths import config_file
from trustd.localapi.client import DaemonAbsent, DaemonFailed, ask
from trustd.localapi.wire import (
    HEADER_BYTES,
    MAX_REQUEST_BYTES,
    ProtocolError,
    described_digest,
    parse_verify_pull_answer,
    verify_pull_frame,
)

DESCRIPTOR_MEDIA_TYPE = "application/vnd.oci.descriptor.v1+json"
# Below containerd's usual per_verifier_timeout ("10s" in its docs), so that a slow judgement
# is reported with trustd's reason rather than as containerd's timeout.
DEFAULT_TIMEOUT = 8.0
MAX_STDIN_BYTES = 1024 * 1024  # a descriptor is a few hundred bytes; annotations add some

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_NOT_JUDGED = 2

_PROGRAM = "trustd-image-verifier"
# containerd's flags (Go style: one or two dashes, "-flag value" or "-flag=value"), and ours.
_FLAGS = {
    "name": "name",
    "digest": "digest",
    "stdin-media-type": "media_type",
    "c": "config",
    "config": "config",
    "timeout": "timeout",
}


class NotJudged(Exception):
    """The verifier could not get as far as a judgement; the message says why."""


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        options = _parse_arguments(arguments)
        timeout = _timeout(options.get("timeout"))
        deadline = started + timeout
        name, digest = _required(options, "name"), _required(options, "digest")
        media_type = options.get("media_type", "")
        descriptor: bytes | None = None
        if media_type == DESCRIPTOR_MEDIA_TYPE:
            descriptor = _read_stdin(deadline)
        else:
            # Later containerd versions may send something else on stdin; the arguments carry
            # all the policy needs, so judge from them.
            shown = media_type or "(none)"
            _note(f"stdin media type {shown!r} not understood; judging from -name and -digest")
        config = config_file(options.get("config"))
        allowed, message, judged_by = _judge(config, name, digest, descriptor, deadline, timeout)
    except NotJudged as error:
        _report(f"trustd: image verifier: {error}")
        return EXIT_NOT_JUDGED
    except Exception as error:  # a bug: still one line for containerd, and the pull blocked
        _report(f"trustd: image verifier: internal error: {type(error).__name__}: {error}")
        return EXIT_NOT_JUDGED
    _report(message)
    _note(f"judged by {judged_by} in {(time.monotonic() - started) * 1000:.1f} ms")
    return EXIT_ALLOWED if allowed else EXIT_DENIED


# --- arguments and stdin -------------------------------------------------------------------------


def _parse_arguments(arguments: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        position += 1
        if argument in ("-h", "--help", "-help"):
            raise NotJudged(
                "usage: trustd-image-verifier -name REF -digest DIGEST "
                f"[-stdin-media-type TYPE] [--config FILE] [--timeout SECONDS] (stdin: "
                f"the image's {DESCRIPTOR_MEDIA_TYPE})"
            )
        if not argument.startswith("-") or argument in ("-", "--"):
            raise NotJudged(f"unexpected argument {argument!r}")
        flag, equals, value = argument.removeprefix("-").removeprefix("-").partition("=")
        key = _FLAGS.get(flag)
        if key is None:
            raise NotJudged(f"unknown flag {argument.partition('=')[0]!r}")
        if not equals:
            if position == len(arguments):
                raise NotJudged(f"flag {argument!r} needs a value")
            value = arguments[position]
            position += 1
        options[key] = value
    return options


def _required(options: dict[str, str], key: str) -> str:
    value = options.get(key)
    if not value:
        raise NotJudged(f"-{key} is required (containerd passes -name, -digest, -stdin-media-type)")
    return value


def _timeout(text: str | None) -> float:
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 3600:
        raise NotJudged(f"--timeout must be a number of seconds from 0 to 3600 (got {text!r})")
    return seconds


def _read_stdin(deadline: float) -> bytes:
    """Everything on stdin (containerd writes the descriptor, then closes), bounded in size and
    time."""
    import select

    descriptor = sys.stdin.fileno()
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([descriptor], [], [], left)[0]:
            raise NotJudged("stdin was not closed before the deadline")
        chunk = os.read(descriptor, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_STDIN_BYTES:
            raise NotJudged(f"stdin holds more than {MAX_STDIN_BYTES} bytes; not a descriptor")
        chunks.append(chunk)


def _check_descriptor(data: bytes, digest: str) -> None:
    """The descriptor on stdin must describe the image -digest names (the daemon checks the
    descriptor it is sent; this is for the ones it is not)."""
    try:
        described = described_digest(data)
    except ProtocolError as error:
        raise NotJudged(f"stdin is not an OCI descriptor: {error}") from None
    if described != digest:
        shown = described if len(described) <= 200 else described[:200] + "..."
        raise NotJudged(f"the descriptor on stdin is for {shown}, but -digest is {digest}")


# --- judging -------------------------------------------------------------------------------------


def _judge(
    config: str, name: str, digest: str, descriptor: bytes | None, deadline: float, timeout: float
) -> tuple[bool, str, str]:
    """(allowed, message, who judged): the daemon if it answers, else this process."""
    config = os.path.abspath(config)
    request, sent = _request(config, name, digest, descriptor, deadline)
    try:
        (allowed, message), path = ask(config, request, deadline, parse_verify_pull_answer)
        return allowed, message, f"the trustd daemon on {path}"
    except (DaemonAbsent, DaemonFailed) as error:
        unanswered: DaemonAbsent | DaemonFailed = error
    late = isinstance(unanswered, DaemonFailed) and time.monotonic() >= deadline
    if not late:
        _note(f"{unanswered}; judging in this process")
    if sent is not None:  # the daemon judged nothing, so it may not have checked it either
        _check_descriptor(sent, digest)
    if late:
        raise NotJudged(f"no judgement within {timeout:g}s: {unanswered}")
    allowed, message = _judge_locally(config, name, digest, deadline, timeout)
    return allowed, message, "this process (no daemon)"


def _request(
    config: str, name: str, digest: str, descriptor: bytes | None, deadline: float
) -> tuple[bytes, bytes | None]:
    """The question for the daemon, and the descriptor sent with it, which the daemon checks
    before it judges. One that cannot be sent (not UTF-8, too long for a request) is checked
    here."""
    budget = _answer_budget(deadline)
    if descriptor is not None:
        try:
            text = descriptor.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            request = verify_pull_frame(config, name, digest, budget, text)
            if len(request) - HEADER_BYTES <= MAX_REQUEST_BYTES:
                return request, descriptor
        _check_descriptor(descriptor, digest)
    return verify_pull_frame(config, name, digest, budget), None


def _answer_budget(deadline: float) -> float:
    """Seconds the judgement itself may take: what is left, less a margin to report it."""
    return max(deadline - time.monotonic() - 0.5, 0.1)


def _judge_locally(
    config: str, name: str, digest: str, deadline: float, timeout: float
) -> tuple[bool, str]:
    """The daemon's judgement, made here; bounded by the deadline like the daemon's answer."""
    import logging
    import threading
    from pathlib import Path

    from trustd.errors import ConfigError
    from trustd.localapi.server import judge_locally

    # Warnings (e.g. a cached file ignored) go to stderr, which containerd logs at debug level.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    outcome: list[tuple[bool, str]] = []
    failure: list[BaseException] = []

    def judge() -> None:
        try:
            outcome.append(judge_locally(Path(config), name, digest, _answer_budget(deadline)))
        except BaseException as error:  # reported by the main thread
            failure.append(error)

    worker = threading.Thread(target=judge, name="judge", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        raise NotJudged(f"no judgement within {timeout:g}s (judging in this process, no daemon)")
    if failure:
        error = failure[0]
        if isinstance(error, ConfigError):
            raise NotJudged(str(error)) from None
        raise NotJudged(f"judging failed: {type(error).__name__}: {error}") from None
    return outcome[0]


# --- output --------------------------------------------------------------------------------------


def _report(message: str) -> None:
    """The reason containerd reports: one line on stdout."""
    line = " ".join(message.split("\n")).strip()
    sys.stdout.buffer.write(line.encode("utf-8", "replace") + b"\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(f"{_PROGRAM}: {text}\n")


# --- the file containerd runs --------------------------------------------------------------------


def entry_script(python: str, config: str, import_paths: list[str] | None = None) -> str:
    """The executable installed into containerd's ``bin_dir``.

    ``python`` runs isolated (``-I``: no environment variables, no user site) and, when
    ``import_paths`` are given (trustd's site-packages), without the site module (``-S``), which
    spares every pull the site's start-up work. containerd names the file in its messages
    (``verifier trustd rejected image``), so it is installed as ``trustd``.
    """
    flags = "-IS" if import_paths else "-I"
    shebang = f"#!{python} {flags}"
    if len(shebang) > 255 or any(character.isspace() for character in python):
        raise ValueError(f"{python!r} cannot be named on a #! line")
    lines = [
        shebang,
        "# trustd's Notary judgement of every pull containerd makes through its transfer service.",
        "# containerd runs it as: trustd -name REF -digest DIGEST -stdin-media-type TYPE",
        "# Installed by trustd's install.sh; see /usr/share/trustd/cri.md, section containerd 2.x.",
        "import sys",
    ]
    if import_paths:
        lines.append(f"sys.path[:0] = {import_paths!r}")
    lines += [
        "from trustd.programs.image_verifier import main",
        f"sys.exit(main(['--config', {config!r}, *sys.argv[1:]]))",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
