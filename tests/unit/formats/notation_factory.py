"""Builds what Notation signatures are made of, for tests: certificate chains (root CA,
intermediate CA, code signing leaf) with cryptography, and JWS and COSE_Sign1 envelopes signed
the way the Notary Project specifications describe, with knobs to break each rule."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustd.formats.notation.stores import NamedStore, TrustStores
from trustd.formats.notation.trustpolicy import (
    StoreType,
    TrustPolicy,
    TrustStoreRef,
    parse_trust_policy,
)
from trustd.net.descriptor import Descriptor

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
MANIFEST = Descriptor(
    "application/vnd.oci.image.manifest.v1+json",
    "sha256:" + hashlib.sha256(b"the signed manifest").hexdigest(),
    1234,
)
PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
SCHEME = "io.cncf.notary.signingScheme"
SIGNING_TIME = "io.cncf.notary.signingTime"
AUTHENTIC_SIGNING_TIME = "io.cncf.notary.authenticSigningTime"
EXPIRY = "io.cncf.notary.expiry"
PLUGIN = "io.cncf.notary.verificationPlugin"
JWS = "application/jose+json"
COSE = "application/cose"

LEAF_SUBJECT = {"C": "US", "ST": "WA", "L": "Seattle", "O": "acme-rockets.io", "CN": "builder"}
_NAME_OIDS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}
_ALGS = {
    "rsa2048": ("PS256", -37, hashes.SHA256),
    "rsa3072": ("PS384", -38, hashes.SHA384),
    "rsa4096": ("PS512", -39, hashes.SHA512),
    "p256": ("ES256", -7, hashes.SHA256),
    "p384": ("ES384", -35, hashes.SHA384),
    "p521": ("ES512", -36, hashes.SHA512),
}
KEY_KINDS = tuple(_ALGS)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def key(kind: str, index: int = 0) -> PrivateKey:
    """A private key of this kind; cached, since RSA key generation is slow."""
    del index  # only distinguishes cache entries
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    curves = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}
    return ec.generate_private_key(curves[kind])


def name(attributes: Mapping[str, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(_NAME_OIDS[k], v) for k, v in attributes.items()])


def key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)


@dataclass
class CertSpec:
    """How one certificate is made; defaults give a valid CA (ca=True) or leaf (ca=False)."""

    subject: Mapping[str, str]
    key_kind: str = "p256"
    key_index: int = 0
    ca: bool = False
    # basicConstraints: None leaves the extension out.
    basic_constraints: bool | None = None
    basic_constraints_critical: bool = True
    path_length: int | None = None
    key_usage: x509.KeyUsage | None = None
    key_usage_critical: bool = True
    omit_key_usage: bool = False
    ekus: Sequence[x509.ObjectIdentifier] | None = None
    not_before: datetime = NOW - timedelta(days=30)
    not_after: datetime = NOW + timedelta(days=365)
    hash: hashes.HashAlgorithm | None = None
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = ()

    @property
    def private_key(self) -> PrivateKey:
        return key(self.key_kind, self.key_index)


def make_cert(
    spec: CertSpec, issuer: CertSpec | None = None, serial: int | None = None
) -> x509.Certificate:
    issuer = issuer or spec
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(spec.subject))
        .issuer_name(name(issuer.subject))
        .public_key(spec.private_key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    has_constraints = spec.basic_constraints if spec.basic_constraints is not None else spec.ca
    if has_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=spec.ca, path_length=spec.path_length if spec.ca else None),
            critical=spec.basic_constraints_critical,
        )
    if not spec.omit_key_usage:
        usage = spec.key_usage or (
            key_usage(key_cert_sign=True, crl_sign=True)
            if spec.ca
            else key_usage(digital_signature=True)
        )
        builder = builder.add_extension(usage, critical=spec.key_usage_critical)
    if spec.ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.ekus)), critical=False)
    elif not spec.ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    for extension, critical in spec.extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    digest = spec.hash or issuer_hash(issuer)
    return builder.sign(issuer.private_key, digest)


def _der_header(data: bytes, position: int) -> tuple[int, int]:
    """(offset of the content, content length) of the DER element at ``position``."""
    first = data[position + 1]
    if first < 0x80:
        return position + 2, first
    count = first & 0x7F
    length = int.from_bytes(data[position + 2 : position + 2 + count], "big")
    return position + 2 + count, length


def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = (len(content).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(content).to_bytes(size, "big") + content


_ECDSA_SHA1 = _der(0x30, bytes.fromhex("06072a8648ce3d0401"))


def resign_with_sha1(cert: x509.Certificate, issuer: CertSpec) -> x509.Certificate:
    """The certificate signed again by an EC issuer with ECDSA over SHA-1 (cryptography no longer
    signs certificates with SHA-1, so the DER is put together here)."""
    assert isinstance(issuer.private_key, ec.EllipticCurvePrivateKey)
    der = cert.public_bytes(serialization.Encoding.DER)
    start, _ = _der_header(der, 0)
    tbs_content, tbs_length = _der_header(der, start)
    tbs = der[tbs_content : tbs_content + tbs_length]
    # Inside the TBSCertificate: [0] version, serial number, then the signature algorithm.
    position = 0
    for _ in range(2):
        content, length = _der_header(tbs, position)
        position = content + length
    content, length = _der_header(tbs, position)
    new_tbs = _der(0x30, tbs[:position] + _ECDSA_SHA1 + tbs[content + length :])
    signature = issuer.private_key.sign(new_tbs, ec.ECDSA(hashes.SHA1()))
    return x509.load_der_x509_certificate(
        _der(0x30, new_tbs + _ECDSA_SHA1 + _der(0x03, b"\x00" + signature))
    )


def issuer_hash(spec: CertSpec) -> hashes.HashAlgorithm:
    return _ALGS[spec.key_kind][2]()


def root_spec(**changes: Any) -> CertSpec:
    fields = {"subject": {"C": "US", "O": "acme-rockets.io", "CN": "Root CA"}, "ca": True}
    fields.update(changes)
    return CertSpec(**fields)


def intermediate_spec(**changes: Any) -> CertSpec:
    fields = {
        "subject": {"C": "US", "O": "acme-rockets.io", "CN": "Intermediate CA"},
        "ca": True,
        "key_index": 1,
    }
    fields.update(changes)
    return CertSpec(**fields)


def leaf_spec(**changes: Any) -> CertSpec:
    fields = {"subject": dict(LEAF_SUBJECT), "key_index": 2}
    fields.update(changes)
    return CertSpec(**fields)


@dataclass
class Chain:
    certificates: list[x509.Certificate]
    leaf_key: PrivateKey
    leaf_kind: str

    @property
    def root(self) -> x509.Certificate:
        return self.certificates[-1]


def build_chain(
    leaf: CertSpec | None = None,
    intermediate: CertSpec | None = None,
    root: CertSpec | None = None,
    *,
    with_intermediate: bool = True,
) -> Chain:
    root = root or root_spec()
    leaf = leaf or leaf_spec()
    specs = [leaf, intermediate or intermediate_spec()] if with_intermediate else [leaf]
    specs.append(root)
    certificates = [make_cert(spec, specs[i + 1]) for i, spec in enumerate(specs[:-1])]
    certificates.append(make_cert(root))
    return Chain(certificates, leaf.private_key, leaf.key_kind)


def payload_for(descriptor: Descriptor = MANIFEST) -> bytes:
    return json.dumps({"targetArtifact": descriptor.to_json()}).encode()


def _sign(private_key: PrivateKey, kind: str, data: bytes, alg_kind: str | None = None) -> bytes:
    digest = _ALGS[alg_kind or kind][2]()
    if isinstance(private_key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return private_key.sign(data, pss, digest)
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(digest)))
    width = (private_key.curve.key_size + 7) // 8
    return r.to_bytes(width, "big") + s.to_bytes(width, "big")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Headers:
    """The signed attributes of an envelope; ``None`` leaves a header out."""

    scheme: str = "notary.x509"
    signing_time: datetime | None = NOW - timedelta(hours=1)
    authentic_signing_time: datetime | None = None
    expiry: datetime | None = None
    content_type: str | None = PAYLOAD_TYPE
    # Overrides the computed crit list.
    crit: list[Any] | None = None
    extra: dict[Any, Any] = field(default_factory=dict)
    extra_crit: list[Any] = field(default_factory=list)
    # Names the algorithm of another key kind (and signs with that hash).
    alg_kind: str | None = None


def signing_authority_headers(**changes: Any) -> Headers:
    fields: dict[str, Any] = {
        "scheme": "notary.x509.signingAuthority",
        "signing_time": None,
        "authentic_signing_time": NOW - timedelta(hours=1),
    }
    fields.update(changes)
    return Headers(**fields)


def _crit(headers: Headers) -> list[Any]:
    if headers.crit is not None:
        return headers.crit
    crit: list[Any] = [SCHEME]
    if headers.authentic_signing_time is not None:
        crit.append(AUTHENTIC_SIGNING_TIME)
    if headers.expiry is not None:
        crit.append(EXPIRY)
    return crit + headers.extra_crit


def sign_jws(
    chain: Chain,
    payload: bytes | None = None,
    headers: Headers | None = None,
    *,
    unprotected: dict[str, Any] | None = None,
) -> bytes:
    headers = headers or Headers()
    alg_kind = headers.alg_kind or chain.leaf_kind
    protected: dict[str, Any] = {"alg": _ALGS[alg_kind][0], "crit": _crit(headers)}
    if headers.content_type is not None:
        protected["cty"] = headers.content_type
    protected[SCHEME] = headers.scheme
    for header, moment in (
        (SIGNING_TIME, headers.signing_time),
        (AUTHENTIC_SIGNING_TIME, headers.authentic_signing_time),
        (EXPIRY, headers.expiry),
    ):
        if moment is not None:
            protected[header] = moment.isoformat().replace("+00:00", "Z")
    protected.update(headers.extra)
    protected_b64 = _b64url(json.dumps(protected).encode())
    payload_b64 = _b64url(payload if payload is not None else payload_for())
    signature = _sign(
        chain.leaf_key, chain.leaf_kind, f"{protected_b64}.{payload_b64}".encode(), alg_kind
    )
    header = {
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in chain.certificates
        ],
        "io.cncf.notary.signingAgent": "trustd-tests/1.0",
    }
    header.update(unprotected or {})
    envelope = {
        "payload": payload_b64,
        "protected": protected_b64,
        "header": header,
        "signature": _b64url(signature),
    }
    return json.dumps(envelope).encode()


# --- a small CBOR encoder of its own, so COSE test envelopes do not rest on the code tested ---


@dataclass(frozen=True)
class CborTag:
    number: int
    value: Any


def cbor(value: Any) -> bytes:
    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << (8 * size):
                return bytes([major << 5 | info]) + n.to_bytes(size, "big")
        raise ValueError(n)

    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    if isinstance(value, CborTag):
        return head(6, value.number) + cbor(value.value)
    raise TypeError(type(value))


def sign_cose(
    chain: Chain,
    payload: bytes | None = None,
    headers: Headers | None = None,
    *,
    unprotected: dict[Any, Any] | None = None,
    protected_bytes: bytes | None = None,
) -> bytes:
    headers = headers or Headers()
    alg_kind = headers.alg_kind or chain.leaf_kind
    protected: dict[Any, Any] = {1: _ALGS[alg_kind][1], 2: _crit(headers)}
    if headers.content_type is not None:
        protected[3] = headers.content_type
    protected[SCHEME] = headers.scheme
    for header, moment in (
        (SIGNING_TIME, headers.signing_time),
        (AUTHENTIC_SIGNING_TIME, headers.authentic_signing_time),
        (EXPIRY, headers.expiry),
    ):
        if moment is not None:
            protected[header] = CborTag(1, int(moment.timestamp()))
    protected.update(headers.extra)
    body = protected_bytes if protected_bytes is not None else cbor(protected)
    content = payload if payload is not None else payload_for()
    to_sign = cbor(["Signature1", body, b"", content])
    signature = _sign(chain.leaf_key, chain.leaf_kind, to_sign, alg_kind)
    header: dict[Any, Any] = {
        33: [c.public_bytes(serialization.Encoding.DER) for c in chain.certificates],
        "io.cncf.notary.signingAgent": "trustd-tests/1.0",
    }
    header.update(unprotected or {})
    return cbor(CborTag(18, [body, header, content, signature]))


def sign(media_type: str, chain: Chain, *args: Any, **kwargs: Any) -> bytes:
    return (sign_jws if media_type == JWS else sign_cose)(chain, *args, **kwargs)


# --- trust policy and stores --------------------------------------------------------------


def policy(
    level: str = "strict",
    *,
    stores: Sequence[str] = ("ca:acme",),
    identities: Sequence[str] = ("*",),
    override: Mapping[str, str] | None = None,
    verify_timestamp: str | None = None,
) -> TrustPolicy:
    verification: dict[str, Any] = {"level": level}
    if override:
        verification["override"] = dict(override)
    if verify_timestamp:
        verification["verifyTimestamp"] = verify_timestamp
    statement: dict[str, Any] = {
        "name": "test-policy",
        "registryScopes": ["registry.example.com/app"],
        "signatureVerification": verification,
    }
    if level != "skip":
        statement["trustStores"] = list(stores)
        statement["trustedIdentities"] = list(identities)
    document = {"version": "1.0", "trustPolicies": [statement]}
    return parse_trust_policy(json.dumps(document).encode(), "trustpolicy.oci.json").policies[0]


def stores(**named: Sequence[x509.Certificate]) -> TrustStores:
    """Trust stores by "<type>_<name>" keyword (ca_acme=[root], signingAuthority_sa=[...])."""
    result = []
    for key_name, certificates in named.items():
        kind, _, store_name = key_name.partition("_")
        ref = TrustStoreRef(StoreType(kind), store_name)
        result.append(NamedStore(ref, tuple(certificates), f"test store {ref}"))
    return TrustStores.of(*result)
