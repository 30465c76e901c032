"""Sigstore bundles: what cosign 3 signs images with by default.

A bundle (sigstore/protobuf-specs ``protos/sigstore_bundle.proto``, in protobuf's JSON mapping)
carries ``mediaType``, ``verificationMaterial`` (a ``publicKey`` hint, or keyless certificate
material) and the signed content: for images a DSSE envelope (``envelope.proto``;
secure-systems-lab/dsse ``protocol.md``) over an in-toto statement (in-toto/attestation
``spec/v1/statement.md``) whose subject is the image manifest's digest. The DSSE signature signs
``PAE(payloadType, payload)``, never the payload alone.

cosign 3 (``pkg/oci/remote/write.go``, ``WriteAttestationNewBundleFormat``) pushes the bundle as an
OCI referrer of the image: an image manifest with ``artifactType``
``application/vnd.dev.sigstore.bundle.v0.3+json``, the empty config, exactly one layer of that
media type holding the bundle JSON, ``subject`` the signed manifest, and the annotations
``dev.sigstore.bundle.predicateType`` (``https://sigstore.dev/cosign/sign/v1`` for
``cosign sign``) and ``dev.sigstore.bundle.content: dsse-envelope``.

Parsing is strict where protobuf's JSON reading is (unknown fields, duplicates, wrong types are
errors); the in-toto statement follows in-toto's rule of ignoring unknown fields, since it is
parsed only after the signature verified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from trustd.formats.cosign import _json
from trustd.formats.cosign.errors import (
    KEYLESS_MESSAGE,
    CosignPayloadInvalid,
    CosignSignatureInvalid,
    KeylessNotSupported,
    MalformedCosignSignature,
    SignatureForOtherDigest,
    UnacceptedPredicateType,
)
from trustd.formats.cosign.keys import CosignPublicKey

MEDIA_TYPE_V03: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPES: Final = frozenset(
    {
        MEDIA_TYPE_V03,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
# What a discovery step looks for among an image's referrers.
REFERRER_ARTIFACT_TYPE: Final = MEDIA_TYPE_V03
ANNOTATION_PREDICATE_TYPE: Final = "dev.sigstore.bundle.predicateType"
ANNOTATION_CONTENT: Final = "dev.sigstore.bundle.content"

IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPES: Final = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
COSIGN_SIGN_PREDICATE_TYPE: Final = "https://sigstore.dev/cosign/sign/v1"
# Only statements that mean "this image is signed" admit it by default: an SBOM or a
# vulnerability report about an image, signed by the same key, is not an approval of it.
DEFAULT_PREDICATE_TYPES: Final = frozenset({COSIGN_SIGN_PREDICATE_TYPE})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class BundleSignature:
    """A bundle as discovered: the referrer's layer bytes (digest checked by the registry
    client) and that layer's media type. ``source`` says where it was found, for messages."""

    data: bytes = field(repr=False)
    media_type: str = MEDIA_TYPE_V03
    source: str = ""

    def describe(self) -> str:
        return self.source or "sigstore bundle"


@dataclass(frozen=True)
class ParsedBundle:
    """A bundle's parts, none of them trusted yet."""

    media_type: str
    key_hint: str  # verificationMaterial.publicKey.hint, "" when absent
    certificates: tuple[bytes, ...]  # DER certificates: keyless material, never trusted here
    payload_type: str  # "" for a message-signature bundle
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    keyid: str = ""  # the DSSE signature's unauthenticated key ID
    message_signature: bool = False  # signs a blob digest, not a statement


@dataclass(frozen=True)
class Subject:
    name: str
    digest: Mapping[str, str] = field(compare=False, hash=False)


@dataclass(frozen=True)
class InTotoStatement:
    statement_type: str
    subjects: tuple[Subject, ...]
    predicate_type: str

    def names_digest(self, manifest_digest: str) -> bool:
        algorithm, _, value = manifest_digest.partition(":")
        return any(subject.digest.get(algorithm) == value for subject in self.subjects)


@dataclass(frozen=True)
class BundleVerified:
    """A bundle that configured keys verified, whose statement names the pulled digest."""

    signature: BundleSignature
    keys: tuple[tuple[CosignPublicKey, str], ...]  # (key, scheme) for every key that verified
    statement: InTotoStatement
    bundle: ParsedBundle


