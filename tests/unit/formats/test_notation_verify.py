"""The Notation verification workflow: envelopes signed here, in both formats, verified against
trust policies of every level."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from tests.unit.formats import notation_factory as f
from trustd.errors import BadSignature, DigestNotSigned, ExpiredMetadata, TrustError
from trustd.formats.notation.errors import (
    CertificateChainInvalid,
    CertificateNotValidAtTime,
    InvalidEnvelope,
    NoVerifiedSignature,
    RevocationUnknown,
    SignatureExpired,
    SignatureForOtherDigest,
    TimestampNotVerifiable,
    UnsupportedCriticalHeader,
    UntrustedSigner,
    VerificationPluginRequired,
)
from trustd.formats.notation.verify import (
    NotationVerification,
    SignatureEnvelope,
    verify_any,
    verify_signature,
)
from trustd.net.descriptor import Descriptor

FORMATS = (f.JWS, f.COSE)


@pytest.fixture(scope="module")
def chain() -> f.Chain:
    return f.build_chain()


def verify(
    media_type: str,
    envelope: bytes,
    chain: f.Chain,
    policy: object = None,
    *,
    stores: object = None,
    target: Descriptor = f.MANIFEST,
    now: object = f.NOW,
) -> NotationVerification:
    return verify_signature(
        envelope,
        media_type,
        target,
        policy or f.policy(),  # type: ignore[arg-type]
        stores or f.stores(ca_acme=[chain.root]),  # type: ignore[arg-type]
        now,  # type: ignore[arg-type]
    )


# --- valid signatures ------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", FORMATS)
@pytest.mark.parametrize("kind", f.KEY_KINDS)
def test_valid_signature_of_every_algorithm_verifies(media_type: str, kind: str) -> None:
    chain = f.build_chain(f.leaf_spec(key_kind=kind))
    result = verify(media_type, f.sign(media_type, chain), chain)
    expected_alg = {"rsa": "PS", "p25": "ES", "p38": "ES", "p52": "ES"}[kind[:3]]
    assert result.algorithm.startswith(expected_alg)
    assert result.signer_subject == "CN=builder,O=acme-rockets.io,L=Seattle,ST=WA,C=US"
    assert result.issuer == "CN=Intermediate CA,O=acme-rockets.io,C=US"
    assert result.trusted_by == "ca:acme"
    assert result.signing_scheme == "notary.x509"
    assert result.envelope_media_type == media_type
    assert result.signing_time == f.NOW - timedelta(hours=1)
    assert result.logged == ()
    assert [str(o) for o in result.outcomes] == [
        "integrity: passed",
        "authenticity: passed",
        "expiry: passed",
        "authenticTimestamp: passed",
        "revocation: passed",
    ]


@pytest.mark.parametrize("media_type", FORMATS)
def test_chain_of_only_a_self_signed_signing_certificate_verifies(media_type: str) -> None:
    # What `notation cert generate-test` makes: one self-signed certificate, placed in the store.
    leaf = f.make_cert(f.leaf_spec())
    chain = f.Chain([leaf], f.leaf_spec().private_key, "p256")
    result = verify(media_type, f.sign(media_type, chain), chain)
    assert result.signer_subject == result.issuer


@pytest.mark.parametrize("media_type", FORMATS)
def test_intermediate_in_the_store_is_enough(media_type: str, chain: f.Chain) -> None:
    result = verify(
        media_type,
        f.sign(media_type, chain),
        chain,
        f.policy(stores=("ca:x",)),
        stores=f.stores(ca_x=[chain.certificates[1]]),
    )
    assert result.trusted_by == "ca:x"


# --- integrity ---------------------------------------------------------------------------------


def _tamper_jws(envelope: bytes, member: str) -> bytes:
    document = json.loads(envelope)
    raw = base64.urlsafe_b64decode(document[member] + "==")
    if member == "protected":
        header = json.loads(raw)
        header["io.cncf.notary.signingTime"] = "2020-01-01T00:00:00Z"
        raw = json.dumps(header).encode()
    else:
        raw = raw[:-1] + bytes([raw[-1] ^ 1])
    document[member] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return json.dumps(document).encode()


@pytest.mark.parametrize("member", ["payload", "protected", "signature"])
def test_tampered_jws_is_refused(member: str, chain: f.Chain) -> None:
    envelope = _tamper_jws(f.sign_jws(chain), member)
    with pytest.raises(InvalidEnvelope, match="does not verify"):
        verify(f.JWS, envelope, chain, f.policy("audit"))


def test_tampered_jws_payload_for_another_manifest_is_refused(chain: f.Chain) -> None:
    other = Descriptor(f.MANIFEST.media_type, "sha256:" + "0" * 64, f.MANIFEST.size)
    document = json.loads(f.sign_jws(chain))
    document["payload"] = base64.urlsafe_b64encode(f.payload_for(other)).rstrip(b"=").decode()
    with pytest.raises(InvalidEnvelope, match="does not verify"):
        verify(f.JWS, json.dumps(document).encode(), chain, target=other)


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize("what", ["payload", "protected", "signature"])
def test_tampered_cose_is_refused(what: str, chain: f.Chain) -> None:
    envelope = f.sign_cose(chain)
    if what == "payload":
        envelope = _replace_once(envelope, f.MANIFEST.digest.encode(), b"sha256:" + b"1" * 64)
    elif what == "protected":
        envelope = _replace_once(envelope, b"notary.x509", b"notary.x50X")
    else:
        envelope = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(InvalidEnvelope):
        verify(f.COSE, envelope, chain, f.policy("audit"))


@pytest.mark.parametrize("media_type", FORMATS)
def test_alg_not_matching_the_key_is_refused(media_type: str) -> None:
    # A valid RSASSA-PSS SHA-384 signature by an RSA 2048 key: right key, wrong algorithm.
    chain = f.build_chain(f.leaf_spec(key_kind="rsa2048"))
    envelope = f.sign(media_type, chain, headers=f.Headers(alg_kind="rsa3072"))
    with pytest.raises(InvalidEnvelope, match=r"PS384 does not match .* RSA 2048-bit key"):
        verify(media_type, envelope, chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_signature_by_another_key_than_the_leafs_is_refused(
    media_type: str, chain: f.Chain
) -> None:
    impostor = replace(chain, leaf_key=f.key("p256", 9))
    with pytest.raises(InvalidEnvelope, match="does not verify"):
        verify(media_type, f.sign(media_type, impostor), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_verification_plugin_requirement_is_refused_saying_so(
    media_type: str, chain: f.Chain
) -> None:
    headers = f.Headers(extra={f.PLUGIN: "com.example.plugin"}, extra_crit=[f.PLUGIN])
    with pytest.raises(VerificationPluginRequired) as raised:
        verify(media_type, f.sign(media_type, chain, headers=headers), chain, f.policy("audit"))
    message = str(raised.value)
    assert "verification plugin 'com.example.plugin'" in message
    assert "trustd does not run verification plugins" in message


@pytest.mark.parametrize("media_type", FORMATS)
def test_unknown_critical_header_is_refused(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(extra={"io.example.policy": "x"}, extra_crit=["io.example.policy"])
    with pytest.raises(UnsupportedCriticalHeader, match=r"io\.example\.policy"):
        verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_unknown_non_critical_header_is_ignored(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(extra={"io.example.note": "informational"})
    verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_other_payload_content_type_is_refused(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(content_type="application/json")
    with pytest.raises(InvalidEnvelope, match="content type 'application/json'"):
        verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_unknown_media_type_is_refused(media_type: str, chain: f.Chain) -> None:
    with pytest.raises(InvalidEnvelope, match="is not application/jose"):
        verify("application/octet-stream", f.sign(media_type, chain), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_envelope_of_the_other_format_is_refused(media_type: str, chain: f.Chain) -> None:
    other = f.COSE if media_type == f.JWS else f.JWS
    with pytest.raises(InvalidEnvelope):
        verify(other, f.sign(media_type, chain), chain)


# --- payload -------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", FORMATS)
@pytest.mark.parametrize(
    "target",
    [
        replace(f.MANIFEST, digest="sha256:" + "a" * 64),
        replace(f.MANIFEST, size=f.MANIFEST.size + 1),
        replace(f.MANIFEST, media_type="application/vnd.oci.image.index.v1+json"),
    ],
    ids=["digest", "size", "mediaType"],
)
def test_signature_for_another_manifest_is_refused(
    media_type: str, target: Descriptor, chain: f.Chain
) -> None:
    with pytest.raises(SignatureForOtherDigest) as raised:
        verify(media_type, f.sign(media_type, chain), chain, f.policy("audit"), target=target)
    assert isinstance(raised.value, DigestNotSigned)
    assert f.MANIFEST.digest in str(raised.value) and target.digest in str(raised.value)


@pytest.mark.parametrize("media_type", FORMATS)
@pytest.mark.parametrize(
    "payload",
    [
        b'{"targetArtifact": {"mediaType": "x", "digest": "sha256:abc", "size": 1}}',
        b'{"targetArtifact": {}, "extra": 1}',
        b"[]",
        b"not json",
        b'{"targetArtifact": 1, "targetArtifact": 2}',
    ],
)
def test_malformed_signed_payload_is_refused(
    media_type: str, payload: bytes, chain: f.Chain
) -> None:
    with pytest.raises(InvalidEnvelope, match="payload"):
        verify(media_type, f.sign(media_type, chain, payload), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_payload_annotations_and_artifact_type_do_not_matter(
    media_type: str, chain: f.Chain
) -> None:
    signed = replace(f.MANIFEST, artifact_type="application/x", annotations={"a": "b"})
    verify(media_type, f.sign(media_type, chain, f.payload_for(signed)), chain)


# --- authenticity --------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", FORMATS)
def test_untrusted_root_is_refused(media_type: str, chain: f.Chain) -> None:
    other = f.make_cert(f.root_spec(key_index=5, subject={"CN": "Other Root"}))
    with pytest.raises(UntrustedSigner, match="is in the trust stores ca:acme"):
        verify(media_type, f.sign(media_type, chain), chain, stores=f.stores(ca_acme=[other]))


@pytest.mark.parametrize("media_type", FORMATS)
def test_untrusted_root_is_logged_under_audit(media_type: str, chain: f.Chain) -> None:
    other = f.make_cert(f.root_spec(key_index=5, subject={"CN": "Other Root"}))
    result = verify(
        media_type,
        f.sign(media_type, chain),
        chain,
        f.policy("audit"),
        stores=f.stores(ca_acme=[other]),
    )
    assert result.trusted_by == ""
    assert len(result.logged) == 1 and result.logged[0].startswith("authenticity: logged: no ")


def test_root_with_the_same_name_and_another_key_is_not_trusted(chain: f.Chain) -> None:
    lookalike = f.make_cert(f.root_spec(key_index=5))
    assert lookalike.subject == chain.root.subject
    with pytest.raises(UntrustedSigner):
        verify(f.JWS, f.sign_jws(chain), chain, stores=f.stores(ca_acme=[lookalike]))


def test_store_named_by_the_policy_but_not_loaded_is_refused(chain: f.Chain) -> None:
    with pytest.raises(UntrustedSigner, match="trust stores ca:acme are not loaded"):
        verify(f.JWS, f.sign_jws(chain), chain, stores=f.stores(ca_other=[chain.root]))


@pytest.mark.parametrize(
    "identity",
    [
        "x509.subject: C=US, ST=WA, O=acme-rockets.io",
        "x509.subject: CN=builder, O=acme-rockets.io, L=Seattle, ST=WA, C=US",
        "x509.subject: c=US, s=WA, o=acme-rockets.io",
        "x509.subject:C=US,ST=WA,O=acme-rockets.io",
    ],
)
def test_matching_trusted_identity_passes(identity: str, chain: f.Chain) -> None:
    verify(f.JWS, f.sign_jws(chain), chain, f.policy(identities=(identity,)))


@pytest.mark.parametrize(
    "identity",
    [
        "x509.subject: C=US, ST=WA, O=wabbit-networks.io",
        "x509.subject: C=US, ST=WA, O=acme-rockets.io, OU=Finance",
        "x509.subject: C=US, ST=WA, O=acme-rockets.io, CN=Builder",
    ],
)
@pytest.mark.parametrize("media_type", FORMATS)
def test_trusted_identity_mismatch_is_refused(
    identity: str, media_type: str, chain: f.Chain
) -> None:
    with pytest.raises(UntrustedSigner, match="is none of the trusted identities"):
        verify(media_type, f.sign(media_type, chain), chain, f.policy(identities=(identity,)))


def test_one_of_several_identities_is_enough(chain: f.Chain) -> None:
    identities = (
        "x509.subject: C=US, ST=WA, O=wabbit-networks.io",
        "x509.subject: C=US, ST=WA, O=acme-rockets.io, CN=builder",
    )
    verify(f.JWS, f.sign_jws(chain), chain, f.policy(identities=identities))


def test_identity_is_matched_against_the_leaf_not_the_ca(chain: f.Chain) -> None:
    identity = "x509.subject: C=US, ST=WA, O=acme-rockets.io, CN=Intermediate CA"
    with pytest.raises(UntrustedSigner):
        verify(f.JWS, f.sign_jws(chain), chain, f.policy(identities=(identity,)))


def test_escaped_identity_value_matches() -> None:
    subject = {"C": "US", "ST": "WA", "O": "Acme, Inc. \\ Co", "CN": " padded"}
    chain = f.build_chain(f.leaf_spec(subject=subject))
    identity = "x509.subject: C=US, ST=WA, O=Acme\\, Inc. \\\\ Co, CN=\\ padded"
    verify(f.JWS, f.sign_jws(chain), chain, f.policy(identities=(identity,)))


def test_subject_with_a_repeated_attribute_cannot_match_an_identity() -> None:
    builder_chain = _chain_with_leaf_subject(
        x509.Name(
            [
                x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(x509.NameOID.STATE_OR_PROVINCE_NAME, "WA"),
                x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "acme"),
                x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "other"),
            ]
        )
    )
    identity = "x509.subject: C=US, ST=WA, O=acme"
    with pytest.raises(UntrustedSigner, match="more than once"):
        verify(f.JWS, f.sign_jws(builder_chain), builder_chain, f.policy(identities=(identity,)))
    # "*" does not look at the subject at all.
    verify(f.JWS, f.sign_jws(builder_chain), builder_chain)


def _chain_with_leaf_subject(subject: x509.Name) -> f.Chain:
    base = f.build_chain()
    intermediate = f.intermediate_spec()
    leaf_spec = f.leaf_spec()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(base.certificates[1].subject)
        .public_key(leaf_spec.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf_spec.not_before)
        .not_valid_after(leaf_spec.not_after)
        .add_extension(f.key_usage(digital_signature=True), critical=True)
    )
    leaf = builder.sign(intermediate.private_key, f.issuer_hash(intermediate))
    return f.Chain([leaf, *base.certificates[1:]], leaf_spec.private_key, "p256")


def test_identity_of_another_type_alone_never_matches(chain: f.Chain) -> None:
    with pytest.raises(UntrustedSigner, match="need a verification plugin"):
        verify(
            f.JWS,
            f.sign_jws(chain),
            chain,
            f.policy(identities=("com.example.plugin: some-identity",)),
        )


# --- signing schemes ---------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", FORMATS)
def test_signing_authority_scheme_needs_a_signing_authority_store(
    media_type: str, chain: f.Chain
) -> None:
    envelope = f.sign(media_type, chain, headers=f.signing_authority_headers())
    with pytest.raises(UntrustedSigner, match="needs a signingAuthority trust store"):
        verify(media_type, envelope, chain)
    result = verify(
        media_type,
        envelope,
        chain,
        f.policy(stores=("signingAuthority:sa",)),
        stores=f.stores(signingAuthority_sa=[chain.root]),
    )
    assert result.signing_scheme == "notary.x509.signingAuthority"
    assert result.trusted_by == "signingAuthority:sa"
    assert result.authentic_signing_time == f.NOW - timedelta(hours=1)
    assert result.signing_time is None


@pytest.mark.parametrize("media_type", FORMATS)
def test_x509_scheme_is_not_trusted_through_a_signing_authority_store(
    media_type: str, chain: f.Chain
) -> None:
    with pytest.raises(UntrustedSigner, match="needs a ca trust store"):
        verify(
            media_type,
            f.sign(media_type, chain),
            chain,
            f.policy(stores=("signingAuthority:sa",)),
            stores=f.stores(signingAuthority_sa=[chain.root]),
        )


@pytest.mark.parametrize("media_type", FORMATS)
def test_authentic_signing_time_outside_the_validity_is_refused(
    media_type: str, chain: f.Chain
) -> None:
    headers = f.signing_authority_headers(authentic_signing_time=f.NOW - timedelta(days=60))
    with pytest.raises(CertificateNotValidAtTime, match="authentic signing time"):
        verify(
            media_type,
            f.sign(media_type, chain, headers=headers),
            chain,
            f.policy(stores=("signingAuthority:sa",)),
            stores=f.stores(signingAuthority_sa=[chain.root]),
        )


def test_signing_authority_chain_expired_now_but_valid_at_signing_passes() -> None:
    expired = f.build_chain(f.leaf_spec(not_after=f.NOW - timedelta(days=1)))
    headers = f.signing_authority_headers(authentic_signing_time=f.NOW - timedelta(days=2))
    result = verify(
        f.COSE,
        f.sign_cose(expired, headers=headers),
        expired,
        f.policy(stores=("signingAuthority:sa",)),
        stores=f.stores(signingAuthority_sa=[expired.root]),
    )
    assert result.logged == ()


# --- authentic timestamp and expiry --------------------------------------------------------


@pytest.fixture(scope="module")
def expired_leaf() -> f.Chain:
    return f.build_chain(f.leaf_spec(not_after=f.NOW - timedelta(days=1)))


@pytest.mark.parametrize("media_type", FORMATS)
def test_expired_leaf_is_refused_under_strict(media_type: str, expired_leaf: f.Chain) -> None:
    with pytest.raises(CertificateNotValidAtTime, match="expired at") as raised:
        verify(media_type, f.sign(media_type, expired_leaf), expired_leaf)
    assert isinstance(raised.value, ExpiredMetadata)
    assert "authenticTimestamp is enforced" in str(raised.value)


@pytest.mark.parametrize("level", ["permissive", "audit"])
@pytest.mark.parametrize("media_type", FORMATS)
def test_expired_leaf_is_admitted_and_logged_below_strict(
    level: str, media_type: str, expired_leaf: f.Chain
) -> None:
    result = verify(media_type, f.sign(media_type, expired_leaf), expired_leaf, f.policy(level))
    assert result.level == level
    assert len(result.logged) == 1
    assert result.logged[0].startswith("authenticTimestamp: logged: certificate 'CN=builder")


def test_not_yet_valid_certificate_is_refused() -> None:
    chain = f.build_chain(f.leaf_spec(not_before=f.NOW + timedelta(days=1)))
    with pytest.raises(CertificateNotValidAtTime, match="not valid before"):
        verify(f.JWS, f.sign_jws(chain), chain)


def test_expired_root_is_refused(chain: f.Chain) -> None:
    root = f.root_spec(not_after=f.NOW - timedelta(seconds=1))
    expired = f.build_chain(root=root)
    with pytest.raises(CertificateNotValidAtTime, match="Root CA"):
        verify(f.JWS, f.sign_jws(expired), expired)


def test_strict_with_authentic_timestamp_logged_admits_expired(expired_leaf: f.Chain) -> None:
    policy = f.policy(override={"authenticTimestamp": "log"})
    result = verify(f.JWS, f.sign_jws(expired_leaf), expired_leaf, policy)
    assert result.level == "strict (authenticTimestamp=log)"
    assert result.logged[0].startswith("authenticTimestamp: logged")


@pytest.mark.parametrize("media_type", FORMATS)
def test_expiry_header_passed_is_refused_under_strict(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(expiry=f.NOW - timedelta(minutes=1))
    with pytest.raises(SignatureExpired, match="signature expired at"):
        verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_expiry_at_exactly_now_is_expired(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(expiry=f.NOW)
    with pytest.raises(SignatureExpired):
        verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_expiry_in_the_future_passes(media_type: str, chain: f.Chain) -> None:
    headers = f.Headers(expiry=f.NOW + timedelta(days=1))
    result = verify(media_type, f.sign(media_type, chain, headers=headers), chain)
    assert result.expiry == f.NOW + timedelta(days=1)


def test_expiry_passed_is_logged_under_permissive(chain: f.Chain) -> None:
    headers = f.Headers(expiry=f.NOW - timedelta(minutes=1))
    result = verify(f.JWS, f.sign_jws(chain, headers=headers), chain, f.policy("permissive"))
    assert result.logged == (
        f"expiry: logged: the signature expired at {(f.NOW - timedelta(minutes=1)).isoformat()} "
        "(io.cncf.notary.expiry)",
    )


@pytest.mark.parametrize("media_type", FORMATS)
def test_timestamp_required_by_the_policy_cannot_be_verified(
    media_type: str, chain: f.Chain
) -> None:
    tsa_root = f.make_cert(f.root_spec(key_index=6, subject={"CN": "TSA Root"}))
    policy = f.policy(stores=("ca:acme", "tsa:ts"))
    stores = f.stores(ca_acme=[chain.root], tsa_ts=[tsa_root])
    with pytest.raises(TimestampNotVerifiable, match="no timestamp countersignature"):
        verify(media_type, f.sign(media_type, chain), chain, policy, stores=stores)
    token = {"io.cncf.notary.timestampSignature": base64.b64encode(b"token").decode()}
    if media_type == f.COSE:
        token = {"io.cncf.notary.timestampSignature": b"token"}  # type: ignore[dict-item]
    envelope = f.sign(media_type, chain, unprotected=token)
    with pytest.raises(TimestampNotVerifiable, match="does not verify RFC 3161"):
        verify(media_type, envelope, chain, policy, stores=stores)
    # afterCertExpiry with an unexpired chain: the certificates' validity now is the check.
    policy = f.policy(stores=("ca:acme", "tsa:ts"), verify_timestamp="afterCertExpiry")
    verify(media_type, envelope, chain, policy, stores=stores)


def test_timestamp_after_cert_expiry_with_an_expired_chain_cannot_be_verified(
    expired_leaf: f.Chain,
) -> None:
    tsa_root = f.make_cert(f.root_spec(key_index=6, subject={"CN": "TSA Root"}))
    policy = f.policy(stores=("ca:acme", "tsa:ts"), verify_timestamp="afterCertExpiry")
    stores = f.stores(ca_acme=[expired_leaf.root], tsa_ts=[tsa_root])
    with pytest.raises(TimestampNotVerifiable):
        verify(f.JWS, f.sign_jws(expired_leaf), expired_leaf, policy, stores=stores)


# --- revocation ------------------------------------------------------------------------------


def _with_endpoints(ocsp: bool, crl: bool) -> f.Chain:
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    if ocsp:
        extensions.append(
            (
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier("http://ocsp.example.com"),
                        )
                    ]
                ),
                False,
            )
        )
    if crl:
        extensions.append(
            (
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier("http://crl.example.com/ca.crl")],
                            None,
                            None,
                            None,
                        )
                    ]
                ),
                False,
            )
        )
    return f.build_chain(f.leaf_spec(extra_extensions=extensions))


@pytest.mark.parametrize(("ocsp", "crl"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("media_type", FORMATS)
def test_revocation_endpoint_under_strict_cannot_be_checked(
    ocsp: bool, crl: bool, media_type: str
) -> None:
    chain = _with_endpoints(ocsp, crl)
    with pytest.raises(RevocationUnknown, match="cannot be checked") as raised:
        verify(media_type, f.sign(media_type, chain), chain)
    message = str(raised.value)
    assert ("OCSP http://ocsp.example.com" in message) == ocsp
    assert ("CRL http://crl.example.com/ca.crl" in message) == crl
    assert "revocation is enforced" in message


def test_revocation_unknown_is_logged_under_permissive() -> None:
    chain = _with_endpoints(True, False)
    result = verify(f.JWS, f.sign_jws(chain), chain, f.policy("permissive"))
    assert len(result.logged) == 1
    assert result.logged[0].startswith("revocation: logged: the revocation status")


def test_revocation_skipped_by_override() -> None:
    chain = _with_endpoints(True, True)
    result = verify(f.JWS, f.sign_jws(chain), chain, f.policy(override={"revocation": "skip"}))
    assert "revocation: skipped" in [str(o) for o in result.outcomes]
    assert result.logged == ()


def test_root_revocation_endpoints_are_not_checked() -> None:
    distribution = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier("http://c")], None, None, None)]
    )
    chain = f.build_chain(root=f.root_spec(extra_extensions=[(distribution, False)]))
    verify(f.JWS, f.sign_jws(chain), chain)


# --- certificate chain rules (integrity: enforced at every level) -----------------------------


@pytest.mark.parametrize("level", ["strict", "audit"])
def test_server_auth_leaf_is_refused(level: str) -> None:
    chain = f.build_chain(f.leaf_spec(ekus=[ExtendedKeyUsageOID.SERVER_AUTH]))
    with pytest.raises(CertificateChainInvalid, match="serverAuth") as raised:
        verify(f.COSE, f.sign_cose(chain), chain, f.policy(level))
    assert isinstance(raised.value, BadSignature)


def test_ca_without_basic_constraints_is_refused() -> None:
    chain = f.build_chain(intermediate=f.intermediate_spec(basic_constraints=False))
    with pytest.raises(CertificateChainInvalid, match="basicConstraints"):
        verify(f.JWS, f.sign_jws(chain), chain, f.policy("audit"))


def test_sha1_signed_intermediate_is_refused() -> None:
    chain = f.build_chain()
    chain.certificates[1] = f.resign_with_sha1(chain.certificates[1], f.root_spec())
    assert chain.certificates[1].signature_hash_algorithm.name == "sha1"  # type: ignore[union-attr]
    # The signature itself is good: only the algorithm is refused.
    intermediate = chain.certificates[1]
    root_key = chain.root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    root_key.verify(
        intermediate.signature, intermediate.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1())
    )
    with pytest.raises(CertificateChainInvalid, match="SHA-1"):
        verify(f.JWS, f.sign_jws(chain), chain, f.policy("audit"))


# --- verify_any and skip ---------------------------------------------------------------------


def test_skip_level_verifies_nothing(chain: f.Chain) -> None:
    result = verify(f.JWS, b"not even an envelope", chain, f.policy("skip"))
    assert result.skipped and result.level == "skip"
    assert verify_any([], f.MANIFEST, f.policy("skip"), f.stores(), f.NOW).skipped


def test_verify_any_returns_the_first_that_verifies(chain: f.Chain) -> None:
    other = f.build_chain(root=f.root_spec(key_index=5, subject={"CN": "Other Root"}))
    envelopes = [
        SignatureEnvelope(f.JWS, f.sign_jws(other), "sha256:first"),
        SignatureEnvelope(f.COSE, f.sign_cose(chain), "sha256:second"),
    ]
    result = verify_any(envelopes, f.MANIFEST, f.policy(), f.stores(ca_acme=[chain.root]), f.NOW)
    assert result.envelope_media_type == f.COSE


def test_verify_any_says_why_each_failed(chain: f.Chain, expired_leaf: f.Chain) -> None:
    envelopes = [
        SignatureEnvelope(f.JWS, b"{}", "sha256:first"),
        SignatureEnvelope(f.COSE, f.sign_cose(expired_leaf), "sha256:second"),
    ]
    stores = f.stores(ca_acme=[chain.root, expired_leaf.root])
    with pytest.raises(NoVerifiedSignature) as raised:
        verify_any(envelopes, f.MANIFEST, f.policy(), stores, f.NOW)
    message = str(raised.value)
    assert "no Notation signature of sha256:" in message
    assert "2 signatures tried" in message
    assert "sha256:first: JWS signature: payload is missing" in message
    assert "sha256:second: certificate 'CN=builder" in message
    assert [type(e) for e in raised.value.failures] == [
        InvalidEnvelope,
        CertificateNotValidAtTime,
    ]


def test_verify_any_names_the_image_it_refuses(chain: f.Chain) -> None:
    envelopes = [SignatureEnvelope(f.JWS, f.sign_jws(chain), "sha256:only")]
    with pytest.raises(NoVerifiedSignature) as raised:
        verify_any(
            envelopes,
            f.MANIFEST,
            f.policy(),
            f.stores(),
            f.NOW,
            repository="registry.example.com/app",
        )
    assert str(raised.value).startswith(
        f"no Notation signature of registry.example.com/app@{f.MANIFEST.digest} verified "
        "(1 signature tried): sha256:only: "
    )


def test_verify_any_message_is_bounded(chain: f.Chain) -> None:
    envelopes = [SignatureEnvelope(f.JWS, b"x" * 10_000, f"sha256:{i}") for i in range(40)]
    with pytest.raises(NoVerifiedSignature) as raised:
        verify_any(envelopes, f.MANIFEST, f.policy(), f.stores(), f.NOW)
    assert len(str(raised.value)) < 3000
    assert "and 35 more" in str(raised.value)


def test_verify_any_without_signatures_is_refused() -> None:
    with pytest.raises(NoVerifiedSignature, match="has no Notation signature"):
        verify_any([], f.MANIFEST, f.policy(), f.stores(), f.NOW)


def test_every_failure_is_a_trust_error(chain: f.Chain) -> None:
    assert issubclass(NoVerifiedSignature, TrustError)
    with pytest.raises(ValueError, match="aware"):
        verify(f.JWS, f.sign_jws(chain), chain, now=f.NOW.replace(tzinfo=None))


@pytest.mark.parametrize("media_type", FORMATS)
def test_verification_plugin_header_not_marked_critical_is_refused_too(
    media_type: str, chain: f.Chain
) -> None:
    headers = f.Headers(extra={"io.cncf.notary.verificationPluginMinVersion": "1.0.0"})
    with pytest.raises(VerificationPluginRequired, match="does not run verification plugins"):
        verify(media_type, f.sign(media_type, chain, headers=headers), chain)


@pytest.mark.parametrize("media_type", FORMATS)
def test_damaged_envelopes_are_refused_never_crash(media_type: str, chain: f.Chain) -> None:
    # Deterministic damage of every kind: truncation, byte flips, byte insertion. Each result
    # is either refused with a TrustError or (damage to unsigned, ignored bytes) verified.
    import random

    original = f.sign(media_type, chain)
    generator = random.Random(20250601)
    refusals = 0
    for round_number in range(400):
        data = bytearray(original)
        action = round_number % 3
        position = generator.randrange(len(data))
        if action == 0:
            del data[position:]
        elif action == 1:
            data[position] ^= 1 << generator.randrange(8)
        else:
            data.insert(position, generator.randrange(256))
        try:
            verify(media_type, bytes(data), chain)
        except TrustError:
            refusals += 1
    assert refusals > 300
