import json
from pathlib import Path

import pytest

from tests.unit import notary_factory as f
from trustd.errors import BadMetadata, HashMismatch, UnsupportedKey
from trustd.formats.notary.metadata import FileMeta, parse, parse_rfc3339

FIXTURES = Path(__file__).parent.parent / "data" / "notary"


@pytest.mark.parametrize("role", ["root", "timestamp", "snapshot", "targets", "targets/releases"])
def test_real_fixtures_parse(role: str) -> None:
    _, metadata = parse((FIXTURES / f"{role}.json").read_bytes(), role, "gun")
    assert metadata.version >= 1
    assert metadata.expires.tzinfo is not None


def test_nanosecond_expiry_and_offsets() -> None:
    moment = parse_rfc3339("2036-11-19T14:58:10.383277043Z")
    assert moment.microsecond == 383277
    assert parse_rfc3339("2036-11-19T15:58:10+01:00") == parse_rfc3339("2036-11-19T14:58:10Z")
    with pytest.raises(ValueError):
        parse_rfc3339("2036-11-19 14:58:10")


def _signed_targets(**changes: object) -> bytes:
    signed = json.loads(f.Repo().targets({"a": b"x"}))["signed"]
    signed.update(changes)
    return json.dumps({"signed": signed, "signatures": []}).encode()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "top level"),
        (b'{"signed": {}, "signatures": {}}', "'signatures' is not a list"),
        (b'{"signed": {"a": 1, "a": 2}, "signatures": []}', "duplicate key"),
        (b'{"signed": {"v": 1.5}, "signatures": []}', "not valid JSON"),
        (b'{"signed": {}, "signatures": [{"keyid": "k", "method": "m", "sig": "!"}]}', "sig"),
        (_signed_targets(_type="Root"), "_type is 'Root'"),
        (_signed_targets(version="1"), "'version' is not an integer"),
        (_signed_targets(version=True), "'version' is not an integer"),
        (_signed_targets(expires="tomorrow"), "expires"),
        (_signed_targets(targets={"a": {"length": 1, "hashes": {}}}), "neither sha256"),
        (_signed_targets(targets={"a": {"length": -1, "hashes": {}}}), "negative"),
        (_signed_targets(targets=[]), "'targets' is not an object"),
        (_signed_targets(delegations={"roles": [{"name": "other/x"}]}), "not a role directly"),
    ],
)
def test_malformed_input_is_bad_metadata_naming_the_field(data: bytes, fragment: str) -> None:
    with pytest.raises(BadMetadata, match=fragment):
        parse(data, "targets", "gun")


def test_malformed_root_and_timestamp() -> None:
    repo = f.Repo()
    root = json.loads(repo.root())
    del root["signed"]["roles"]["snapshot"]
    with pytest.raises(BadMetadata, match="no 'snapshot' role"):
        parse(json.dumps(root).encode(), "root")
    timestamp = json.loads(repo.timestamp(b"x"))
    timestamp["signed"]["meta"] = {}
    with pytest.raises(BadMetadata, match="'snapshot' entry"):
        parse(json.dumps(timestamp).encode(), "timestamp")


def test_unknown_key_type_in_root() -> None:
    root = json.loads(f.Repo().root())
    key_id = next(iter(root["signed"]["keys"]))
    root["signed"]["keys"][key_id]["keytype"] = "dsa"
    with pytest.raises(UnsupportedKey, match="'dsa'"):
        parse(json.dumps(root).encode(), "root")


def test_file_meta_checks_length_and_every_hash() -> None:
    meta = json.loads(f.Repo().timestamp(b"snapshot bytes"))["signed"]["meta"]["snapshot"]
    _, timestamp = parse(f.Repo().timestamp(b"snapshot bytes"), "timestamp")
    expected: FileMeta = timestamp.snapshot_meta
    assert expected.length == meta["length"]
    expected.check(b"snapshot bytes")
    with pytest.raises(HashMismatch, match="length"):
        expected.check(b"snapshot byte")
    with pytest.raises(HashMismatch, match="sha256"):
        expected.check(b"snapshot BYTES", "snapshot.json", "gun")