def parse_bundle(data: bytes, where: str = "sigstore bundle") -> ParsedBundle:
    """The parts of a bundle's JSON; MalformedCosignSignature if it is not one."""
    err = MalformedCosignSignature
    top = _json.expect_object(_json.loads(data, where, err), where, err)
    _json.expect_keys(
        top,
        where,
        err,
        required=("mediaType", "verificationMaterial"),
        optional=("dsseEnvelope", "messageSignature"),
    )
    media_type = _json.expect_string(top["mediaType"], f"{where}: mediaType", err)
    if media_type not in BUNDLE_MEDIA_TYPES:
        raise err(f"{where}: mediaType {media_type!r} is not a Sigstore bundle version accepted")
    hint, certificates = _verification_material(top["verificationMaterial"], where)

    if ("dsseEnvelope" in top) == ("messageSignature" in top):
        raise err(f"{where}: needs exactly one of dsseEnvelope and messageSignature")
    if "messageSignature" in top:
        signature = _message_signature(top["messageSignature"], where)
        return ParsedBundle(media_type, hint, certificates, "", b"", signature, "", True)

    env_what = f"{where}: dsseEnvelope"
    envelope = _json.expect_object(top["dsseEnvelope"], env_what, err)
    _json.expect_keys(envelope, env_what, err, required=("payload", "payloadType", "signatures"))
    payload = _json.any_b64decode(
        _json.expect_string(envelope["payload"], f"{env_what}.payload", err),
        f"{env_what}.payload",
        err,
    )
    payload_type = _json.expect_string(envelope["payloadType"], f"{env_what}.payloadType", err)
    signatures = _json.expect_list(envelope["signatures"], f"{env_what}.signatures", err)
    if len(signatures) != 1:
        # protobuf-specs: a bundle's envelope MUST have exactly one signature.
        raise err(f"{env_what} has {len(signatures)} signatures; a bundle carries exactly one")
    sig_what = f"{env_what}.signatures[0]"
    entry = _json.expect_object(signatures[0], sig_what, err)
    _json.expect_keys(entry, sig_what, err, required=("sig",), optional=("keyid",))
    signature = _json.any_b64decode(
        _json.expect_string(entry["sig"], f"{sig_what}.sig", err), f"{sig_what}.sig", err
    )
    keyid = _json.expect_string(entry.get("keyid", ""), f"{sig_what}.keyid", err)
    if hint and keyid and hint != keyid:
        # protobuf-specs: the material's key hint and the envelope's must be the same.
        raise err(f"{where}: key hint {hint!r} differs from the envelope's keyid {keyid!r}")
    return ParsedBundle(media_type, hint, certificates, payload_type, payload, signature, keyid)


def _verification_material(value: Any, where: str) -> tuple[str, tuple[bytes, ...]]:
    err = MalformedCosignSignature
    what = f"{where}: verificationMaterial"
    material = _json.expect_object(value, what, err)
    kinds = ("publicKey", "x509CertificateChain", "certificate")
    _json.expect_keys(
        material, what, err, optional=(*kinds, "tlogEntries", "timestampVerificationData")
    )
    present = [kind for kind in kinds if kind in material]
    if len(present) != 1:
        raise err(f"{what} needs exactly one of {', '.join(kinds)}")
    if "tlogEntries" in material:
        entries = _json.expect_list(material["tlogEntries"], f"{what}.tlogEntries", err)
        for index, item in enumerate(entries):
            _json.expect_object(item, f"{what}.tlogEntries[{index}]", err)
    if "timestampVerificationData" in material:
        _json.expect_object(
            material["timestampVerificationData"], f"{what}.timestampVerificationData", err
        )

    kind = present[0]
    if kind == "publicKey":
        key = _json.expect_object(material[kind], f"{what}.publicKey", err)
        _json.expect_keys(key, f"{what}.publicKey", err, optional=("hint",))
        return _json.expect_string(key.get("hint", ""), f"{what}.publicKey.hint", err), ()
    if kind == "certificate":
        return "", (_certificate(material[kind], f"{what}.certificate"),)
    chain_what = f"{what}.x509CertificateChain"
    chain = _json.expect_object(material[kind], chain_what, err)
    _json.expect_keys(chain, chain_what, err, required=("certificates",))
    items = _json.expect_list(chain["certificates"], f"{chain_what}.certificates", err)
    if not items:
        raise err(f"{chain_what} has no certificates")
    certificates = tuple(
        _certificate(item, f"{chain_what}.certificates[{index}]")
        for index, item in enumerate(items)
    )
    return "", certificates


def _certificate(value: Any, what: str) -> bytes:
    err = MalformedCosignSignature
    certificate = _json.expect_object(value, what, err)
    _json.expect_keys(certificate, what, err, required=("rawBytes",))
    raw = _json.expect_string(certificate["rawBytes"], f"{what}.rawBytes", err)
    return _json.any_b64decode(raw, f"{what}.rawBytes", err)


def _message_signature(value: Any, where: str) -> bytes:
    err = MalformedCosignSignature
    what = f"{where}: messageSignature"
    message = _json.expect_object(value, what, err)
    _json.expect_keys(message, what, err, required=("signature",), optional=("messageDigest",))
    if "messageDigest" in message:
        digest = _json.expect_object(message["messageDigest"], f"{what}.messageDigest", err)
        _json.expect_keys(digest, f"{what}.messageDigest", err, optional=("algorithm", "digest"))
    raw = _json.expect_string(message["signature"], f"{what}.signature", err)
    return _json.any_b64decode(raw, f"{what}.signature", err)


