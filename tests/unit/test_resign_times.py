"""Times in re-signed metadata are written as notary's Go code writes them (RFC 3339, the
fraction of a second without trailing zeros): notary-server's snapshot lists the hashes of its
own encoding of a published file, so any other spelling of the same moment breaks the repository.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.attacks import resign
from trustd.formats.notary.metadata import parse_rfc3339


@pytest.mark.parametrize(
    ("microsecond", "written"),
    [
        (0, "2036-11-19T14:58:10Z"),
        (250000, "2036-11-19T14:58:10.25Z"),
        (100, "2036-11-19T14:58:10.0001Z"),
        (123450, "2036-11-19T14:58:10.12345Z"),
        (123456, "2036-11-19T14:58:10.123456Z"),
    ],
)
def test_fraction_without_trailing_zeros(microsecond: int, written: str) -> None:
    moment = datetime(2036, 11, 19, 14, 58, 10, microsecond, tzinfo=UTC)
    assert resign.rfc3339(moment) == written
    assert parse_rfc3339(written) == moment


def test_other_offsets_are_written_in_utc() -> None:
    moment = datetime(2036, 11, 19, 15, 58, 10, 500000, tzinfo=timezone(timedelta(hours=1)))
    assert resign.rfc3339(moment) == "2036-11-19T14:58:10.5Z"
