"""Strict parsing of cosign's simple-signing payload."""

from __future__ import annotations

import json

import pytest

from tests.unit.formats import cosign_factory as f
from trustd.formats.cosign.errors import CosignPayloadInvalid
from trustd.formats.cosign.simplesigning import parse_simple_signing


def test_cosign_payload_without_annotations() -> None:
    parsed = parse_simple_signing(f.simple_signing_payload())
    assert parsed.manifest_digest == f.DIGEST
    assert parsed.docker_reference == "127.0.0.1:5000/app"
    assert dict(parsed.optional) == {}
    assert parsed.creator is None and parsed.timestamp is None


def test_optional_claims() -> None:
    payload = f.simple_signing_payload(
        optional={"creator": "containers/image 5.30", "timestamp": 1700000000, "team": ["a"]}
    )
    parsed = parse_simple_signing(payload)
    assert parsed.creator == "containers/image 5.30"
    assert parsed.timestamp == 1700000000
    assert parsed.optional["team"] == ["a"]


def _mutated(change: str) -> bytes:
    document = json.loads(f.simple_signing_payload())
    critical = document["critical"]
    if change == "type-case":
        critical["type"] = "Cosign container image signature"
    elif change == "atomic-type":
        critical["type"] = "atomic container signature"
    elif change == "unknown-critical":
        critical["extra"] = True
    elif change == "unknown-top":
        document["signed-by"] = "me"
    elif change == "unknown-image":
        critical["image"]["tag"] = "latest"
    elif change == "field-case":
        critical["image"] = {"Docker-manifest-digest": f.DIGEST}
    elif change == "no-optional":
        del document["optional"]
    elif change == "no-identity":
        del critical["identity"]
    elif change == "digest-uppercase":
        critical["image"]["docker-manifest-digest"] = f.DIGEST.upper()
    elif change == "digest-short":
        critical["image"]["docker-manifest-digest"] = "sha256:abcd"
    elif change == "digest-md5":
        critical["image"]["docker-manifest-digest"] = "md5:" + "a" * 32
    elif change == "digest-null":
        critical["image"]["docker-manifest-digest"] = None
    elif change == "reference-number":
        critical["identity"]["docker-reference"] = 5
    elif change == "type-null":
        critical["type"] = None
    elif change == "optional-list":
        document["optional"] = []
    elif change == "creator-number":
        document["optional"] = {"creator": 1}
    elif change == "timestamp-fraction":
        document["optional"] = {"timestamp": 1.5}
    elif change == "timestamp-bool":
        document["optional"] = {"timestamp": True}
    elif change == "critical-list":
        document["critical"] = []
    else:
        raise AssertionError(change)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("type-case", "critical.type"),
        ("atomic-type", "critical.type"),
        ("unknown-critical", "unknown field(s) 'extra'"),
        ("unknown-top", "unknown field(s) 'signed-by'"),
        ("unknown-image", "unknown field(s) 'tag'"),
        ("field-case", "has no 'docker-manifest-digest'"),
        ("no-optional", "has no 'optional'"),
        ("no-identity", "has no 'identity'"),
        ("digest-uppercase", "not a sha256/sha512 digest"),
        ("digest-short", "not a sha256/sha512 digest"),
        ("digest-md5", "not a sha256/sha512 digest"),
        ("digest-null", "must be a string"),
        ("reference-number", "must be a string"),
        ("type-null", "must be a string"),
        ("optional-list", "must be a JSON object"),
        ("creator-number", "must be a string"),
        ("timestamp-fraction", "integer"),
        ("timestamp-bool", "integer"),
        ("critical-list", "must be a JSON object"),
    ],
)
def test_payloads_that_are_refused(change: str, fragment: str) -> None:
    with pytest.raises(CosignPayloadInvalid) as caught:
        parse_simple_signing(_mutated(change), "layer 0 payload")
    assert fragment in str(caught.value)
    assert "layer 0 payload" in str(caught.value)


def test_integral_float_timestamp_is_an_integer() -> None:
    payload = f.simple_signing_payload(optional={"timestamp": 1700000000.0})
    assert parse_simple_signing(payload).timestamp == 1700000000


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"critical": 1, "critical": 2, "optional": null}', "more than once"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"critical": NaN, "optional": null}', "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (f.simple_signing_payload() + b" trailing", "not valid JSON"),
    ],
)
def test_malformed_json(payload: bytes, fragment: str) -> None:
    with pytest.raises(CosignPayloadInvalid) as caught:
        parse_simple_signing(payload)
    assert fragment in str(caught.value)


def test_duplicate_digest_key_is_refused() -> None:
    # Two parsers could read different digests from this; neither reading is accepted.
    payload = (
        b'{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"'
        + f.DIGEST.encode()
        + b'","docker-manifest-digest":"'
        + f.OTHER_DIGEST.encode()
        + b'"},"type":"cosign container image signature"},"optional":null}'
    )
    with pytest.raises(CosignPayloadInvalid, match="more than once"):
        parse_simple_signing(payload)
