"""``python3 -m bench``: trustd's CRI shim against containerd, side by side, in one run.

Everything is measured against the same containerd, registry and notary-server (tests.stack on
127.0.0.1), with the shim in a process of its own (``trustd serve`` by default). Each pull sample
is an image never pulled before, on either path. trustd's requests to Notary are counted in
notary-server's own access log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import markdown
from bench.fixtures import (
    SignedRef,
    fake_manifest,
    push_many,
    sign_images,
    signed_repositories,
    signed_samples,
)
from bench.notary import NotaryRequests, describe, measure_capacity
from bench.registry import RegistryRequests, RegistryUse
from bench.shim import REPO_ROOT, Memory, ShimProcess, write_config
from bench.signers import VerifiedImages, prepare
from bench.stats import Summary, interleaved_calls, interleaved_series, percentile, ratio, timed
from bench.trustctl import TARGET_MS as TRUSTCTL_TARGET_MS
from bench.trustctl import measure_trustctl
from bench.verifier import TARGET_MS as VERIFIER_TARGET_MS
from bench.verifier import measure_verifier
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.stack import PushedImage, Stack
from trustd.config.load import load_config
from trustd.config.model import Config
from trustd.formats.notary.engine import TrustEngine
from trustd.formats.notary.resolution import resolve_tag

RPC_TIMEOUT = 120.0
# The bench's own share of the machine; printed with the load average so readers can judge.
_BENCH_LOAD = "the bench alone loads 2 cores to about 2-3"
# Pulls at least this long (direct) are held to the tighter ratio.
_LONG_PULL_MS = 100.0


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    workdir: Path | None
    keep: bool
    shim: str
    pulls: int
    calls: int
    parallel: int
    rounds: int
    status_rounds: int
    min_images: int
    repositories: int
    resolutions: int
    resolve_warm: int
    resolve_resign: int
    resolve_cold: int
    cli_runs: int
    verifier_runs: int
    verifier_cold_runs: int
    load_seconds: float
    load_processes: int
    load_threads: int
    freshness_window: float | None
    markdown: bool
    py_spy: Path | None


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="stack work dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    parser.add_argument(
        "--shim",
        choices=("daemon", "host"),
        default="daemon",
        help="daemon: `trustd serve --config FILE`; host: bench/host.py (serve + PolicyEngine)",
    )
    parser.add_argument(
        "--pulls",
        type=int,
        default=25,  # a tiny pull varies by +-10 ms on a busy machine: the median needs samples
        help="samples per path of a pull and of a container start (one signed GUN per sample)",
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per passthrough method")
    parser.add_argument("--parallel", type=int, default=32, help="pulls at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of parallel pulls")
    parser.add_argument(
        "--status-rounds", type=int, default=2, help="rounds of first-in-window ImageStatus"
    )
    parser.add_argument("--min-images", type=int, default=200, help="images in containerd")
    parser.add_argument("--repositories", type=int, default=100, help="GUNs for the RSS phase")
    parser.add_argument("--resolutions", type=int, default=1000, help="resolutions before RSS")
    parser.add_argument("--resolve-warm", type=int, default=300)
    parser.add_argument("--resolve-resign", type=int, default=10)
    parser.add_argument("--resolve-cold", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=20, help="`notary lookup` process runs")
    parser.add_argument(
        "--verifier-runs", type=int, default=30, help="image verifier runs, daemon running"
    )
    parser.add_argument(
        "--verifier-cold-runs", type=int, default=10, help="image verifier runs, no daemon"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=2.0, help="length of the notary-server load loop"
    )
    parser.add_argument("--load-processes", type=int, default=2, help="load-generating processes")
    parser.add_argument("--load-threads", type=int, default=2, help="connections per process")
    parser.add_argument(
        "--freshness-window",
        type=float,
        metavar="SECONDS",
        help="write [server] freshness_window into trustd's config (default: trustd's default)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="write this run's table into README.md and bench/README.md (between the markers)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record the shim process with py-spy per phase into DIR (collapsed stacks)",
    )
    args = parser.parse_args(argv)
    return Options(
        workdir=args.workdir,
        keep=args.keep,
        shim=args.shim,
        pulls=max(args.pulls, 1),
        calls=max(args.calls, 1),
        parallel=max(args.parallel, 1),
        rounds=max(args.rounds, 1),
        status_rounds=max(args.status_rounds, 1),
        min_images=max(args.min_images, 0),
        repositories=max(args.repositories, 1),
        resolutions=max(args.resolutions, 1),
        resolve_warm=max(args.resolve_warm, 1),
        resolve_resign=max(args.resolve_resign, 1),
        resolve_cold=max(args.resolve_cold, 1),
        cli_runs=max(args.cli_runs, 1),
        verifier_runs=max(args.verifier_runs, 1),
        verifier_cold_runs=max(args.verifier_cold_runs, 1),
        load_seconds=max(args.load_seconds, 0.1),
        load_processes=max(args.load_processes, 1),
        load_threads=max(args.load_threads, 1),
        freshness_window=args.freshness_window,
        markdown=args.markdown,
        py_spy=args.py_spy,
    )


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    what: str
    trustd: str
    reference: str
    ratio: str
    target: str
    met: bool | None  # None: no target
    notary: str = ""  # trustd's requests to notary-server during the row, counted by the server
    registry: str = ""  # requests to the registry during the row, counted by the registry

    @property
    def status(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


_COLUMNS = ("what", "trustd", "reference", "ratio", "notary", "registry", "target", "status")
_HEADINGS = (
    "measurement",
    "trustd",
    "reference",
    "ratio",
    "Notary requests",
    "registry requests",
    "target",
    "status",
)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        notary = f" [Notary: {row.notary}]" if row.notary else ""
        registry = f" [registry: {row.registry}]" if row.registry else ""
        print(
            f"  {row.what}: {row.trustd} vs {row.reference} ({row.ratio}){notary}{registry} "
            f"{row.status}",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def cells(self) -> list[list[str]]:
        return [[str(getattr(row, name)) for name in _COLUMNS] for row in self.rows]

    def table(self) -> str:
        rows = [list(_HEADINGS), *self.cells()]
        widths = [max(len(row[index]) for row in rows) for index in range(len(_COLUMNS))]
        lines = []
        for index, texts in enumerate(rows):
            cells = [text.ljust(width) for text, width in zip(texts, widths, strict=True)]
            lines.append(" | ".join(cells).rstrip())
            if index == 0:
                lines.append("-+-".join("-" * width for width in widths))
        return "\n".join(lines)

    def markdown_table(self) -> str:
        return markdown.table(_HEADINGS, self.cells())


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def latency(summary: Summary) -> str:
    return f"p50 {ms(summary.p50)} / p99 {ms(summary.p99)}"


def times(value: float) -> str:
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.2f}x"


def delta(mine: float, theirs: float) -> str:
    """The absolute difference of two millisecond figures, signed."""
    return "n/a" if math.isnan(mine) or math.isnan(theirs) else f"{mine - theirs:+.2f} ms"


def per(counts: Counter[str], events: int, unit: str) -> str:
    """``1.00/start: 15 (15 timestamp)``."""
    total = sum(counts.values())
    return f"{total / max(events, 1):.2f}/{unit}: {describe(counts)}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- CRI -----------------------------------------------------------------------------------------


class Cri:
    """A CRI ImageService client on one unix socket (the same client code for both paths)."""

    def __init__(self, socket: Path | str) -> None:
        target = str(socket)
        self.channel = grpc.insecure_channel(
            target if target.startswith("unix://") else f"unix://{target}",
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self.stub = api_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.stub.PullImage(request, timeout=RPC_TIMEOUT).image_ref

    def status(self, image: str) -> api_pb2.ImageStatusResponse:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        return self.stub.ImageStatus(request, timeout=RPC_TIMEOUT)

    def start_container(self, image: str) -> None:
        """What kubelet asks the image service for one container start of a new image.

        ImageStatus (absent), PullImage, then ImageStatus again to read the image's user
        (``getImageUser``), which must find the image.
        """
        if self.status(image).HasField("image"):
            raise AssertionError(f"{image} is already present; a start sample needs a new one")
        self.pull(image)
        if not self.status(image).HasField("image"):
            raise AssertionError(f"{image} is absent right after its pull")

    def list_images(self) -> api_pb2.ListImagesResponse:
        return self.stub.ListImages(api_pb2.ListImagesRequest(), timeout=RPC_TIMEOUT)

    def fs_info(self) -> api_pb2.ImageFsInfoResponse:
        return self.stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=RPC_TIMEOUT)

    def close(self) -> None:
        self.channel.close()


# --- profiling -----------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(directory: Path | None, pid: int, name: str) -> Iterator[None]:
    """Record the shim process with py-spy while the block runs (if asked and installed)."""
    program = shutil.which("py-spy") if directory is not None else None
    if directory is None or program is None:
        if directory is not None:
            log("py-spy is not installed (pip install py-spy); not profiling")
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    # Collapsed stacks (text): readable as they are, and what flame graph tools take. Only the
    # thread holding the GIL is sampled: the stacks show where the shim spends Python CPU, not
    # where its threads wait.
    output = directory / f"{name}.folded"
    recorder = subprocess.Popen(
        [
            *(program, "record", "--pid", str(pid), "--rate", "1000", "--gil"),
            *("--format", "raw", "--nonblocking", "--output", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attach before the phase starts
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(5)
        log(f"py-spy stacks of {name}: {output}")


# --- phases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sample's images: trustd's (in a signed GUN of its own) and direct containerd's."""

    trustd: PushedImage
    direct: PushedImage


