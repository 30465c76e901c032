"""Parsing of the COSE envelope (``application/cose``): a ``COSE_Sign1_Tagged`` message
(RFC 9052, CBOR tag 18) with the Notary Project's header parameters.

The signature covers the ``Sig_structure`` ``["Signature1", protected, h'', payload]``, whose
``protected`` is the protected header byte string exactly as received: it is kept, never
re-encoded from its decoded map.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

from trustd.formats.notation import cbor
from trustd.formats.notation.algorithms import BY_COSE_LABEL
from trustd.formats.notation.envelope import (
    HEADER_AUTHENTIC_SIGNING_TIME,
    HEADER_EXPIRY,
    HEADER_SIGNING_AGENT,
    HEADER_SIGNING_SCHEME,
    HEADER_SIGNING_TIME,
    HEADER_TIMESTAMP_SIGNATURE,
    MAX_ENVELOPE_BYTES,
    MEDIA_TYPE_COSE,
    Envelope,
    HeaderName,
    parse_certificates,
    signed_attributes,
)
from trustd.formats.notation.errors import InvalidEnvelope

_WHAT: Final = "COSE signature"
TAG_COSE_SIGN1: Final = 18
TAG_EPOCH_TIME: Final = 1
LABEL_ALG: Final = 1
LABEL_CRIT: Final = 2
LABEL_CONTENT_TYPE: Final = 3
LABEL_X5CHAIN: Final = 33
# RFC 9052: crit must not list the labels 0 to 8, whose meaning COSE itself fixes.
_RESERVED_CRIT_LABELS: Final = range(0, 9)
_STANDARD_PROTECTED: Final = frozenset(
    {
        LABEL_ALG,
        LABEL_CRIT,
        LABEL_CONTENT_TYPE,
        LABEL_X5CHAIN,
        HEADER_SIGNING_SCHEME,
        HEADER_SIGNING_TIME,
        HEADER_AUTHENTIC_SIGNING_TIME,
        HEADER_EXPIRY,
    }
)


def parse_cose(data: bytes) -> Envelope:
    """The envelope a COSE_Sign1_Tagged message holds; InvalidEnvelope if it is not a
    well-formed Notary Project COSE envelope. The signature is not verified here."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidEnvelope(f"{_WHAT} is larger than {MAX_ENVELOPE_BYTES} bytes")
    message = _decode(data, "the envelope")
    if not isinstance(message, cbor.Tag) or message.number != TAG_COSE_SIGN1:
        raise InvalidEnvelope(f"{_WHAT}: the envelope is not a COSE_Sign1 message (CBOR tag 18)")
    parts = message.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise InvalidEnvelope(f"{_WHAT}: COSE_Sign1 is not an array of four items")
    protected_bytes, unprotected, payload, signature = parts
    if not isinstance(protected_bytes, bytes):
        raise InvalidEnvelope(f"{_WHAT}: the protected header is not a byte string")
    if not isinstance(unprotected, dict):
        raise InvalidEnvelope(f"{_WHAT}: the unprotected header is not a map")
    if payload is None:
        raise InvalidEnvelope(f"{_WHAT}: detached payloads are not supported")
    if not isinstance(payload, bytes) or not payload:
        raise InvalidEnvelope(f"{_WHAT}: the payload is missing or not a byte string")
    if not isinstance(signature, bytes) or not signature:
        raise InvalidEnvelope(f"{_WHAT}: the signature is missing or not a byte string")
    header = _decode(protected_bytes, "the protected header") if protected_bytes else {}
    if not isinstance(header, dict):
        raise InvalidEnvelope(f"{_WHAT}: the protected header is not a map")
    both = sorted(repr(label) for label in set(header) & set(unprotected))
    if both:
        raise InvalidEnvelope(
            f"{_WHAT}: header labels {', '.join(both)} are both protected and unprotected"
        )

    alg_label = header.get(LABEL_ALG)
    algorithm = BY_COSE_LABEL.get(alg_label) if isinstance(alg_label, int) else None
    if algorithm is None:
        raise InvalidEnvelope(
            f"{_WHAT}: algorithm {alg_label!r} is not one of "
            f"{', '.join(str(label) for label in sorted(BY_COSE_LABEL))}"
        )
    critical = header.get(LABEL_CRIT, [])
    if not isinstance(critical, list) or not all(
        isinstance(label, int | str) and not isinstance(label, bool) for label in critical
    ):
        raise InvalidEnvelope(f"{_WHAT}: crit is not an array of header labels")
    reserved = [
        label for label in critical if isinstance(label, int) and label in _RESERVED_CRIT_LABELS
    ]
    if reserved:
        raise InvalidEnvelope(f"{_WHAT}: crit lists COSE labels {reserved}, which it must not")
    content_type = header.get(LABEL_CONTENT_TYPE)
    keys: list[HeaderName] = [key for key in header if not isinstance(key, bytes)]
    if len(keys) != len(header):
        raise InvalidEnvelope(f"{_WHAT}: the protected header has a byte-string label")
    extended: dict[HeaderName, object] = {
        key: header[key] for key in keys if key not in _STANDARD_PROTECTED
    }
    attributes = signed_attributes(
        _WHAT,
        algorithm=algorithm,
        content_type=content_type,
        critical=[label for label in critical if isinstance(label, int | str)],
        present=frozenset(keys),
        signing_scheme=header.get(HEADER_SIGNING_SCHEME),
        signing_time=_time(header, HEADER_SIGNING_TIME),
        authentic_signing_time=_time(header, HEADER_AUTHENTIC_SIGNING_TIME),
        expiry=_time(header, HEADER_EXPIRY),
        extended=extended,
    )

    # x5chain is unprotected in Notation's envelopes; COSE also allows it protected.
    x5chain = unprotected.get(LABEL_X5CHAIN, header.get(LABEL_X5CHAIN))
    if isinstance(x5chain, bytes):
        x5chain = [x5chain]
    if not isinstance(x5chain, list) or not all(isinstance(cert, bytes) for cert in x5chain):
        raise InvalidEnvelope(f"{_WHAT}: x5chain is missing or not an array of byte strings")
    chain = parse_certificates(_WHAT, [cert for cert in x5chain if isinstance(cert, bytes)])
    timestamp = unprotected.get(HEADER_TIMESTAMP_SIGNATURE)
    if timestamp is not None and not isinstance(timestamp, bytes):
        raise InvalidEnvelope(f"{_WHAT}: {HEADER_TIMESTAMP_SIGNATURE} is not a byte string")
    agent = unprotected.get(HEADER_SIGNING_AGENT)
    if agent is not None and not isinstance(agent, str):
        raise InvalidEnvelope(f"{_WHAT}: {HEADER_SIGNING_AGENT} is not a text string")

    return Envelope(
        media_type=MEDIA_TYPE_COSE,
        protected=protected_bytes,
        signed_bytes=sig_structure(protected_bytes, payload),
        payload=payload,
        signature=signature,
        attributes=attributes,
        certificate_chain=chain,
        timestamp_signature=timestamp,
        signing_agent=agent,
    )


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes a COSE_Sign1 signature covers (RFC 9052 section 4.4), with no external data."""
    return cbor.encode(["Signature1", protected, b"", payload])


def _decode(data: bytes, what: str) -> cbor.CborValue:
    try:
        return cbor.decode(data)
    except cbor.CborError as error:
        raise InvalidEnvelope(f"{_WHAT}: {what} is not valid CBOR ({error})") from None


def _time(header: dict[cbor.CborKey, cbor.CborValue], name: str) -> datetime | None:
    """An epoch-based date/time (CBOR tag 1) as an aware UTC datetime."""
    if name not in header:
        return None
    value = header[name]
    if not isinstance(value, cbor.Tag) or value.number != TAG_EPOCH_TIME:
        raise InvalidEnvelope(f"{_WHAT}: {name} is not an epoch time (CBOR tag 1)")
    seconds = value.value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidEnvelope(f"{_WHAT}: {name} is not a number of seconds")
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise InvalidEnvelope(f"{_WHAT}: {name} is not a finite number of seconds")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidEnvelope(f"{_WHAT}: {name} {seconds} is out of range") from None
