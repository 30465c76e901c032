"""Fixtures of the attack tests: a tampering Notary in front of the real one, and its keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.attacks import resign
from tests.attacks.harness import TamperServer, tamper_server
from tests.stack import NotaryPublisher, NotaryServer, TestPKI


@pytest.fixture
def tamper(notary_server: NotaryServer, pki: TestPKI) -> Iterator[TamperServer]:
    with tamper_server(notary_server, pki) as server:
        yield server


@pytest.fixture
def keys(notary: NotaryPublisher) -> resign.CLIKeys:
    return resign.CLIKeys(notary)
