"""``python3 -m bench``: trustd's CRI shim against containerd, side by side, in one run.

Everything is measured against the same containerd, registry and notary-server (tests.stack on
127.0.0.1), with the shim in a process of its own (``trustd serve`` by default). Each pull sample
is an image never pulled before, on either path.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.fixtures import SignedRef, fake_manifest, push_many, sign_images, signed_repositories
from bench.shim import REPO_ROOT, Memory, ShimProcess, write_config
from bench.stats import Summary, ratio
from bench.verifier import TARGET_MS as VERIFIER_TARGET_MS
from bench.verifier import measure_verifier
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.stack import PushedImage, Stack
from trustd.config import load_config
from trustd.notary.client import TrustEngine

RPC_TIMEOUT = 120.0
_TRUSTCTL = (
    "import sys; from trustd.cli import trustctl_main; sys.exit(trustctl_main(sys.argv[1:]))"
)


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
    min_images: int
    repositories: int
    resolutions: int
    resolve_warm: int
    resolve_resign: int
    resolve_cold: int
    cli_runs: int
    verifier_runs: int
    verifier_cold_runs: int
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
    parser.add_argument("--pulls", type=int, default=15, help="sequential pull samples per path")
    parser.add_argument("--calls", type=int, default=300, help="calls per passthrough method")
    parser.add_argument("--parallel", type=int, default=32, help="pulls at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of parallel pulls")
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
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record a py-spy flame graph of the shim process per phase into DIR",
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
        min_images=max(args.min_images, 0),
        repositories=max(args.repositories, 1),
        resolutions=max(args.resolutions, 1),
        resolve_warm=max(args.resolve_warm, 1),
        resolve_resign=max(args.resolve_resign, 1),
        resolve_cold=max(args.resolve_cold, 1),
        cli_runs=max(args.cli_runs, 1),
        verifier_runs=max(args.verifier_runs, 1),
        verifier_cold_runs=max(args.verifier_cold_runs, 1),
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

    @property
    def status(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.what}: {row.trustd} vs {row.reference} ({row.ratio}) {row.status}")

    def table(self) -> str:
        header = Row("measurement", "trustd", "reference", "ratio", "target", None)
        rows = [header, *self.rows]
        columns = ("what", "trustd", "reference", "ratio", "target", "status")
        widths = [max(len(str(getattr(row, name))) for row in rows) for name in columns]
        widths[-1] = max(widths[-1], len("status"))
        lines = []
        for index, row in enumerate(rows):
            texts = [str(getattr(row, name)) for name in columns]
            if index == 0:
                texts[-1] = "status"
            cells = [text.ljust(width) for text, width in zip(texts, widths, strict=True)]
            lines.append(" | ".join(cells).rstrip())
            if index == 0:
                lines.append("-+-".join("-" * width for width in widths))
        return "\n".join(lines)


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def latency(summary: Summary) -> str:
    return f"p50 {ms(summary.p50)} / p99 {ms(summary.p99)}"


def times(value: float) -> str:
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.2f}x"


def delta(mine: float, theirs: float) -> str:
    """The absolute difference of two millisecond figures, signed."""
    return "n/a" if math.isnan(mine) or math.isnan(theirs) else f"{mine - theirs:+.2f} ms"


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

    def list_images(self) -> api_pb2.ListImagesResponse:
        return self.stub.ListImages(api_pb2.ListImagesRequest(), timeout=RPC_TIMEOUT)

    def fs_info(self) -> api_pb2.ImageFsInfoResponse:
        return self.stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=RPC_TIMEOUT)

    def close(self) -> None:
        self.channel.close()


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


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
    output = directory / f"{name}.svg"
    recorder = subprocess.Popen(
        [program, "record", "--pid", str(pid), "--rate", "250", "--output", str(output)],
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
        log(f"py-spy flame graph of {name}: {output}")


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Bench:
    options: Options
    stack: Stack
    shim: ShimProcess
    trustd: Cri
    direct: Cri
    config_path: Path
    report: Report

    # -- pulls --

    def sequential_pulls(
        self, trustd_images: list[PushedImage], direct_images: list[PushedImage]
    ) -> None:
        log(f"sequential pulls: {len(trustd_images)} new images per path, interleaved")
        trustd_times: list[float] = []
        direct_times: list[float] = []
        with py_spy(self.options.py_spy, self.shim.pid, "pull"):
            for index, (mine, theirs) in enumerate(zip(trustd_images, direct_images, strict=True)):
                order = [(self.trustd, mine, trustd_times), (self.direct, theirs, direct_times)]
                if index % 2:
                    order.reverse()
                for client, image, sink in order:
                    sink.append(timed(lambda c=client, i=image: c.pull(i.tagged)))
        trustd = Summary.of(trustd_times)
        direct = Summary.of(direct_times)
        factor = ratio(trustd.p50, direct.p50)
        self.report.add(
            Row(
                f"pull, new signed image (median of {trustd.count})",
                ms(trustd.p50),
                f"{ms(direct.p50)} direct",
                f"{times(factor)} ({delta(trustd.p50, direct.p50)})",
                "<= 1.05x",
                factor <= 1.05,
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
                ms(trustd.p50),
                f"{ms(direct.p50)} direct",
                f"{times(factor)} ({delta(trustd.p50, direct.p50)})",
                "<= 1.05x (as pull)",
                factor <= 1.05,
            )
        )

    # -- passthrough and ImageStatus --

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

    def compare_calls(
        self, name: str, mine: Callable[[], object], theirs: Callable[[], object], note: str = ""
    ) -> None:
        count = self.options.calls
        log(f"{name}: {count} calls per path, interleaved")
        for _ in range(5):  # warm both channels and caches
            mine()
            theirs()
        trustd_times: list[float] = []
        direct_times: list[float] = []
        with py_spy(self.options.py_spy, self.shim.pid, name.split()[0]):
            for index in range(count):
                if index % 2:
                    direct_times.append(timed(theirs))
                    trustd_times.append(timed(mine))
                else:
                    trustd_times.append(timed(mine))
                    direct_times.append(timed(theirs))
        trustd = Summary.of(trustd_times)
        direct = Summary.of(direct_times)
        factor = ratio(trustd.p50, direct.p50)
        self.report.add(
            Row(
                f"{name}{note}",
                latency(trustd),
                f"{latency(direct)} direct",
                f"{times(factor)} p50 ({delta(trustd.p50, direct.p50)}), "
                f"{times(ratio(trustd.p99, direct.p99))} p99",
                "<= 1.2x",
                factor <= 1.2,
            )
        )

    def passthrough(self, status_image: str) -> None:
        images = self.top_up_images()
        # The same reference on both paths: a signed tag trustd pulled and tagged.
        assert self.direct.status(status_image).HasField("image"), status_image
        assert self.trustd.status(status_image).HasField("image"), status_image
        self.compare_calls(
            "ImageStatus (signed tag, re-resolved)",
            lambda: self.trustd.status(status_image),
            lambda: self.direct.status(status_image),
        )
        self.compare_calls(
            "ListImages",
            self.trustd.list_images,
            self.direct.list_images,
            note=f" ({images} images)",
        )
        self.compare_calls("ImageFsInfo", self.trustd.fs_info, self.direct.fs_info)

    # -- resolution --

    def resolution(self, workdir: Path, signed: SignedRef) -> None:
        config = load_config(self.config_path)
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
            result = engine.resolve_tag(registry, signed.gun, signed.tag)
            assert result.digest == signed.digest, (result.digest, signed.digest)
            warm = Summary.of(
                [
                    timed(lambda: engine.resolve_tag(registry, signed.gun, signed.tag))
                    for _ in range(self.options.resolve_warm)
                ]
            )
            self.report.add(
                Row(
                    "resolve tag, warm (timestamp unchanged)",
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
                result = engine.resolve_tag(registry, signed.gun, signed.tag)
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
                cold_engine.resolve_tag(registry, signed.gun, signed.tag)
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

        # The whole-process comparison: trustctl is Python, so start-up dominates.
        state = workdir / "trustctl-state"
        command = [
            sys.executable,
            "-c",
            _TRUSTCTL,
            "verify",
            signed.tagged,
            "--config",
            str(self.config_path),
            "--state-dir",
            str(state),
        ]
        runs = max(self.options.cli_runs // 2, 3)
        process_times = [
            timed(lambda: subprocess.run(command, cwd=REPO_ROOT, capture_output=True, check=True))
            for _ in range(runs + 1)
        ][1:]
        process = Summary.of(process_times)
        self.report.add(
            Row(
                f"`trustctl verify` process, warm cache (median of {process.count})",
                ms(process.p50),
                cli_text,
                times(ratio(process.p50, cli.p50)),
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


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="trustd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    log(f"work dir {workdir}; starting the real stack")
    stack = Stack.start(workdir / "stack")
    shim: ShimProcess | None = None
    clients: list[Cri] = []
    report = Report()
    try:
        registry = stack.registry.host
        per_round = options.parallel
        log("pushing and signing the images (nothing is timed yet)")
        pull_tags = [f"p{index:03d}" for index in range(options.pulls * 2 + 2)]
        pull_images = push_many(stack, "bench/pull", pull_tags, prefix="pull")
        parallel_tags = [f"r{index:04d}" for index in range(options.rounds * per_round * 2 + 2)]
        parallel_images = push_many(stack, "bench/parallel", parallel_tags, prefix="parallel")
        sign_images(stack, [*pull_images, *parallel_images])
        guns = [f"{registry}/bench/rss-{index:03d}" for index in range(options.repositories)]
        rss_refs = signed_repositories(stack, guns, "v1")
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
        }
        config_path = write_config(workdir / "trustd.toml", **config_arguments)
        shim = ShimProcess(options.shim, config_path, workdir / "trustd.sock", workdir / "shim.log")
        shim.wait_ready()
        at_start = shim.memory()
        log(f"shim ({options.shim}) serving, pid {shim.pid}, RSS {at_start.rss_mib:.1f} MiB")
        trustd = Cri(workdir / "trustd.sock")
        direct = Cri(stack.containerd.endpoint)
        clients = [trustd, direct]
        bench = Bench(options, stack, shim, trustd, direct, config_path, report)

        # Warm-up, untimed: channels on both paths, and trustd's first contact with each GUN.
        trustd.pull(pull_images[0].tagged)
        direct.pull(pull_images[1].tagged)
        trustd.pull(parallel_images[0].tagged)
        direct.pull(parallel_images[1].tagged)

        rest = pull_images[2:]
        bench.sequential_pulls(rest[0::2], rest[1::2])
        remaining = parallel_images[2:]
        rounds = []
        for index in range(options.rounds):
            chunk = remaining[index * per_round * 2 : (index + 1) * per_round * 2]
            rounds.append((chunk[0::2], chunk[1::2]))
        bench.parallel_pulls(rounds)
        bench.passthrough(pull_images[0].tagged)
        bench.image_verifier(workdir, pull_images[0], config_arguments)
        signed = SignedRef(pull_images[0].repository, "resolve", "")
        first = fake_manifest("resolve-initial")
        stack.publisher.add(signed.gun, signed.tag, first, publish=True)
        signed = SignedRef(signed.gun, signed.tag, "sha256:" + _sha256(first))
        bench.resolution(workdir, signed)
        bench.memory(rss_refs, at_start)
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
    print()
    print(
        f"trustd ({options.shim}: "
        + ("`trustd serve --config FILE`" if options.shim == "daemon" else "bench/host.py")
        + f") vs containerd {_containerd_version()}, one run, {elapsed:.0f}s in all; "
        f"load average {load} (1/5/15 min, at the end; the bench alone loads 2 cores to about 2-3)"
    )
    print(report.table())
    for note in report.notes:
        print(note)
    return 0


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
