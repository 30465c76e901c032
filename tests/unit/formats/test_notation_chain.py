"""The Notary Project certificate requirements, rule by rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from tests.unit.formats import notation_factory as f
from trustd.formats.notation.chain import (
    certificates_not_valid_at,
    revocation_endpoints,
    validate_chain,
)
from trustd.formats.notation.errors import CertificateChainInvalid


def refused(chain: f.Chain | list[x509.Certificate], match: str) -> None:
    certificates = chain.certificates if isinstance(chain, f.Chain) else chain
    with pytest.raises(CertificateChainInvalid, match=match):
        validate_chain(certificates)


def test_valid_chains_pass() -> None:
    validate_chain(f.build_chain().certificates)
    validate_chain(f.build_chain(with_intermediate=False).certificates)
    validate_chain([f.make_cert(f.leaf_spec())])  # a self-signed signing certificate alone


@pytest.mark.parametrize("kind", ["rsa2048", "p384"])
def test_issuers_of_every_kind_pass(kind: str) -> None:
    validate_chain(
        f.build_chain(root=f.root_spec(key_kind=kind), with_intermediate=False).certificates
    )


def test_empty_chain_is_refused() -> None:
    refused([], "empty")


# --- order and issuance ----------------------------------------------------------------------


def test_chain_out_of_order_is_refused() -> None:
    leaf, intermediate, root = f.build_chain().certificates
    refused([leaf, root, intermediate], "is not issued by the next certificate")


def test_chain_without_its_root_is_refused() -> None:
    leaf, intermediate, _ = f.build_chain().certificates
    refused([leaf, intermediate], "not a self-signed root")


def test_leaf_alone_that_is_not_self_signed_is_refused() -> None:
    refused(f.build_chain().certificates[:1], "not self-signed")


def test_unrelated_certificate_in_the_chain_is_refused() -> None:
    leaf, intermediate, root = f.build_chain().certificates
    stranger = f.make_cert(f.intermediate_spec(key_index=7), f.root_spec())
    refused([leaf, stranger, intermediate, root], "is not issued by")


def test_extra_root_at_the_end_is_refused() -> None:
    leaf, intermediate, root = f.build_chain().certificates
    refused([leaf, intermediate, root, root], "intermediate certificate .* is self-signed")


def test_self_signed_leaf_with_a_chain_is_refused() -> None:
    root = f.build_chain().root
    refused([f.make_cert(f.leaf_spec()), root], "leaf certificate .* is self-signed")


def test_forged_issuer_name_without_the_issuer_key_is_refused() -> None:
    root = f.build_chain().root
    # Named as issued by the root but signed by another key.
    impostor_issuer = f.root_spec(key_index=8)
    leaf = f.make_cert(f.leaf_spec(), impostor_issuer)
    refused([leaf, root], "is not issued by")


# --- leaf ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("eku", "name"),
    [
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
        (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
        (ExtendedKeyUsageOID.EMAIL_PROTECTION, "emailProtection"),
        (ExtendedKeyUsageOID.TIME_STAMPING, "timeStamping"),
        (ExtendedKeyUsageOID.OCSP_SIGNING, "OCSPSigning"),
        (ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, "anyExtendedKeyUsage"),
    ],
)
def test_leaf_with_a_forbidden_eku_is_refused(eku: ObjectIdentifier, name: str) -> None:
    refused(f.build_chain(f.leaf_spec(ekus=[ExtendedKeyUsageOID.CODE_SIGNING, eku])), name)


def test_leaf_without_eku_or_with_another_purpose_passes() -> None:
    validate_chain(f.build_chain(f.leaf_spec(ekus=None, ca=False)).certificates)
    other = ObjectIdentifier("1.3.6.1.4.1.311.10.3.13")  # a vendor's code signing purpose
    chain = f.build_chain(f.leaf_spec(ekus=[ExtendedKeyUsageOID.CODE_SIGNING, other]))
    validate_chain(chain.certificates)


def test_leaf_that_is_a_ca_is_refused() -> None:
    refused(f.build_chain(f.leaf_spec(basic_constraints=True, ca=True)), "is a CA certificate")


def test_leaf_with_basic_constraints_ca_false_passes() -> None:
    validate_chain(f.build_chain(f.leaf_spec(basic_constraints=True)).certificates)


def test_leaf_without_key_usage_is_refused() -> None:
    refused(f.build_chain(f.leaf_spec(omit_key_usage=True)), "critical keyUsage")


def test_leaf_with_non_critical_key_usage_is_refused() -> None:
    refused(f.build_chain(f.leaf_spec(key_usage_critical=False)), "critical keyUsage")


def test_leaf_without_digital_signature_is_refused() -> None:
    usage = f.key_usage(content_commitment=True)
    refused(f.build_chain(f.leaf_spec(key_usage=usage)), "lacks keyUsage digitalSignature")


@pytest.mark.parametrize(
    ("bits", "name"),
    [
        ({"key_encipherment": True}, "keyEncipherment"),
        ({"data_encipherment": True}, "dataEncipherment"),
        ({"key_agreement": True}, "keyAgreement"),
        ({"key_cert_sign": True}, "keyCertSign"),
        ({"crl_sign": True}, "cRLSign"),
        ({"key_agreement": True, "encipher_only": True}, "encipherOnly"),
        ({"key_agreement": True, "decipher_only": True}, "decipherOnly"),
    ],
)
def test_leaf_with_another_key_usage_is_refused(bits: dict[str, bool], name: str) -> None:
    usage = f.key_usage(digital_signature=True, **bits)
    refused(f.build_chain(f.leaf_spec(key_usage=usage)), name)


def test_leaf_with_non_repudiation_passes() -> None:
    usage = f.key_usage(digital_signature=True, content_commitment=True)
    validate_chain(f.build_chain(f.leaf_spec(key_usage=usage)).certificates)


def test_leaf_with_a_small_rsa_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf_spec = f.leaf_spec()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(f.name(leaf_spec.subject))
        .issuer_name(f.name(f.root_spec().subject))
        .public_key(small.public_key())
        .serial_number(1)
        .not_valid_before(leaf_spec.not_before)
        .not_valid_after(leaf_spec.not_after)
        .add_extension(f.key_usage(digital_signature=True), critical=True)
        .sign(f.root_spec().private_key, f.issuer_hash(f.root_spec()))
    )
    refused([certificate, f.make_cert(f.root_spec())], "RSA 1024-bit key")


# --- CAs -------------------------------------------------------------------------------------


def test_ca_without_basic_constraints_is_refused() -> None:
    chain = f.build_chain(intermediate=f.intermediate_spec(basic_constraints=False))
    refused(chain, "Intermediate CA.* critical basicConstraints")


def test_ca_with_non_critical_basic_constraints_is_refused() -> None:
    chain = f.build_chain(intermediate=f.intermediate_spec(basic_constraints_critical=False))
    refused(chain, "critical basicConstraints")


def test_root_with_ca_false_is_refused() -> None:
    chain = f.build_chain(root=f.root_spec(ca=False, basic_constraints=True))
    refused(chain, "Root CA.* cA=true")


def test_ca_without_key_cert_sign_is_refused() -> None:
    chain = f.build_chain(intermediate=f.intermediate_spec(key_usage=f.key_usage(crl_sign=True)))
    refused(chain, "lacks keyUsage keyCertSign")


def test_ca_with_non_critical_key_usage_is_refused() -> None:
    chain = f.build_chain(intermediate=f.intermediate_spec(key_usage_critical=False))
    refused(chain, "critical keyUsage")


def test_path_length_is_honoured() -> None:
    # The root allows no intermediate CA below it; the chain has one.
    refused(f.build_chain(root=f.root_spec(path_length=0)), "pathLenConstraint")
    validate_chain(f.build_chain(root=f.root_spec(path_length=1)).certificates)
    validate_chain(f.build_chain(intermediate=f.intermediate_spec(path_length=0)).certificates)


def test_sha1_signature_is_refused() -> None:
    chain = f.build_chain()
    chain.certificates[0] = f.resign_with_sha1(chain.certificates[0], f.intermediate_spec())
    refused(chain, "SHA-1")


# --- validity and revocation endpoints -------------------------------------------------------


def test_validity_is_inclusive_at_both_ends() -> None:
    leaf = f.leaf_spec(not_before=f.NOW - timedelta(days=1), not_after=f.NOW + timedelta(days=1))
    chain = f.build_chain(leaf).certificates
    assert certificates_not_valid_at(chain, f.NOW - timedelta(days=1)) is None
    assert certificates_not_valid_at(chain, f.NOW + timedelta(days=1)) is None
    late = certificates_not_valid_at(chain, f.NOW + timedelta(days=1, seconds=1))
    assert late is not None and "expired at" in late
    early = certificates_not_valid_at(chain, f.NOW - timedelta(days=1, seconds=1))
    assert early is not None and "not valid before" in early


def test_revocation_endpoints_are_listed() -> None:
    chain = f.build_chain()
    assert revocation_endpoints(chain.certificates[0]) == ()