@dataclass
class Usage:
    """What one phase cost trustd: Notary requests (counted by the server) and shim CPU time."""

    requests: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0

    def cpu_per(self, events: int) -> str:
        """The shim's CPU time per event: robust to a busy machine, unlike wall time."""
        return f"CPU {self.cpu_seconds * 1000.0 / max(events, 1):.2f} ms"


@dataclass
class Bench:
    options: Options
    stack: Stack
    shim: ShimProcess
    trustd: Cri
    direct: Cri
    config_path: Path
    report: Report
    notary: NotaryRequests
    window: float  # trustd's freshness_window, seconds
    registry: RegistryRequests
    # Figures the cluster-scale model is built from, filled in by the phases.
    requests_per_start: float = math.nan
    capacity_per_second: float = math.nan
    notary_v1_pull_ms: float = math.nan  # the median of the Notary v1 pull row

    def outwait_window(self) -> None:
        """Let every verified result trustd holds go stale, so the next lookup asks Notary."""
        if self.window > 0:
            time.sleep(self.window + 0.1)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Usage]:
        """trustd's Notary requests and the shim's CPU time while the block runs."""
        usage = Usage()
        mark = self.notary.mark()
        cpu = self.shim.cpu_seconds()
        yield usage
        usage.cpu_seconds = self.shim.cpu_seconds() - cpu
        usage.requests.update(self.notary.since(mark))

    # -- pulls --

    def interleaved(
        self, samples: Sequence[Sample], action: Callable[[Any, str], object]
    ) -> tuple[Summary, Summary]:
        """Time ``action(client, tag)`` per sample through trustd and direct containerd,
        alternating which goes first so neither always meets a warmer cache."""
        trustd_times: list[float] = []
        direct_times: list[float] = []
        for index, sample in enumerate(samples):
            order = [
                (self.trustd, sample.trustd, trustd_times),
                (self.direct, sample.direct, direct_times),
            ]
            if index % 2:
                order.reverse()
            for client, image, sink in order:
                sink.append(timed(lambda c=client, i=image: action(c, i.tagged)))
        return Summary.of(trustd_times), Summary.of(direct_times)

    def sequential_pulls(self, samples: Sequence[Sample]) -> None:
        log(f"sequential pulls: {len(samples)} new images per path, interleaved")
        self.outwait_window()
        mark = self.registry.mark()
        with py_spy(self.options.py_spy, self.shim.pid, "pull"), self.counting() as usage:
            trustd, direct = self.interleaved(samples, lambda client, image: client.pull(image))
        registry = RegistryUse.of(
            self.registry.since(mark),
            [sample.trustd for sample in samples],
            [sample.direct for sample in samples],
        )
        self.notary_v1_pull_ms = trustd.p50
        factor = ratio(trustd.p50, direct.p50)
        limit = 1.05 if direct.p50 >= _LONG_PULL_MS else 1.10
        self.report.add(
            Row(
                f"pull, new signed image (median of {trustd.count})",
                f"{ms(trustd.p50)} ({usage.cpu_per(trustd.count)})",
                f"{ms(direct.p50)} direct",
                f"{times(factor)} ({delta(trustd.p50, direct.p50)})",
                f"<= 1.10x (1.05x from {_LONG_PULL_MS:.0f} ms)",
                factor <= limit,
                per(usage.requests, trustd.count, "pull"),
                registry.describe(),
            )
        )

    def verified_pulls(
        self, formats: Sequence[VerifiedImages], direct_images: Sequence[PushedImage]
    ) -> None:
        """Pulls of new images whose rule requires Notation or cosign signatures (found in the
        registry), interleaved with direct pulls of new unsigned images; the registry counts
        what trustd asked it for each verification and what containerd asked for each pull."""
        for skipped in (f for f in formats if f.reason):
            self.report.add(
                Row(f"pull, {skipped.format}-verified: skipped", "", skipped.reason, "", "", None)
            )
        ready = [f for f in formats if not f.reason]
        if not ready:
            return
        # Warm-up, untimed: trustd's first contact with the registry and each format's keys.
        for verified in ready:
            self.trustd.pull(verified.images[0].tagged)
        self.direct.pull(direct_images[0].tagged)
        samples = min(len(direct_images), *(len(f.images) for f in ready)) - 1
        names = ", ".join(f.format for f in ready)
        log(f"verified pulls ({names}): {samples} new images per path and direct, interleaved")
        cpu = dict.fromkeys((f.format for f in ready), 0.0)  # the shim's, per format

        def pull(client: Cri, image: PushedImage, path: str) -> Callable[[], object]:
            def call() -> None:
                before = self.shim.cpu_seconds()  # on both paths, so both pay for the read
                client.pull(image.tagged)
                if path in cpu:
                    cpu[path] += self.shim.cpu_seconds() - before

            return call

        timed_ones = slice(1, samples + 1)
        series = {"direct": [pull(self.direct, i, "direct") for i in direct_images[timed_ones]]}
        for verified in ready:
            series[verified.format] = [
                pull(self.trustd, image, verified.format) for image in verified.images[timed_ones]
            ]
        notary_mark = self.notary.mark()
        registry_mark = self.registry.mark()
        times_of = interleaved_series(series)
        requests = self.registry.since(registry_mark)
        notary = self.notary.since(notary_mark)
        direct = Summary.of(times_of["direct"])
        for verified in ready:
            mine = Summary.of(times_of[verified.format])
            registry = RegistryUse.of(
                requests, verified.images[timed_ones], direct_images[timed_ones]
            )
            self.report.add(
                Row(
                    f"pull, {verified.format}-verified new image (median of {mine.count})",
                    f"{ms(mine.p50)} (CPU {cpu[verified.format] * 1000.0 / mine.count:.2f} ms)",
                    f"{ms(direct.p50)} direct; {ms(self.notary_v1_pull_ms)} Notary v1 pull",
                    f"{times(ratio(mine.p50, direct.p50))} ({delta(mine.p50, direct.p50)})",
                    "<= 1 registry round trip more than the pull",
                    registry.added <= 1.0,
                    # Both rows share the phase: the Notary figure is for all of it.
                    per(notary, mine.count * len(ready), "pull"),
                    registry.describe(),
                )
            )

    def parallel_pulls(self, rounds: list[tuple[list[PushedImage], list[PushedImage]]]) -> None:
        width = self.options.parallel
        log(f"parallel pulls: {len(rounds)} rounds of {width} at once per path")
        trustd_walls: list[float] = []
        direct_walls: list[float] = []
        with (
            py_spy(self.options.py_spy, self.shim.pid, "parallel-pull"),
            ThreadPoolExecutor(width) as pool,
            self.counting() as usage,
        ):
            for index, (mine, theirs) in enumerate(rounds):
                order = [(self.trustd, mine, trustd_walls), (self.direct, theirs, direct_walls)]
                if index % 2:
                    order.reverse()
                for client, images, sink in order:
                    started = time.perf_counter()
                    list(pool.map(lambda image, c=client: c.pull(image.tagged), images))
                    sink.append(time.perf_counter() - started)
        trustd = Summary.of(trustd_walls)
        direct = Summary.of(direct_walls)
        factor = ratio(trustd.p50, direct.p50)
        self.report.add(
            Row(
                f"{width} parallel pulls, wall (median of {trustd.count})",
                f"{ms(trustd.p50)} ({usage.cpu_per(len(rounds) * width)}/pull)",
                f"{ms(direct.p50)} direct",
                f"{times(factor)} ({delta(trustd.p50, direct.p50)})",
                "<= 1.05x",
                factor <= 1.05,
                per(usage.requests, len(rounds) * width, "pull"),
            )
        )

    def container_starts(self, samples: Sequence[Sample]) -> None:
        """kubelet's three image calls for one container start, each start in its own GUN."""
        log(f"container starts (ImageStatus, PullImage, ImageStatus): {len(samples)} per path")
        self.outwait_window()
        with py_spy(self.options.py_spy, self.shim.pid, "start"), self.counting() as usage:
            trustd, direct = self.interleaved(
                samples, lambda client, image: client.start_container(image)
            )
        factor = ratio(trustd.p50, direct.p50)
        self.requests_per_start = sum(usage.requests.values()) / max(trustd.count, 1)
        limit = 1.05 if direct.p50 >= _LONG_PULL_MS else 1.10
        self.report.add(
            Row(
                f"container start: ImageStatus, PullImage, ImageStatus (median of {trustd.count})",
                f"{ms(trustd.p50)} ({usage.cpu_per(trustd.count)})",
                f"{ms(direct.p50)} direct",
                f"{times(factor)} ({delta(trustd.p50, direct.p50)})",
                "<= 1.10x (as pull), 1 request",
                factor <= limit and self.requests_per_start <= 1.0,
                per(usage.requests, trustd.count, "start"),
            )
        )

    # -- ImageStatus --

    def first_status(self, samples: Sequence[Sample]) -> None:
        """ImageStatus as the first lookup of its GUN in the window: one Notary round trip."""
        rounds = self.options.status_rounds
        log(f"ImageStatus, first in the window: {rounds} rounds over {len(samples)} GUNs")
        trustd_times: list[float] = []
        direct_times: list[float] = []
        with self.counting() as usage:
            for round_index in range(rounds):
                self.outwait_window()
                for index, sample in enumerate(samples):
                    image = sample.trustd.tagged  # the same reference on both paths
                    pair = [
                        (lambda i=image: self.trustd.status(i), trustd_times),
                        (lambda i=image: self.direct.status(i), direct_times),
                    ]
                    if (index + round_index) % 2:
                        pair.reverse()
                    for call, sink in pair:
                        sink.append(timed(call))
        trustd = Summary.of(trustd_times)
        direct = Summary.of(direct_times)
        self.report.add(
            Row(
                f"ImageStatus, first in the window (n={trustd.count})",
                f"{latency(trustd)} ({usage.cpu_per(trustd.count)})",
                f"{latency(direct)} direct",
                f"{times(ratio(trustd.p50, direct.p50))} p50 ({delta(trustd.p50, direct.p50)})",
                "",
                None,
                per(usage.requests, trustd.count, "call"),
            )
        )

    def compare_calls(
        self,
        name: str,
        mine: Callable[[], object],
        theirs: Callable[[], object],
        *,
        budget_ms: float | None,
    ) -> tuple[Summary, Summary, Usage, float]:
        """Interleaved calls on both paths; a row with target ``+budget_ms`` p50 if given."""
        count = self.options.calls
        log(f"{name}: {count} calls per path, interleaved")
        started = time.monotonic()
        with (
            py_spy(self.options.py_spy, self.shim.pid, name.split()[0]),
            self.counting() as usage,
        ):
            times_of = interleaved_calls({"trustd": mine, "direct": theirs}, count)
            elapsed = time.monotonic() - started
        trustd = Summary.of(times_of["trustd"])
        direct = Summary.of(times_of["direct"])
        if budget_ms is not None:
            self.report.add(
                Row(
                    name,
                    f"{latency(trustd)} ({usage.cpu_per(count)})",
                    f"{latency(direct)} direct",
                    f"{delta(trustd.p50, direct.p50)} p50 "
                    f"({times(ratio(trustd.p50, direct.p50))}), "
                    f"{delta(trustd.p99, direct.p99)} p99",
                    f"<= +{budget_ms:g} ms p50",
                    trustd.p50 - direct.p50 <= budget_ms,
                    per(usage.requests, count, "call"),
                )
            )
        return trustd, direct, usage, elapsed

    def status_in_window(self, image: str) -> None:
        """ImageStatus repeated on one tag: all but one call per window answered from memory."""
        assert self.direct.status(image).HasField("image"), image
        assert self.trustd.status(image).HasField("image"), image
        trustd, direct, usage, elapsed = self.compare_calls(
            "ImageStatus, inside the window",
            lambda: self.trustd.status(image),
            lambda: self.direct.status(image),
            budget_ms=None,
        )
        # One refresh per window at most, plus the one the phase may start inside.
        allowed = 1 + (math.ceil(elapsed / self.window) if self.window > 0 else self.options.calls)
        self.report.add(
            Row(
                f"ImageStatus, inside the window ({trustd.count} calls, {elapsed:.1f}s)",
                f"{latency(trustd)} ({usage.cpu_per(trustd.count)})",
                f"{latency(direct)} direct",
                f"{times(ratio(trustd.p50, direct.p50))} p50 ({delta(trustd.p50, direct.p50)})",
                f"<= 1 Notary request per {self.window:g}s",
                sum(usage.requests.values()) <= allowed,
                per(usage.requests, trustd.count, "call"),
            )
        )

    # -- passthrough --

    def top_up_images(self) -> int:
        present = len(self.direct.list_images().images)
        missing = self.options.min_images + 5 - present
        if missing > 0:
            log(f"{present} images in containerd; pushing and pulling {missing} more (direct)")
            tags = [f"f{index:04d}" for index in range(missing)]
            filler = push_many(self.stack, "bench/filler", tags, prefix="filler")
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda image: self.direct.pull(image.by_digest), filler))
            present = len(self.direct.list_images().images)
        return present

    def passthrough(self) -> None:
        images = self.top_up_images()
        self.compare_calls(
            f"ListImages ({images} images)",
            self.trustd.list_images,
            self.direct.list_images,
            budget_ms=0.3,
        )
        self.compare_calls("ImageFsInfo", self.trustd.fs_info, self.direct.fs_info, budget_ms=0.3)
        self.relay_floor()

    def relay_floor(self) -> None:
        """ImageFsInfo through a bare Python gRPC relay (bench/relay.py), trustd and direct
        containerd, interleaved: how much of the passthrough overhead any Python hop costs."""
        directory = self.config_path.parent
        relay = ShimProcess(
            "relay",
            self.config_path,
            directory / "relay.sock",
            directory / "relay.log",
            upstream=self.stack.containerd.endpoint,
        )
        client: Cri | None = None
        try:
            relay.wait_ready()
            client = Cri(directory / "relay.sock")
            count = self.options.calls
            log(f"ImageFsInfo through a bare Python relay: {count} calls per path, interleaved")
            cpu = relay.cpu_seconds()
            paths = {
                "relay": client.fs_info,
                "trustd": self.trustd.fs_info,
                "direct": self.direct.fs_info,
            }
            times_of = interleaved_calls(paths, count)
            relay_cpu_ms = (relay.cpu_seconds() - cpu) * 1000.0 / count
        finally:
            if client is not None:
                client.close()
            relay.stop()
        floor, trustd, direct = (Summary.of(times_of[name]) for name in times_of)
        self.report.add(
            Row(
                "ImageFsInfo, bare Python gRPC relay (the floor of a Python hop)",
                f"{latency(floor)} (CPU {relay_cpu_ms:.2f} ms)",
                f"{latency(direct)} direct",
                f"{delta(floor.p50, direct.p50)} p50; trustd {delta(trustd.p50, direct.p50)} "
                "in the same calls",
                "",
                None,
                "",
            )
        )

    # -- Notary at cluster scale --

    def notary_capacity(self, signed: SignedRef) -> None:
        """notary-server's timestamp endpoint under a bounded concurrent loop from this machine."""
        options = self.options
        url = f"{self.stack.notary_server.url}/v2/{signed.gun}/_trust/tuf/timestamp.json"
        connections = options.load_processes * options.load_threads
        log(
            f"notary-server under load: {connections} keep-alive connections "
            f"({options.load_processes} processes), {options.load_seconds:g}s of timestamp GETs"
        )
        capacity = measure_capacity(
            url,
            self.stack.notary_server.ca_file,
            processes=options.load_processes,
            threads=options.load_threads,
            seconds=options.load_seconds,
            max_requests=200_000,
            cwd=REPO_ROOT,
        )
        self.capacity_per_second = capacity.per_second
        p50 = percentile(capacity.latencies_ms, 0.5)
        p99 = percentile(capacity.latencies_ms, 0.99)
        self.report.add(
            Row(
                f"notary-server timestamp.json, {connections} connections for "
                f"{options.load_seconds:g}s",
                f"{capacity.per_second:.0f} req/s ({capacity.errors} errors)",
                f"p50 {ms(p50)} / p99 {ms(p99)} per request",
                "",
                "",
                None,
                "",
            )
        )

    def cluster_model(self) -> None:
        """What the measured figures mean for N nodes against one notary-server."""
        per_start = self.requests_per_start
        capacity = self.capacity_per_second
        if math.isnan(per_start) or math.isnan(capacity) or capacity <= 0:
            return
        nodes, churn, rollout = 5000, 10, 10.0
        steady = nodes * churn * per_start / 60.0
        burst = nodes * per_start / rollout
        self.report.note(
            f"Cluster model (bench/README.md): R = {per_start:.2f} Notary request per container "
            f"start (counted above), S = {capacity:.0f} timestamp requests/s answered by one "
            f"notary-server here (a lower bound: the load generator shares its cores). Per node "
            f"R x starts per minute: {churn * per_start:.0f} requests/min at {churn} starts/min. "
            f"{nodes} nodes at {churn} starts/min: {steady:.0f} req/s ({steady / capacity:.2f} S); "
            f"a rollout starting one pod on each of {nodes} nodes within {rollout:g}s: "
            f"{burst:.0f} req/s ({burst / capacity:.2f} S; {3 * nodes / rollout:.0f} req/s "
            f"with 3 requests per start, as with freshness_window 0)."
        )

    # -- containerd 2.x's image verifier --

    def image_verifier(
        self, workdir: Path, image: PushedImage, config_arguments: dict[str, Any]
    ) -> None:
        """The installed verifier file per judgement, with the daemon and without one
        (``config_arguments``: the daemon's, for a config naming a socket nobody serves)."""
        no_daemon_config = write_config(
            workdir / "trustd-no-daemon.toml",
            **{**config_arguments, "verifier_socket": workdir / "stopped.sock"},
        )
        log(
            f"image verifier: {self.options.verifier_runs} runs asking the daemon, "
            f"{self.options.verifier_cold_runs} without one"
        )
        measured = measure_verifier(
            workdir,
            self.config_path,
            no_daemon_config,
            image,
            self.options.verifier_runs,
            self.options.verifier_cold_runs,
        )
        floor = f"p50 {ms(measured.floor.p50)} `python -IS` doing nothing"
        self.report.add(
            Row(
                f"image verifier per pull, daemon running (of {measured.daemon.count})",
                latency(measured.daemon),
                floor,
                f"+{measured.daemon.p50 - measured.floor.p50:.1f} ms over the floor",
                f"<= {VERIFIER_TARGET_MS:g} ms p50",
                measured.daemon.p50 <= VERIFIER_TARGET_MS,
            )
        )
        self.report.add(
            Row(
                f"image verifier per pull, no daemon (of {measured.no_daemon.count})",
                latency(measured.no_daemon),
                f"p50 {ms(measured.daemon.p50)} with the daemon",
                times(ratio(measured.no_daemon.p50, measured.daemon.p50)),
                "",
                None,
            )
        )

    # -- resolution --

    def resolution(self, workdir: Path, signed: SignedRef) -> None:
        # freshness_window 0: these rows measure what a refresh costs, not the window.
        config = _without_window(load_config(self.config_path))
        registry = signed.gun.split("/", 1)[0]
        publisher = self.stack.publisher

        publisher.lookup(signed.gun, signed.tag)  # warm-up, untimed
        cli_times: list[float] = []
        for _ in range(self.options.cli_runs):
            cli_times.append(timed(lambda: publisher.lookup(signed.gun, signed.tag)))
        cli = Summary.of(cli_times)
        cli_text = f"{ms(cli.p50)} `notary lookup`"

        engine = TrustEngine(config, workdir / "resolve-state")
        try:
            log(f"resolution, warm: {self.options.resolve_warm} lookups of {signed.tagged}")
            result = resolve_tag(engine.repository(registry, signed.gun), signed.tag)
            assert result.digest == signed.digest, (result.digest, signed.digest)
            warm = Summary.of(
                [
                    timed(lambda: resolve_tag(engine.repository(registry, signed.gun), signed.tag))
                    for _ in range(self.options.resolve_warm)
                ]
            )
            self.report.add(
                Row(
                    "resolve tag, timestamp fetched and unchanged",
                    latency(warm),
                    cli_text,
                    times(ratio(warm.p50, cli.p50)),
                    "<= 3 ms p50",
                    warm.p50 <= 3.0,
                )
            )

            log(f"resolution after a re-sign: {self.options.resolve_resign} re-signs")
            resign_times: list[float] = []
            for index in range(self.options.resolve_resign):
                manifest = fake_manifest(f"resign-{index}")
                publisher.add(signed.gun, signed.tag, manifest, publish=True)
                started = time.perf_counter()
                result = resolve_tag(engine.repository(registry, signed.gun), signed.tag)
                resign_times.append(time.perf_counter() - started)
                assert result.size == len(manifest), "the re-signed target was not seen"
            resign = Summary.of(resign_times)
            self.report.add(
                Row(
                    f"resolve tag after re-sign (median of {resign.count})",
                    latency(resign),
                    cli_text,
                    times(ratio(resign.p50, cli.p50)),
                    "",
                    None,
                )
            )
        finally:
            engine.close()

        log(f"resolution, cold: {self.options.resolve_cold} new engines and state dirs")
        cold_times: list[float] = []
        for index in range(self.options.resolve_cold):
            state = workdir / f"cold-state-{index}"
            started = time.perf_counter()
            cold_engine = TrustEngine(config, state)
            try:
                resolve_tag(cold_engine.repository(registry, signed.gun), signed.tag)
            finally:
                cold_engine.close()
            cold_times.append(time.perf_counter() - started)
            shutil.rmtree(state, ignore_errors=True)
        cold = Summary.of(cold_times)
        self.report.add(
            Row(
                f"resolve tag, cold (median of {cold.count})",
                latency(cold),
                cli_text,
                times(ratio(cold.p50, cli.p50)),
                "",
                None,
            )
        )
        self.trustctl(workdir, signed, cli)

    def trustctl(self, workdir: Path, signed: SignedRef, cli: Summary) -> None:
        """``trustctl verify`` as a whole process in a node's venv, warm cache, bytecode compiled:
        asking the daemon (the program's default) and ``--local``, beside the venv's floor."""
        runs = self.options.cli_runs
        log(f"trustctl verify: {runs} runs each asking the daemon, --local, and python -c pass")
        with self.counting() as usage:
            measured = measure_trustctl(workdir, self.config_path, signed.tagged, runs)
        floor = f"p50 {ms(measured.floor.p50)} `python -c pass` (venv)"
        self.report.add(
            Row(
                f"`trustctl verify` process asking the daemon, warm cache (of {runs})",
                latency(measured.daemon),
                f"{floor}; {ms(cli.p50)} `notary lookup`",
                f"+{measured.daemon.p50 - measured.floor.p50:.1f} ms over the floor",
                f"<= {TRUSTCTL_TARGET_MS:g} ms p50",
                measured.daemon.p50 <= TRUSTCTL_TARGET_MS,
                # Interleaved runs: the server cannot tell the two rows' requests apart.
                f"{describe(usage.requests)} in both rows",
            )
        )
        self.report.add(
            Row(
                f"`trustctl verify --local` process (in-process), warm cache (of {runs})",
                latency(measured.local),
                f"p50 {ms(measured.daemon.p50)} asking the daemon; {floor}",
                times(ratio(measured.local.p50, measured.daemon.p50)),
                "",
                None,
            )
        )

    # -- memory --

    def memory(self, refs: list[SignedRef], at_start: Memory) -> None:
        total = self.options.resolutions
        log(f"RSS: {total} resolutions (ImageStatus through the shim) over {len(refs)} GUNs")
        before = self.shim.memory()
        with py_spy(self.options.py_spy, self.shim.pid, "resolutions"):
            for index in range(total):
                self.trustd.status(refs[index % len(refs)].tagged)
        after = self.shim.memory()
        self.report.add(
            Row(
                f"shim RSS after {total} resolutions / {len(refs)} GUNs",
                f"{after.rss_mib:.1f} MiB",
                f"{at_start.rss_mib:.1f} MiB at start, {before.rss_mib:.1f} MiB before",
                f"peak {after.peak_rss_mib:.1f} MiB",
                "<= 80 MB",
                after.rss_mib * 1.048576 <= 80.0,
            )
        )


