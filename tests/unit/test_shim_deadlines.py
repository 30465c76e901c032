"""The deadline a CRI call is served under: the caller's, or ``server.pull_timeout``."""

from __future__ import annotations

import pytest

from cri_shim.server import _CallDeadline


class Context:
    """What the shim asks of a grpc ServicerContext here: the time the caller left it."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("caller", "limit", "expected"),
    [
        (None, 600.0, 600.0),  # kubelet's PullImage: no deadline of its own
        (10.0**9, 600.0, 600.0),  # how grpc reports "no deadline"
        (5.0, 600.0, 5.0),  # the caller's, when sooner
        (900.0, 600.0, 600.0),  # the limit, when sooner
        (5.0, None, 5.0),
        (None, None, None),
    ],
)
def test_a_call_is_served_under_the_sooner_of_its_deadline_and_the_limit(
    caller: float | None, limit: float | None, expected: float | None
) -> None:
    left = _CallDeadline(Context(caller), limit).left()  # type: ignore[arg-type]
    if expected is None:
        assert left is None
    else:
        assert left is not None and expected - 5.0 < left <= expected
