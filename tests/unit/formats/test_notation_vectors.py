"""Envelopes made by the notation CLI itself (see vectors/notation/README.md), verified by trustd,
and tampered copies of them refused."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.formats import notation_factory as f
from trustd.formats.notation.errors import (
    CertificateNotValidAtTime,
    InvalidEnvelope,
    SignatureExpired,
    SignatureForOtherDigest,
    UntrustedSigner,
)
from trustd.formats.notation.stores import NamedStore, TrustStores
from trustd.formats.notation.trustpolicy import StoreType, TrustStoreRef
from trustd.formats.notation.truststore import read_certificates
from trustd.formats.notation.verify import parse_envelope, verify_signature
from trustd.net.descriptor import Descriptor

VECTORS = Path(__file__).parent / "vectors" / "notation"
TARGET = Descriptor.from_json(json.loads((VECTORS / "target.json").read_text()))
NAMES = (
    "notation-jws-rsa2048",
    "notation-cose-rsa2048",
    "notation-jws-rsa3072-expiry",
    "notation-cose-rsa3072-expiry",
)
STORES = ("ca:trustd-rsa2048", "ca:trustd-rsa3072")


def media_type(name: str) -> str:
    return f.JWS if "-jws-" in name else f.COSE


def load(name: str) -> bytes:
    return (VECTORS / f"{name}.sig").read_bytes()


def trust_stores(*names: str) -> TrustStores:
    stores = []
    for name in names:
        certificates = read_certificates((VECTORS / f"{name}.crt").read_bytes())
        stores.append(NamedStore(TrustStoreRef(StoreType.CA, name), certificates))
    return TrustStores.of(*stores)


ALL_STORES = trust_stores("trustd-rsa2048", "trustd-rsa3072")


def signed_at(name: str) -> datetime:
    signing_time = parse_envelope(load(name), media_type(name)).attributes.signing_time
    assert signing_time is not None
    return signing_time


@pytest.mark.parametrize("name", NAMES)
def test_notation_envelope_verifies(name: str) -> None:
    now = signed_at(name) + timedelta(minutes=1)
    result = verify_signature(
        load(name), media_type(name), TARGET, f.policy(stores=STORES), ALL_STORES, now
    )
    key = name.split("-")[2]
    assert result.algorithm == {"rsa2048": "PS256", "rsa3072": "PS384"}[key]
    assert result.signer_subject == f"CN=trustd-{key},O=Notary,L=Seattle,ST=WA,C=US"
    assert result.trusted_by == f"ca:trustd-{key}"
    assert result.signing_agent.startswith("notation-go/")
    assert result.logged == ()
    if name.endswith("-expiry"):
        assert result.expiry == signed_at(name) + timedelta(hours=2)
    else:
        assert result.expiry is None


@pytest.mark.parametrize("name", NAMES)
def test_signature_manifest_matches_the_vector(name: str) -> None:
    manifest = json.loads((VECTORS / f"{name}.manifest.json").read_text())
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.notary.signature"
    assert Descriptor.from_json(manifest["subject"]).same_content(TARGET)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == media_type(name)
    assert layer["digest"] == "sha256:" + hashlib.sha256(load(name)).hexdigest()


def test_identity_matches_the_notation_test_certificate() -> None:
    name = "notation-cose-rsa2048"
    policy = f.policy(stores=STORES, identities=("x509.subject: C=US, ST=WA, O=Notary",))
    now = signed_at(name) + timedelta(minutes=1)
    verify_signature(load(name), media_type(name), TARGET, policy, ALL_STORES, now)
    policy = f.policy(stores=STORES, identities=("x509.subject: C=US, ST=WA, O=Other",))
    with pytest.raises(UntrustedSigner):
        verify_signature(load(name), media_type(name), TARGET, policy, ALL_STORES, now)


def _tampered(name: str) -> list[bytes]:
    data = load(name)
    if media_type(name) == f.JWS:
        document = json.loads(data)
        payload = json.loads(base64.urlsafe_b64decode(document["payload"] + "=="))
        payload["targetArtifact"]["size"] += 1
        changed = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        first = json.dumps({**document, "payload": changed}).encode()
        signature = base64.urlsafe_b64decode(document["signature"] + "==")
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
        changed = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        second = json.dumps({**document, "signature": changed}).encode()
        return [first, second]
    digest_at = data.index(TARGET.digest.encode()) + len("sha256:")
    first = data[:digest_at] + bytes([data[digest_at] ^ 1]) + data[digest_at + 1 :]
    second = data[:-1] + bytes([data[-1] ^ 1])
    return [first, second]


@pytest.mark.parametrize("name", NAMES)
def test_tampered_notation_envelopes_are_refused(name: str) -> None:
    now = signed_at(name) + timedelta(minutes=1)
    policy = f.policy("audit", stores=STORES)
    for data in _tampered(name):
        with pytest.raises(InvalidEnvelope, match="does not verify"):
            verify_signature(data, media_type(name), TARGET, policy, ALL_STORES, now)


@pytest.mark.parametrize("name", NAMES)
def test_notation_envelope_for_another_manifest_is_refused(name: str) -> None:
    other = Descriptor(TARGET.media_type, "sha256:" + "0" * 64, TARGET.size)
    now = signed_at(name) + timedelta(minutes=1)
    with pytest.raises(SignatureForOtherDigest):
        verify_signature(
            load(name), media_type(name), other, f.policy(stores=STORES), ALL_STORES, now
        )


def test_notation_envelope_with_another_trust_store_is_refused() -> None:
    name = "notation-jws-rsa2048"
    now = signed_at(name) + timedelta(minutes=1)
    with pytest.raises(UntrustedSigner):
        verify_signature(
            load(name),
            media_type(name),
            TARGET,
            f.policy(stores=("ca:trustd-rsa3072",)),
            trust_stores("trustd-rsa3072"),
            now,
        )


@pytest.mark.parametrize("name", ["notation-jws-rsa2048", "notation-cose-rsa2048"])
def test_after_the_certificate_expired(name: str) -> None:
    envelope = parse_envelope(load(name), media_type(name))
    later = envelope.signing_certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CertificateNotValidAtTime, match="expired at"):
        verify_signature(
            load(name), media_type(name), TARGET, f.policy(stores=STORES), ALL_STORES, later
        )
    result = verify_signature(
        load(name),
        media_type(name),
        TARGET,
        f.policy("permissive", stores=STORES),
        ALL_STORES,
        later,
    )
    assert [line.split(":")[0] for line in result.logged] == ["authenticTimestamp"]


@pytest.mark.parametrize("name", ["notation-jws-rsa3072-expiry", "notation-cose-rsa3072-expiry"])
def test_after_the_signers_expiry(name: str) -> None:
    later = signed_at(name) + timedelta(hours=2)
    with pytest.raises(SignatureExpired):
        verify_signature(
            load(name), media_type(name), TARGET, f.policy(stores=STORES), ALL_STORES, later
        )