def parse_statement(payload: bytes, where: str = "in-toto statement") -> InTotoStatement:
    """An in-toto statement (v1 or v0.1); CosignPayloadInvalid if it is not one.

    Call only on a payload whose signature verified.
    """
    err = CosignPayloadInvalid
    top = _json.expect_object(_json.loads(payload, where, err), where, err)
    for key in ("_type", "subject", "predicateType"):
        if key not in top:
            raise err(f"{where} has no {key!r}")
    statement_type = _json.expect_string(top["_type"], f"{where}: _type", err)
    if statement_type not in STATEMENT_TYPES:
        raise err(f"{where}: _type {statement_type!r} is not an in-toto statement type")
    predicate_type = _json.expect_string(top["predicateType"], f"{where}: predicateType", err)
    if not predicate_type:
        raise err(f"{where}: predicateType is empty")
    if "predicate" in top and top["predicate"] is not None:
        _json.expect_object(top["predicate"], f"{where}: predicate", err)
    items = _json.expect_list(top["subject"], f"{where}: subject", err)
    if not items:
        raise err(f"{where}: subject is empty")
    subjects = []
    for index, item in enumerate(items):
        what = f"{where}: subject[{index}]"
        subject = _json.expect_object(item, what, err)
        if "digest" not in subject:
            raise err(f"{what} has no digest")
        digest = _json.expect_object(subject["digest"], f"{what}.digest", err)
        for algorithm, value in digest.items():
            _json.expect_string(value, f"{what}.digest.{algorithm}", err)
        name = _json.expect_string(subject.get("name", ""), f"{what}.name", err)
        subjects.append(Subject(name, dict(digest)))
    return InTotoStatement(statement_type, tuple(subjects), predicate_type)


def verify_bundle(
    candidate: BundleSignature,
    manifest_digest: str,
    keys: Sequence[CosignPublicKey],
    accepted_predicate_types: frozenset[str] = DEFAULT_PREDICATE_TYPES,
) -> BundleVerified:
    """Verify one bundle against the configured keys; raise why it does not count otherwise."""
    where = candidate.describe()
    if candidate.media_type not in BUNDLE_MEDIA_TYPES:
        raise MalformedCosignSignature(
            f"{where}: layer media type {candidate.media_type!r} is not a Sigstore bundle"
        )
    parsed = parse_bundle(candidate.data, where)
    if parsed.message_signature:
        raise MalformedCosignSignature(
            f"{where}: a message-signature bundle signs a blob, not an image manifest; "
            "cosign signs images with DSSE bundles"
        )
    if parsed.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise MalformedCosignSignature(
            f"{where}: DSSE payloadType {parsed.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE!r}"
        )

    signed = pae(parsed.payload_type, parsed.payload)
    verified = tuple(
        (key, scheme)
        for key in keys
        if (scheme := key.verify(parsed.signature, signed)) is not None
    )
    if not verified:
        tried = ", ".join(key.describe() for key in keys)
        if parsed.certificates:
            raise KeylessNotSupported(
                f"{where}: signed with a certificate's key, not with a configured key "
                f"(tried {tried}); the certificate in the bundle is not trusted by itself; "
                f"{KEYLESS_MESSAGE}"
            )
        named = next((key for key in keys if parsed.key_hint and key.hint == parsed.key_hint), None)
        if named is not None:
            detail = f"it names configured key {named.describe()}, but that key does not verify it"
        elif parsed.key_hint:
            detail = f"it names key hint {parsed.key_hint!r}, which is not configured"
        else:
            detail = "it does not verify with any configured key"
        raise CosignSignatureInvalid(f"{where}: {detail} (tried {tried})")

    statement = parse_statement(parsed.payload, f"{where}: statement")
    if statement.predicate_type not in accepted_predicate_types:
        accepted = ", ".join(sorted(accepted_predicate_types))
        raise UnacceptedPredicateType(
            f"{where}: a {statement.predicate_type!r} statement signed by "
            f"{_names(verified)} is not an image signature (accepted: {accepted})"
        )
    if not statement.names_digest(manifest_digest):
        named_digests = sorted(
            f"{algorithm}:{value}"
            for subject in statement.subjects
            for algorithm, value in subject.digest.items()
        )
        raise SignatureForOtherDigest(
            f"{where}: signed by {_names(verified)} for {', '.join(named_digests) or 'no digest'}, "
            f"not for the pulled {manifest_digest}"
        )
    return BundleVerified(candidate, verified, statement, parsed)


def _names(verified: Sequence[tuple[CosignPublicKey, str]]) -> str:
    return ", ".join(f"key {key.describe()}" for key, _ in verified)
