"""Work the shim does behind an answer: tag writes (TagWriter), lookups ahead of a pull
(Lookahead)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from cri_shim.server import Lookahead, TagWriter
from trustd.policy.engine import Action


class _Failure(grpc.RpcError):
    def __str__(self) -> str:
        return "containerd said no"


class _Unavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What grpc raises while containerd is restarting (only code() is asked for)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        return "failed to connect to all addresses"


class RecordingContainerd:
    """Records tag writes; the first may be held until the test lets it go."""

    def __init__(self, fail_for: str | None = None) -> None:
        self.written: list[tuple[str, str]] = []
        self.written_at: list[float] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_for = fail_for
        self.unavailable_for = 0  # the first this many writes find containerd down

    def tag_image(self, tag_ref: str, source_ref: str, timeout: float | None) -> None:
        assert timeout is not None and timeout > 0
        self.release.wait(10)
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            raise _Unavailable()
        if tag_ref == self.fail_for:
            raise _Failure()
        self.written.append((tag_ref, source_ref))
        self.written_at.append(time.monotonic())


def test_tags_are_written_in_the_order_the_pulls_finished() -> None:
    containerd = RecordingContainerd()
    containerd.release.clear()  # hold the first write, so the others queue behind it
    writer = TagWriter(containerd)  # type: ignore[arg-type]
    writer.submit("reg/app:1", "reg/app@sha256:aa")
    writer.submit("reg/app:1", "reg/app@sha256:bb")
    writer.submit("reg/other:2", "reg/other@sha256:cc")
    assert containerd.written == []
    containerd.release.set()
    writer.drain()
    # A tag re-pointed by a later pull ends on the later digest.
    assert containerd.written == [
        ("reg/app:1", "reg/app@sha256:aa"),
        ("reg/app:1", "reg/app@sha256:bb"),
        ("reg/other:2", "reg/other@sha256:cc"),
    ]
    writer.close()


def test_a_tag_is_written_after_the_calls_that_follow_its_pull() -> None:
    """Each write waits its delay from its own pull (kubelet's next ImageStatus comes first);
    writes queued behind a slow one do not add their delays up."""
    containerd = RecordingContainerd()
    writer = TagWriter(containerd, delay=0.5)  # type: ignore[arg-type]
    submitted = time.monotonic()
    for number in range(3):
        writer.submit(f"reg/app:{number}", f"reg/app@sha256:{number}")
    writer.drain()
    writer.close()
    assert len(containerd.written_at) == 3
    assert all(at >= submitted + 0.5 for at in containerd.written_at)
    # Not 3 x 0.5 s one after the other: the three were due together.
    assert containerd.written_at[-1] - containerd.written_at[0] < 0.5


def test_close_writes_what_is_queued() -> None:
    containerd = RecordingContainerd()
    containerd.release.clear()
    writer = TagWriter(containerd)  # type: ignore[arg-type]
    for number in range(5):
        writer.submit(f"reg/app:{number}", f"reg/app@sha256:{number}")
    threading.Timer(0.05, containerd.release.set).start()
    writer.close()
    assert [tag for tag, _ in containerd.written] == [f"reg/app:{n}" for n in range(5)]


def test_a_failed_write_is_logged_and_the_next_still_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    containerd = RecordingContainerd(fail_for="reg/app:bad")
    writer = TagWriter(containerd)  # type: ignore[arg-type]
    writer.submit("reg/app:bad", "reg/app@sha256:aa")
    writer.submit("reg/app:good", "reg/app@sha256:bb")
    writer.close()
    assert containerd.written == [("reg/app:good", "reg/app@sha256:bb")]
    assert "could not point reg/app:bad at reg/app@sha256:aa" in caplog.text
    assert "containerd said no" in caplog.text


def test_a_write_waits_for_containerd_to_come_back() -> None:
    containerd = RecordingContainerd()
    containerd.unavailable_for = 3
    writer = TagWriter(containerd, delay=0.0)  # type: ignore[arg-type]
    writer.submit("reg/app:1", "reg/app@sha256:aa")
    writer.submit("reg/app:2", "reg/app@sha256:bb")
    writer.drain()
    assert containerd.written == [
        ("reg/app:1", "reg/app@sha256:aa"),
        ("reg/app:2", "reg/app@sha256:bb"),
    ]
    writer.close()


def test_a_write_gives_up_when_containerd_stays_away_or_trustd_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    containerd = RecordingContainerd()
    containerd.unavailable_for = 1000
    writer = TagWriter(containerd, timeout=0.5, delay=0.0)  # type: ignore[arg-type]
    writer.submit("reg/app:1", "reg/app@sha256:aa")
    writer.drain()
    assert containerd.written == []
    assert "could not point reg/app:1 at reg/app@sha256:aa" in caplog.text
    # Stopping does not sit out the retries of a containerd that is down.
    writer = TagWriter(containerd, timeout=600, delay=0.0)  # type: ignore[arg-type]
    writer.submit("reg/app:2", "reg/app@sha256:bb")
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 300
    assert containerd.written == []


class HeldAdmission:
    """Records the images it is asked about; holds every answer until released."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Action]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def decide(
        self, image: str, credentials: object, action: Action, timeout: float | None
    ) -> None:
        assert credentials is None and timeout is not None and timeout > 0
        with self._lock:
            self.asked.append((image, action))
        self.release.wait(10)


def test_lookahead_decides_behind_the_answer_and_is_bounded() -> None:
    admission = HeldAdmission()
    lookahead = Lookahead(admission, limit=3)  # type: ignore[arg-type]
    for number in range(5):
        lookahead.submit(f"reg/app:{number}")
    admission.release.set()
    lookahead.drain()
    # Three were pending when the fourth and fifth came: those two were skipped (their pulls
    # make their own lookups), never queued without end.
    assert sorted(admission.asked) == [(f"reg/app:{n}", Action.STATUS) for n in range(3)]
    lookahead.submit("reg/app:later")  # room again once the first ones finished
    lookahead.drain()
    assert ("reg/app:later", Action.STATUS) in admission.asked
    lookahead.close()
    lookahead.submit("reg/app:closed")  # after close: skipped, no error
    assert ("reg/app:closed", Action.STATUS) not in admission.asked
