"""What trustd costs the Notary server: requests counted on the server's side, and its capacity.

``NotaryRequests`` reads notary-server's own access log (the stack runs it at log level ``info``,
one ``response completed`` line per request) and counts the lines whose user agent is trustd's,
so the figures do not depend on trustd reporting honestly about itself.

``measure_capacity`` runs a bounded loop of keep-alive GETs of one ``timestamp.json`` from a few
processes at once (``python3 -m bench.notary worker …``) and reports what the server answered.
The load generator shares the machine's cores with the server, so the rate is a lower bound.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from trustd.formats.notary.transport import USER_AGENT as TRUSTD_USER_AGENT

LOAD_USER_AGENT = "trustd-bench-load"
# notary-server writes its line after the response; give it this long to reach the file.
_LOG_SETTLE_SECONDS = 0.2


class NotaryRequests:
    """trustd's requests in notary-server's access log, counted between two marks."""

    def __init__(self, log_path: Path, user_agent: str = TRUSTD_USER_AGENT) -> None:
        self.log_path = log_path
        self.user_agent = user_agent

    def mark(self) -> int:
        """A position in the log; ``since(mark)`` counts what was logged after it."""
        time.sleep(_LOG_SETTLE_SECONDS)
        return self.log_path.stat().st_size

    def since(self, mark: int) -> Counter[str]:
        """Requests per file name (``timestamp``, ``root``, ``snapshot``…) logged after ``mark``."""
        time.sleep(_LOG_SETTLE_SECONDS)
        with self.log_path.open("rb") as log:
            log.seek(mark)
            data = log.read()
        counts: Counter[str] = Counter()
        for line in data.splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") != "response completed":
                continue
            if entry.get("http.request.useragent") != self.user_agent:
                continue
            counts[_file_name(str(entry.get("http.request.uri", "")))] += 1
        return counts


def _file_name(uri: str) -> str:
    """``/v2/<gun>/_trust/tuf/snapshot.<sha256>.json`` -> ``snapshot``."""
    name = uri.rsplit("/_trust/tuf/", 1)[-1].split("?", 1)[0].removesuffix(".json")
    parts = name.split(".")
    if len(parts) == 2 and len(parts[1]) == 64:  # <role>.<sha256>
        return parts[0]
    if len(parts) == 2 and parts[0].isdigit():  # <version>.<role>
        return parts[1]
    return name


def describe(counts: Counter[str]) -> str:
    """``15 (15 timestamp)`` or ``0``."""
    total = sum(counts.values())
    if not total:
        return "0"
    detail = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    return f"{total} ({detail})"


# --- capacity ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    connections: int
    processes: int
    seconds: float
    answered: int
    errors: int
    latencies_ms: tuple[float, ...]

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


def measure_capacity(
    url: str,
    ca_file: Path,
    *,
    processes: int,
    threads: int,
    seconds: float,
    max_requests: int,
    cwd: Path,
) -> Capacity:
    """GET ``url`` over ``processes * threads`` keep-alive connections for ``seconds``.

    Bounded twice: by time, and by ``max_requests`` per connection.
    """
    start_at = time.time() + 1.0  # every worker connected and warmed up before the clock starts
    per_connection = max(max_requests // max(processes * threads, 1), 1)
    command = [
        sys.executable,
        "-m",
        "bench.notary",
        "worker",
        url,
        str(ca_file),
        str(threads),
        repr(start_at),
        repr(seconds),
        str(per_connection),
    ]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(cwd), *filter(None, [environment.get("PYTHONPATH")])]
    )
    workers = [
        subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(processes)
    ]
    answered = errors = 0
    latencies: list[float] = []
    for worker in workers:
        output, problems = worker.communicate(timeout=seconds + 60)
        if worker.returncode != 0:
            raise RuntimeError(f"load worker failed: {problems.decode(errors='replace')[-500:]}")
        result = json.loads(output)
        answered += result["answered"]
        errors += result["errors"]
        latencies.extend(result["latencies_ms"])
    return Capacity(
        connections=processes * threads,
        processes=processes,
        seconds=seconds,
        answered=answered,
        errors=errors,
        latencies_ms=tuple(latencies),
    )


def _worker(
    url: str, ca_file: str, threads: int, start_at: float, seconds: float, limit: int
) -> dict[str, object]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    context = ssl.create_default_context(cafile=ca_file)
    headers = {"User-Agent": LOAD_USER_AGENT}
    lock = threading.Lock()
    totals = {"answered": 0, "errors": 0}
    latencies: list[float] = []

    def loop() -> None:
        connection = http.client.HTTPSConnection(
            parts.hostname or "127.0.0.1", parts.port or 443, context=context, timeout=10
        )
        connection.request("GET", path, headers=headers)  # handshake and warm-up, untimed
        connection.getresponse().read()
        mine: list[float] = []
        answered = errors = 0
        time.sleep(max(start_at - time.time(), 0.0))
        deadline = start_at + seconds
        while time.time() < deadline and answered + errors < limit:
            started = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()
                continue
            if response.status == 200:
                answered += 1
                mine.append((time.perf_counter() - started) * 1000.0)
            else:
                errors += 1
        connection.close()
        with lock:
            totals["answered"] += answered
            totals["errors"] += errors
            latencies.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return {**totals, "latencies_ms": latencies}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.notary")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="one load-generating process (internal)")
    worker.add_argument("url")
    worker.add_argument("ca_file")
    worker.add_argument("threads", type=int)
    worker.add_argument("start_at", type=float)
    worker.add_argument("seconds", type=float)
    worker.add_argument("limit", type=int)
    args = parser.parse_args(argv)
    result = _worker(args.url, args.ca_file, args.threads, args.start_at, args.seconds, args.limit)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
