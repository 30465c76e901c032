"""Latency samples: taking them (interleaved across paths), and small statistics over them
(seconds in, milliseconds out)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def timed(call: Callable[[], object]) -> float:
    """Seconds ``call`` took."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def interleaved_calls(
    paths: Mapping[str, Callable[[], object]], count: int, *, warm: int = 5
) -> dict[str, list[float]]:
    """``count`` timed calls of each path after ``warm`` untimed ones (channels and caches warm),
    interleaved as in ``interleaved_series``."""
    for call in paths.values():
        for _ in range(warm):
            call()
    return interleaved_series({name: [call] * count for name, call in paths.items()})


def interleaved_series(
    series: Mapping[str, Sequence[Callable[[], object]]],
) -> dict[str, list[float]]:
    """Round ``i`` times the ``i``-th call of every path, the paths taking turns and the first
    of each round rotating, so that drift on the machine hits all alike and none always goes
    first. As many rounds as the shortest path has calls."""
    names = list(series)
    rounds = min((len(calls) for calls in series.values()), default=0)
    times_of: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            times_of[name].append(timed(series[name][index]))
    return times_of


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of ``values`` (``fraction`` in [0, 1])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Latency figures of one series, in milliseconds."""

    count: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        millis = [value * 1000.0 for value in seconds]
        mean = sum(millis) / len(millis) if millis else math.nan
        return cls(len(millis), percentile(millis, 0.5), percentile(millis, 0.99), mean)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.inf
