"""Parsing of JWS and COSE envelopes: what each format must hold, and what is refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.unit.formats import notation_factory as f
from trustd.formats.notation.cose import parse_cose
from trustd.formats.notation.envelope import (
    MAX_ENVELOPE_BYTES,
    SigningScheme,
    verify_envelope_signature,
)
from trustd.formats.notation.errors import InvalidEnvelope
from trustd.formats.notation.jws import parse_jws, parse_rfc3339
from trustd.formats.notation.verify import parse_envelope

FORMATS = (f.JWS, f.COSE)


@pytest.fixture(scope="module")
def chain() -> f.Chain:
    return f.build_chain()


@pytest.mark.parametrize("media_type", FORMATS)
def test_parsed_envelope_holds_what_was_signed(media_type: str, chain: f.Chain) -> None:
    expiry = f.NOW + timedelta(days=3)
    envelope = parse_envelope(
        f.sign(media_type, chain, headers=f.Headers(expiry=expiry)), media_type
    )
    attributes = envelope.attributes
    assert attributes.signing_scheme is SigningScheme.X509
    assert attributes.signing_time == f.NOW - timedelta(hours=1)
    assert attributes.expiry == expiry
    assert attributes.content_type == f.PAYLOAD_TYPE
    assert set(attributes.critical) == {f.SCHEME, f.EXPIRY}
    assert attributes.extended_critical == ()
    assert envelope.payload == f.payload_for()
    assert envelope.signing_agent == "trustd-tests/1.0"
    assert [c.public_bytes(serialization.Encoding.DER) for c in envelope.certificate_chain] == [
        c.public_bytes(serialization.Encoding.DER) for c in chain.certificates
    ]
    verify_envelope_signature(envelope)


# --- JWS -----------------------------------------------------------------------------------


def _jws(chain: f.Chain, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(f.sign_jws(chain))
    document.update(changes)
    return document


def _protected(document: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(document["protected"] + "=="))  # type: ignore[no-any-return]


def _with_protected(chain: f.Chain, header: dict[str, Any]) -> bytes:
    document = _jws(chain)
    document["protected"] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
    document["protected"] = document["protected"].decode()
    return json.dumps(document).encode()


def jws_refused(data: bytes | dict[str, Any], match: str) -> None:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    with pytest.raises(InvalidEnvelope, match=match):
        parse_jws(raw)


def test_jws_must_be_a_flattened_json_object(chain: f.Chain) -> None:
    jws_refused(b"eyJhbGciOiJQUzI1NiJ9.e30.c2ln", "not valid JSON")  # compact form
    jws_refused(b"[]", "not a JSON object")
    jws_refused(b"\xff", "not valid JSON")
    jws_refused(_jws(chain, signatures=[]), "unexpected top-level members signatures")
    document = _jws(chain)
    del document["header"]
    jws_refused(document, "unprotected header is missing")
    jws_refused(_jws(chain, payload=None), "payload is missing")


def test_jws_duplicate_members_are_refused(chain: f.Chain) -> None:
    raw = f.sign_jws(chain)
    doubled = raw[:-1] + b', "payload": "e30"}'
    jws_refused(doubled, "duplicate key 'payload'")


@pytest.mark.parametrize(
    ("member", "value", "reason"),
    [
        ("payload", "e30=", "unpadded base64url"),
        ("payload", "e3+", "unpadded base64url"),
        ("payload", "e31", "canonical"),  # non-zero unused bits
        ("payload", "", "payload is empty"),
        ("signature", "", "signature is empty"),
        ("protected", "a", "unpadded base64url"),
    ],
)
def test_jws_base64url_must_be_canonical(
    member: str, value: str, reason: str, chain: f.Chain
) -> None:
    jws_refused(_jws(chain, **{member: value}), reason)


def test_jws_protected_header_rules(chain: f.Chain) -> None:
    header = _protected(_jws(chain))
    jws_refused(_with_protected(chain, {**header, "alg": "none"}), "algorithm 'none'")
    jws_refused(_with_protected(chain, {**header, "alg": "HS256"}), "algorithm 'HS256'")
    jws_refused(_with_protected(chain, {**header, "alg": "RS256"}), "algorithm 'RS256'")
    jws_refused(
        _with_protected(chain, {k: v for k, v in header.items() if k != "crit"}),
        "crit header is missing",
    )
    jws_refused(_with_protected(chain, {**header, "crit": "x"}), "crit is not a list")
    jws_refused(_with_protected(chain, {**header, "crit": [f.SCHEME, "alg"]}), "registered")
    jws_refused(_with_protected(chain, {**header, "crit": [f.SCHEME, f.SCHEME]}), "twice")
    jws_refused(
        _with_protected(chain, {**header, "crit": [f.SCHEME, "io.x"]}),
        "'io.x' is marked critical but not present",
    )
    jws_refused(
        _with_protected(chain, {**header, "crit": [f.SIGNING_TIME]}),
        "io.cncf.notary.signingScheme must be marked critical",
    )
    jws_refused(
        _with_protected(chain, {**header, f.SCHEME: "notary.v2"}), "signing scheme 'notary.v2'"
    )
    jws_refused(_with_protected(chain, {k: v for k, v in header.items() if k != "cty"}), "cty")
    jws_refused(
        _with_protected(chain, {k: v for k, v in header.items() if k != f.SIGNING_TIME}),
        "signingTime is required",
    )
    jws_refused(
        _with_protected(chain, {**header, f.SIGNING_TIME: "2025-06-01 12:00:00"}),
        "not an RFC 3339 time",
    )
    jws_refused(_with_protected(chain, {**header, f.SIGNING_TIME: 1700000000}), "RFC 3339")


def test_jws_expiry_must_be_critical_and_after_signing(chain: f.Chain) -> None:
    header = _protected(_jws(chain))
    later = "2025-07-01T00:00:00Z"
    jws_refused(
        _with_protected(chain, {**header, f.EXPIRY: later}),
        "io.cncf.notary.expiry must be marked critical",
    )
    jws_refused(
        _with_protected(
            chain,
            {**header, f.EXPIRY: header[f.SIGNING_TIME], "crit": [f.SCHEME, f.EXPIRY]},
        ),
        "is not after the signing time",
    )


def test_jws_signing_time_belongs_to_its_scheme(chain: f.Chain) -> None:
    header = _protected(_jws(chain))
    moment = header[f.SIGNING_TIME]
    jws_refused(
        _with_protected(
            chain,
            {
                **header,
                f.AUTHENTIC_SIGNING_TIME: moment,
                "crit": [f.SCHEME, f.AUTHENTIC_SIGNING_TIME],
            },
        ),
        "authenticSigningTime must not be present for notary.x509",
    )
    authority = {**header, f.SCHEME: "notary.x509.signingAuthority"}
    jws_refused(_with_protected(chain, authority), "authenticSigningTime is required")
    del authority[f.SIGNING_TIME]
    authority[f.AUTHENTIC_SIGNING_TIME] = moment
    jws_refused(
        _with_protected(chain, authority),
        "io.cncf.notary.authenticSigningTime must be marked critical",
    )
    authority["crit"] = [f.SCHEME, f.AUTHENTIC_SIGNING_TIME]
    authority[f.SIGNING_TIME] = moment
    jws_refused(_with_protected(chain, authority), "signingTime must not be present")


def test_jws_unprotected_header_rules(chain: f.Chain) -> None:
    document = _jws(chain)
    jws_refused({**document, "header": {**document["header"], "crit": []}}, "crit")
    jws_refused(
        {**document, "header": {**document["header"], "alg": "PS256"}},
        "both protected and unprotected",
    )
    jws_refused({**document, "header": {}}, "x5c is missing")
    jws_refused({**document, "header": {"x5c": []}}, "certificate chain is missing")
    jws_refused({**document, "header": {"x5c": ["!!"]}}, "not base64")
    jws_refused({**document, "header": {"x5c": ["AAAA"]}}, "not a DER X.509 certificate")
    jws_refused(
        {**document, "header": {**document["header"], "x5c": document["header"]["x5c"] * 4}},
        "more than 10",
    )
    jws_refused(
        {
            **document,
            "header": {
                **document["header"],
                f.PLUGIN.replace("verificationPlugin", "signingAgent"): 1,
            },
        },
        "signingAgent is not a string",
    )


def test_jws_unknown_unprotected_members_are_ignored(chain: f.Chain) -> None:
    document = _jws(chain)
    document["header"]["io.example.note"] = {"anything": True}
    parse_jws(json.dumps(document).encode())


def test_oversized_envelopes_are_refused() -> None:
    huge = b" " * (MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(InvalidEnvelope, match="larger than"):
        parse_jws(huge)
    with pytest.raises(InvalidEnvelope, match="larger than"):
        parse_cose(huge)


def test_deeply_nested_json_is_refused() -> None:
    with pytest.raises(InvalidEnvelope, match="not valid JSON"):
        parse_jws(b"[" * 200_000 + b"]" * 200_000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01T12:00:00Z", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01t12:00:00z", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T14:30:00+02:30", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T05:00:00-07:00", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T12:00:00.123456789Z", datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2025-06-01T12:00:00", None),
        ("2025-06-01T12:00:00Z\n", None),
        ("2025-06-01", None),
        ("2025-13-01T12:00:00Z", None),
        ("2025-06-01T24:00:00Z", None),
        ("2025-06-01T12:00:60Z", None),
        ("2025-06-01T12:00:00+24:00", None),
        ("\uff11\uff12\uff13\uff14-06-01T12:00:00Z", None),  # non-ASCII digits
    ],
)
def test_rfc3339_times(text: str, expected: datetime | None) -> None:
    assert parse_rfc3339(text) == expected


# --- COSE ----------------------------------------------------------------------------------


def cose_refused(data: bytes, match: str) -> None:
    with pytest.raises(InvalidEnvelope, match=match):
        parse_cose(data)


def _parts(chain: f.Chain) -> list[Any]:
    envelope = f.sign_cose(chain)
    from trustd.formats.notation.cbor import Tag, decode

    decoded = decode(envelope)
    assert isinstance(decoded, Tag)
    assert isinstance(decoded.value, list)
    return decoded.value


def test_cose_structure_is_checked(chain: f.Chain) -> None:
    protected, unprotected, payload, signature = _parts(chain)
    cose_refused(f.cbor([protected, unprotected, payload, signature]), "tag 18")
    cose_refused(f.cbor(f.CborTag(98, [protected, unprotected, payload, signature])), "tag 18")
    cose_refused(f.cbor(f.CborTag(18, [protected, unprotected, payload])), "four items")
    cose_refused(f.cbor(f.CborTag(18, [protected, unprotected, None, signature])), "detached")
    cose_refused(f.cbor(f.CborTag(18, [protected, unprotected, "text", signature])), "payload")
    cose_refused(f.cbor(f.CborTag(18, [protected, unprotected, payload, b""])), "signature")
    cose_refused(f.cbor(f.CborTag(18, [protected, [], payload, signature])), "unprotected")
    cose_refused(f.cbor(f.CborTag(18, [{1: -7}, unprotected, payload, signature])), "byte string")
    cose_refused(f.cbor(f.CborTag(18, [b"\x80", unprotected, payload, signature])), "not a map")
    cose_refused(f.cbor(f.CborTag(18, [b"", unprotected, payload, signature])), "algorithm")
    cose_refused(f.sign_cose(chain) + b"\x00", "trailing")
    cose_refused(b"\xd2\x9f\xff", "indefinite")


def test_cose_protected_header_rules(chain: f.Chain) -> None:
    def protected(**changes: Any) -> bytes:
        header: dict[Any, Any] = {
            1: -7,
            2: [f.SCHEME],
            3: f.PAYLOAD_TYPE,
            f.SCHEME: "notary.x509",
            f.SIGNING_TIME: f.CborTag(1, 1748779200),
        }
        for key, value in changes.items():
            label: Any = int(key[1:]) if key.startswith("l") else key.replace("_", ".")
            if value is None:
                header.pop(label, None)
            else:
                header[label] = value
        return f.sign_cose(chain, protected_bytes=f.cbor(header))

    parse_cose(protected())
    cose_refused(protected(l1=-257), "algorithm -257")
    cose_refused(protected(l1="ES256"), "algorithm 'ES256'")
    cose_refused(protected(l2=None), "crit header is missing")
    cose_refused(protected(l2=[f.SCHEME, 1]), "crit lists COSE labels")
    cose_refused(protected(l2=[f.SCHEME, 99]), "99 is marked critical but not present")
    cose_refused(protected(l2=[f.SCHEME, b"x"]), "array of header labels")
    cose_refused(protected(l3=None), "content type")
    cose_refused(protected(l3=50), "content type")
    signing_time = f.SIGNING_TIME.replace(".", "_")
    cose_refused(protected(**{signing_time: 1748779200}), "not an epoch time")
    cose_refused(protected(**{signing_time: f.CborTag(0, "2025-06-01T12:00:00Z")}), "tag 1")
    cose_refused(protected(**{signing_time: f.CborTag(1, "x")}), "number of seconds")
    cose_refused(protected(**{signing_time: f.CborTag(1, float("nan"))}), "finite")
    cose_refused(protected(**{signing_time: f.CborTag(1, 2**62)}), "out of range")
    assert parse_cose(protected(**{signing_time: f.CborTag(1, 1748779200.5)})).attributes


def test_cose_x5chain_forms(chain: f.Chain) -> None:
    der = [c.public_bytes(serialization.Encoding.DER) for c in chain.certificates]
    single = parse_cose(f.sign_cose(chain, unprotected={33: der[0]}))
    assert len(single.certificate_chain) == 1
    cose_refused(f.sign_cose(chain, unprotected={33: "x"}), "x5chain")
    cose_refused(f.sign_cose(chain, unprotected={33: [1]}), "x5chain")
    cose_refused(f.sign_cose(chain, unprotected={33: [b"\x30\x00"]}), "not a DER X.509")
    # x5chain may be protected instead; then it must not also be unprotected.
    header: dict[Any, Any] = {
        1: -7,
        2: [f.SCHEME],
        3: f.PAYLOAD_TYPE,
        f.SCHEME: "notary.x509",
        f.SIGNING_TIME: f.CborTag(1, 1748779200),
        33: der,
    }
    cose_refused(
        f.sign_cose(chain, protected_bytes=f.cbor(header)), "both protected and unprotected"
    )
    protected_parts = _parts(chain)
    body = f.cbor(header)
    unprotected = {k: v for k, v in protected_parts[1].items() if k != 33}
    to_sign = f.cbor(["Signature1", body, b"", protected_parts[2]])
    from tests.unit.formats.notation_factory import _sign

    signature = _sign(chain.leaf_key, "p256", to_sign)
    envelope = parse_cose(f.cbor(f.CborTag(18, [body, unprotected, protected_parts[2], signature])))
    verify_envelope_signature(envelope)
    assert len(envelope.certificate_chain) == 3


def test_cose_unprotected_value_types(chain: f.Chain) -> None:
    cose_refused(
        f.sign_cose(chain, unprotected={"io.cncf.notary.timestampSignature": "x"}), "byte string"
    )
    cose_refused(
        f.sign_cose(chain, unprotected={"io.cncf.notary.signingAgent": b"x"}), "text string"
    )


def test_cose_protected_bytes_are_kept_as_received(chain: f.Chain) -> None:
    # A non-shortest map header encodes the same map with other bytes; the signature covers
    # the bytes as received, so it still verifies, and re-encoding would have broken it.
    header = f.cbor(
        {
            1: -7,
            2: [f.SCHEME],
            3: f.PAYLOAD_TYPE,
            f.SCHEME: "notary.x509",
            f.SIGNING_TIME: f.CborTag(1, 1748779200),
        }
    )
    long_form = b"\xb8\x05" + header[1:]
    envelope = parse_cose(f.sign_cose(chain, protected_bytes=long_form))
    assert envelope.protected == long_form
    verify_envelope_signature(envelope)
