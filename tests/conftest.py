"""Session fixtures for the real stack; each starts only the programs it needs."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.peers import require_peer
from tests.stack import (
    Containerd,
    MissingProgram,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    StackError,
    TestPKI,
)
from tests.stack.crane_registry import CraneRegistry
from tests.stack.images import PushTarget
from tests.stack.images import push_image as push_image_into

_TESTS_DIR = Path(__file__).parent
# Tests that run real programs: the stack (e2e, attacks), or pip and systemd-analyze (node).
# ``-m "not e2e"`` leaves the fast, pure tests of tests/unit.
_E2E_DIRS = (_TESTS_DIR / "e2e", _TESTS_DIR / "attacks", _TESTS_DIR / "node")
_stack_workdir: Path | None = None
T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(directory) for directory in _E2E_DIRS):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _stack_workdir is not None:
        report.sections.append(
            ("real stack", f"work dir with the programs' logs: {_stack_workdir}")
        )
    return report


def _part(start: Callable[[], T], what: str) -> T:
    """Start one part; a missing Debian program fails (never skips) the test."""
    try:
        return start()
    except MissingProgram as error:
        message = f"{what}: {error}"
    except StackError as error:
        message = f"{what} did not start: {error}"
    # Outside the except block, so the report shows the message rather than a chained traceback.
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's stack; nothing runs until a test uses a part of it."""
    global _stack_workdir
    workdir = tmp_path_factory.mktemp("stack")
    _stack_workdir = workdir
    session_stack = Stack(workdir)
    yield session_stack
    session_stack.stop()


@pytest.fixture(scope="session")
def pki(stack: Stack) -> TestPKI:
    return stack.pki


@pytest.fixture(scope="session")
def registry(stack: Stack) -> Registry:
    return _part(lambda: stack.registry, "docker-registry")


@pytest.fixture(scope="session")
def notary_server(stack: Stack) -> NotaryServer:
    return _part(lambda: stack.notary_server, "notary-server")


@pytest.fixture(scope="session")
def notary(stack: Stack) -> NotaryPublisher:
    return _part(lambda: stack.publisher, "notary CLI")


@pytest.fixture(scope="session")
def containerd(stack: Stack) -> Containerd:
    return _part(lambda: stack.containerd, "containerd")


@pytest.fixture(scope="session")
def push_image(stack: Stack, registry: Registry) -> Callable[..., PushedImage]:
    """``push_image(repo, tag, seed=None) -> PushedImage`` into the session registry."""

    def push(repo: str, tag: str, seed: str | int | None = None) -> PushedImage:
        return _part(lambda: stack.push_image(repo, tag, seed=seed), "skopeo push")

    return push


@pytest.fixture(scope="session")
def referrers_registry(stack: Stack) -> Iterator[CraneRegistry]:
    """go-containerregistry's registry with the OCI referrers API, on 127.0.0.1 (plain HTTP).

    Skips only when the ``referrers-registry`` peer could not be built here.
    """
    program = require_peer("referrers-registry")
    registry = _part(
        lambda: CraneRegistry.start(stack.workdir / "referrers-registry", program),
        "referrers-registry",
    )
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def push_image_to(stack: Stack) -> Callable[..., PushedImage]:
    """``push_image_to(target, repo, tag, seed=None) -> PushedImage``, into any registry fixture
    (``registry``, ``referrers_registry`` ...)."""

    def push(target: PushTarget, repo: str, tag: str, seed: str | int | None = None) -> PushedImage:
        return _part(
            lambda: push_image_into(target, repo, tag, seed=seed, workdir=stack.workdir / "images"),
            "skopeo push",
        )

    return push