def _without_window(config: Config) -> Config:
    return dataclasses.replace(
        config, server=dataclasses.replace(config.server, freshness_window=0.0)
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="trustd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    log(f"work dir {workdir}; starting the real stack")
    # notary-server at log level info and docker-registry's access log: one line per request,
    # counted per phase.
    stack = Stack.start(workdir / "stack", notary_log_level="info", registry_access_log=True)
    shim: ShimProcess | None = None
    clients: list[Cri] = []
    report = Report()
    try:
        registry = stack.registry.host
        per_round = options.parallel
        log("pushing and signing the images (nothing is timed yet)")
        signed_sets = signed_samples(stack, "bench/sample", options.pulls, ("pull", "start"))
        direct_tags = [f"{kind}-{index:02d}" for index in range(options.pulls) for kind in "ps"]
        direct_images = push_many(stack, "bench/direct", direct_tags, prefix="direct")
        pull_samples = [
            Sample(images["pull"], direct_images[2 * index])
            for index, images in enumerate(signed_sets)
        ]
        start_samples = [
            Sample(images["start"], direct_images[2 * index + 1])
            for index, images in enumerate(signed_sets)
        ]
        parallel_tags = [f"r{index:04d}" for index in range(options.rounds * per_round * 2 + 2)]
        parallel_images = push_many(stack, "bench/parallel", parallel_tags, prefix="parallel")
        sign_images(stack, parallel_images)
        guns = [f"{registry}/bench/rss-{index:03d}" for index in range(options.repositories)]
        rss_refs = signed_repositories(stack, guns, "v1")
        log("signing with notation and cosign (the real programs)")
        verification = prepare(stack, workdir / "signers", options.pulls + 1)
        log(f"fixtures ready after {time.monotonic() - started:.1f}s")

        config_arguments: dict[str, Any] = {
            "socket": workdir / "trustd.sock",
            "containerd_endpoint": stack.containerd.endpoint,
            "state_dir": workdir / "trustd-state",
            "audit_file": workdir / "audit.log",
            "registry": registry,
            "notary_url": stack.notary_server.url,
            "notary_ca": stack.notary_server.ca_file,
            "verifier_socket": workdir / "verify.sock",
            "freshness_window": options.freshness_window,
            "extra": verification.config,
        }
        config_path = write_config(workdir / "trustd.toml", **config_arguments)
        window = load_config(config_path).server.freshness_window
        shim = ShimProcess(options.shim, config_path, workdir / "trustd.sock", workdir / "shim.log")
        shim.wait_ready()
        at_start = shim.memory()
        log(f"shim ({options.shim}) serving, pid {shim.pid}, RSS {at_start.rss_mib:.1f} MiB")
        trustd = Cri(workdir / "trustd.sock")
        direct = Cri(stack.containerd.endpoint)
        clients = [trustd, direct]
        notary = NotaryRequests(stack.notary_server.log_path)
        bench = Bench(
            options,
            stack,
            shim,
            trustd,
            direct,
            config_path,
            report,
            notary,
            window,
            RegistryRequests(stack.registry.log_path),
        )

        # Warm-up, untimed: channels on both paths, and trustd's first contact with each GUN
        # (root, snapshot, targets; the images themselves stay unpulled).
        trustd.pull(parallel_images[0].tagged)
        direct.pull(parallel_images[1].tagged)
        for sample in pull_samples:
            assert not trustd.status(sample.trustd.tagged).HasField("image")

        bench.sequential_pulls(pull_samples)
        remaining = parallel_images[2:]
        rounds = []
        for index in range(options.rounds):
            chunk = remaining[index * per_round * 2 : (index + 1) * per_round * 2]
            rounds.append((chunk[0::2], chunk[1::2]))
        bench.parallel_pulls(rounds)
        bench.container_starts(start_samples)
        bench.first_status(pull_samples)
        bench.status_in_window(pull_samples[0].trustd.tagged)
        bench.passthrough()
        bench.image_verifier(workdir, pull_samples[0].trustd, config_arguments)
        signed = SignedRef(pull_samples[0].trustd.repository, "resolve", "")
        first = fake_manifest("resolve-initial")
        stack.publisher.add(signed.gun, signed.tag, first, publish=True)
        signed = SignedRef(signed.gun, signed.tag, "sha256:" + _sha256(first))
        bench.resolution(workdir, signed)
        bench.memory(rss_refs, at_start)
        # After the RSS row, which measures Notary v1 lookups: these pulls keep their own
        # registry connections and verification caches.
        bench.verified_pulls(verification.formats, verification.direct)
        # Last: the load loop would disturb whatever ran right after it.
        bench.notary_capacity(signed)
        bench.cluster_model()
    finally:
        for client in clients:
            client.close()
        if shim is not None:
            shim.stop()
        stack.stop()
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    shim_text = "`trustd serve --config FILE`" if options.shim == "daemon" else "bench/host.py"
    window_text = f"freshness_window {window:g}s" + (
        "" if options.freshness_window is not None else " (default)"
    )
    heading = (
        f"trustd ({options.shim}: {shim_text}, {window_text}) vs containerd "
        f"{_containerd_version()}, one run, {elapsed:.0f}s in all; {os.cpu_count()} cores; "
        f"load average {load} (1/5/15 min, at the end; {_BENCH_LOAD})"
    )
    print()
    print(heading)
    print(report.table())
    for note in report.notes:
        print(note)
    if options.markdown:
        write_markdown(heading, report)
    return 0


def write_markdown(heading: str, report: Report) -> None:
    """This run's figures into README.md (a table) and bench/README.md (the printed output)."""
    date = time.strftime("%Y-%m-%d")
    notes = "\n\n".join(report.notes)
    markdown.update_block(
        REPO_ROOT / "README.md",
        "table",
        f"{date}: {heading}\n\n{report.markdown_table()}\n\n{notes}",
    )
    markdown.update_block(
        REPO_ROOT / "bench" / "README.md",
        "results",
        f"{date}:\n\n```\n{heading}\n{report.table()}\n{notes}\n```",
    )
    log("wrote the results into README.md and bench/README.md")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _containerd_version() -> str:
    try:
        output = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.split()
    except OSError:
        return "?"
    return output[2] if len(output) > 2 else "?"
