"""One typed view of a Notary Project signature envelope, whichever format (JWS or COSE_Sign1)
carried it, and the rules both formats share: the signed attributes each signing scheme requires,
the critical-header allow-list, and verification of the signature over the exact signed bytes.

An ``Envelope`` is only parsed, not trusted: ``verify_envelope_signature`` checks the signature
with the signing certificate's key, and the payload is read only after that (``verify.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from trustd.formats.notation.algorithms import (
    SignatureAlgorithm,
    algorithm_for_key,
    describe_key,
    signature_valid,
)
from trustd.formats.notation.chain import load_certificate
from trustd.formats.notation.errors import (
    InvalidEnvelope,
    UnsupportedCriticalHeader,
    VerificationPluginRequired,
)

MEDIA_TYPE_JWS: Final = "application/jose+json"
MEDIA_TYPE_COSE: Final = "application/cose"
MEDIA_TYPE_PAYLOAD: Final = "application/vnd.cncf.notary.payload.v1+json"

# The envelope is read whole into memory; real ones are a few kilobytes.
MAX_ENVELOPE_BYTES: Final = 4 * 1024 * 1024
MAX_CHAIN_LENGTH: Final = 10

HEADER_SIGNING_SCHEME: Final = "io.cncf.notary.signingScheme"
HEADER_SIGNING_TIME: Final = "io.cncf.notary.signingTime"
HEADER_AUTHENTIC_SIGNING_TIME: Final = "io.cncf.notary.authenticSigningTime"
HEADER_EXPIRY: Final = "io.cncf.notary.expiry"
HEADER_VERIFICATION_PLUGIN: Final = "io.cncf.notary.verificationPlugin"
HEADER_VERIFICATION_PLUGIN_MIN_VERSION: Final = "io.cncf.notary.verificationPluginMinVersion"
HEADER_TIMESTAMP_SIGNATURE: Final = "io.cncf.notary.timestampSignature"
HEADER_SIGNING_AGENT: Final = "io.cncf.notary.signingAgent"

# Critical headers trustd implements; any other critical header fails verification, as the
# specification requires of headers a verifier does not understand.
IMPLEMENTED_CRITICAL_HEADERS: Final = frozenset(
    {HEADER_SIGNING_SCHEME, HEADER_SIGNING_TIME, HEADER_AUTHENTIC_SIGNING_TIME, HEADER_EXPIRY}
)
PLUGIN_HEADERS: Final = frozenset(
    {HEADER_VERIFICATION_PLUGIN, HEADER_VERIFICATION_PLUGIN_MIN_VERSION}
)

HeaderName = int | str


class SigningScheme(enum.Enum):
    X509 = "notary.x509"
    SIGNING_AUTHORITY = "notary.x509.signingAuthority"


@dataclass(frozen=True)
class SignedAttributes:
    """The protected (signed) headers, decoded."""

    algorithm: SignatureAlgorithm
    content_type: str
    signing_scheme: SigningScheme
    # notary.x509's signing time is the signer's clock: informational, never used for trust.
    signing_time: datetime | None
    # notary.x509.signingAuthority's signing time, vouched for by the signing authority.
    authentic_signing_time: datetime | None
    expiry: datetime | None
    critical: tuple[HeaderName, ...]
    # Protected headers beyond the standard ones (e.g. a verification plugin's name).
    extended: Mapping[HeaderName, object] = field(default_factory=dict, compare=False)

    @property
    def extended_critical(self) -> tuple[HeaderName, ...]:
        """Critical headers trustd does not implement."""
        return tuple(name for name in self.critical if name not in IMPLEMENTED_CRITICAL_HEADERS)


@dataclass(frozen=True)
class Envelope:
    """A parsed signature envelope. ``signed_bytes`` are exactly the bytes the signature covers:
    for JWS the protected header and payload as received in base64url joined by ``.``; for COSE
    the ``Sig_structure`` built around the protected header bytes as received."""

    media_type: str
    protected: bytes
    signed_bytes: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    attributes: SignedAttributes
    certificate_chain: tuple[x509.Certificate, ...] = field(repr=False)
    timestamp_signature: bytes | None = field(default=None, repr=False)
    signing_agent: str | None = None

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self.certificate_chain[0]

    @property
    def format_name(self) -> str:
        return "JWS" if self.media_type == MEDIA_TYPE_JWS else "COSE"


def signed_attributes(
    what: str,
    *,
    algorithm: SignatureAlgorithm,
    content_type: object,
    critical: Sequence[HeaderName],
    present: frozenset[HeaderName],
    signing_scheme: object,
    signing_time: datetime | None,
    authentic_signing_time: datetime | None,
    expiry: datetime | None,
    extended: Mapping[HeaderName, object],
) -> SignedAttributes:
    """The signed attributes, checked against the specification's rules for both formats.

    ``what`` names the envelope in messages; ``present`` is every protected header name.
    """
    if not isinstance(content_type, str):
        raise InvalidEnvelope(f"{what}: the protected content type (cty) is missing")
    try:
        scheme = SigningScheme(signing_scheme)
    except ValueError:
        raise InvalidEnvelope(
            f"{what}: signing scheme {signing_scheme!r} is not one of "
            f"{', '.join(s.value for s in SigningScheme)}"
        ) from None
    if scheme is SigningScheme.X509:
        if signing_time is None:
            raise InvalidEnvelope(f"{what}: {HEADER_SIGNING_TIME} is required for {scheme.value}")
        if HEADER_AUTHENTIC_SIGNING_TIME in present:
            raise InvalidEnvelope(
                f"{what}: {HEADER_AUTHENTIC_SIGNING_TIME} must not be present for {scheme.value}"
            )
        time_signed = signing_time
    else:
        if authentic_signing_time is None:
            raise InvalidEnvelope(
                f"{what}: {HEADER_AUTHENTIC_SIGNING_TIME} is required for {scheme.value}"
            )
        if HEADER_SIGNING_TIME in present:
            raise InvalidEnvelope(
                f"{what}: {HEADER_SIGNING_TIME} must not be present for {scheme.value}"
            )
        time_signed = authentic_signing_time
    if expiry is not None and expiry <= time_signed:
        raise InvalidEnvelope(
            f"{what}: expiry {expiry.isoformat()} is not after the signing time "
            f"{time_signed.isoformat()}"
        )

    if len(critical) == 0:
        raise InvalidEnvelope(f"{what}: the crit header is missing or empty")
    if len(set(critical)) != len(critical):
        raise InvalidEnvelope(f"{what}: the crit header lists a header twice")
    for name in critical:
        if name not in present:
            raise InvalidEnvelope(f"{what}: header {name!r} is marked critical but not present")
    required = {HEADER_SIGNING_SCHEME}
    if expiry is not None:
        required.add(HEADER_EXPIRY)
    if scheme is SigningScheme.SIGNING_AUTHORITY:
        required.add(HEADER_AUTHENTIC_SIGNING_TIME)
    missing = sorted(required.difference(critical))
    if missing:
        raise InvalidEnvelope(f"{what}: headers {', '.join(missing)} must be marked critical")
    return SignedAttributes(
        algorithm=algorithm,
        content_type=content_type,
        signing_scheme=scheme,
        signing_time=signing_time if scheme is SigningScheme.X509 else None,
        authentic_signing_time=authentic_signing_time,
        expiry=expiry,
        critical=tuple(critical),
        extended=dict(extended),
    )


def check_critical_headers(envelope: Envelope) -> None:
    """Refuse an envelope that marks critical a header trustd does not implement, or that names
    a verification plugin at all (the specification makes those headers critical; notation
    refuses them unmarked too)."""
    attributes = envelope.attributes
    unknown = attributes.extended_critical
    plugin_headers = sorted(name for name in PLUGIN_HEADERS if name in attributes.extended)
    what = f"{envelope.format_name} signature"
    if plugin_headers:
        plugin = attributes.extended.get(HEADER_VERIFICATION_PLUGIN)
        named = f" {plugin!r}" if isinstance(plugin, str) else ""
        raise VerificationPluginRequired(
            f"{what} requires the Notation verification plugin{named} "
            f"(header{'s' if len(plugin_headers) > 1 else ''} "
            f"{', '.join(repr(name) for name in plugin_headers)}); trustd does not run "
            "verification plugins, so it cannot verify this signature"
        )
    if unknown:
        raise UnsupportedCriticalHeader(
            f"{what} marks header{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)} critical, which trustd does not "
            "implement"
        )


def verify_envelope_signature(envelope: Envelope) -> None:
    """Check the signature over the envelope's signed bytes with the signing certificate's key,
    after checking that the ``alg`` header is the one algorithm that key signs with."""
    what = f"{envelope.format_name} signature"
    leaf = envelope.signing_certificate
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise InvalidEnvelope(
            f"{what}: the signing certificate's public key cannot be read ({error})"
        ) from None
    expected = algorithm_for_key(key)
    alg = envelope.attributes.algorithm
    if expected is None:
        raise InvalidEnvelope(
            f"{what}: the signing certificate {leaf.subject.rfc4514_string()!r} has "
            f"{describe_key(key)}; Notary Project signatures need RSA 2048/3072/4096 or EC "
            "P-256/P-384/P-521"
        )
    if expected is not alg:
        raise InvalidEnvelope(
            f"{what}: algorithm {alg.jws_name} does not match the signing certificate's key "
            f"({describe_key(key)}, which signs with {expected.jws_name})"
        )
    if not signature_valid(alg, key, envelope.signature, envelope.signed_bytes):
        raise InvalidEnvelope(
            f"{what}: the {alg.jws_name} signature does not verify with the signing "
            f"certificate {leaf.subject.rfc4514_string()!r} (tampered or corrupted)"
        )


def parse_certificates(what: str, ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    """The envelope's certificate chain, leaf first; InvalidEnvelope if any is not DER X.509."""
    if not ders:
        raise InvalidEnvelope(f"{what}: the certificate chain is missing or empty")
    if len(ders) > MAX_CHAIN_LENGTH:
        raise InvalidEnvelope(
            f"{what}: the certificate chain has {len(ders)} certificates, more than "
            f"{MAX_CHAIN_LENGTH}"
        )
    chain = []
    for index, der in enumerate(ders):
        try:
            chain.append(load_certificate(der))
        except ValueError as error:
            raise InvalidEnvelope(
                f"{what}: certificate {index + 1} of the chain is not a DER X.509 certificate "
                f"({error})"
            ) from None
    return tuple(chain)
