"""Parsing of the JWS envelope (``application/jose+json``): the flattened JWS JSON serialization
(RFC 7515 section 7.2.2) with the Notary Project's protected and unprotected headers.

The signature covers ``ASCII(protected) '.' ASCII(payload)``, the two base64url strings exactly
as received, so they are kept as received; both must be canonical unpadded base64url.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from trustd.formats.notation import strictjson
from trustd.formats.notation.algorithms import BY_JWS_NAME
from trustd.formats.notation.envelope import (
    HEADER_AUTHENTIC_SIGNING_TIME,
    HEADER_EXPIRY,
    HEADER_SIGNING_AGENT,
    HEADER_SIGNING_SCHEME,
    HEADER_SIGNING_TIME,
    HEADER_TIMESTAMP_SIGNATURE,
    MAX_ENVELOPE_BYTES,
    MEDIA_TYPE_JWS,
    Envelope,
    HeaderName,
    parse_certificates,
    signed_attributes,
)
from trustd.formats.notation.errors import InvalidEnvelope

_WHAT: Final = "JWS signature"
_TOP_LEVEL: Final = frozenset({"payload", "protected", "header", "signature"})
# JWS headers whose meaning RFC 7515 fixes; "crit" must not list them.
_REGISTERED: Final = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
_STANDARD_PROTECTED: Final = frozenset(
    {
        "alg",
        "cty",
        "crit",
        HEADER_SIGNING_SCHEME,
        HEADER_SIGNING_TIME,
        HEADER_AUTHENTIC_SIGNING_TIME,
        HEADER_EXPIRY,
    }
)
_BASE64URL: Final = re.compile(r"^[A-Za-z0-9_-]*$")
_RFC3339: Final = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)


def parse_jws(data: bytes) -> Envelope:
    """The envelope a JWS JSON document holds; InvalidEnvelope if it is not a well-formed
    Notary Project JWS envelope. The signature is not verified here."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise InvalidEnvelope(f"{_WHAT} is larger than {MAX_ENVELOPE_BYTES} bytes")
    document = _json(data, "the envelope")
    if not isinstance(document, dict):
        raise InvalidEnvelope(f"{_WHAT}: the envelope is not a JSON object")
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        raise InvalidEnvelope(f"{_WHAT}: unexpected top-level members {', '.join(unknown)}")
    for member in ("payload", "protected", "signature"):
        if not isinstance(document.get(member), str):
            raise InvalidEnvelope(f"{_WHAT}: {member} is missing or not a string")
    protected_b64: str = document["protected"]
    payload_b64: str = document["payload"]
    protected = _base64url(protected_b64, "protected")
    payload = _base64url(payload_b64, "payload")
    signature = _base64url(document["signature"], "signature")
    if not payload:
        raise InvalidEnvelope(f"{_WHAT}: the payload is empty")
    if not signature:
        raise InvalidEnvelope(f"{_WHAT}: the signature is empty")

    header = _json(protected, "the protected header")
    if not isinstance(header, dict):
        raise InvalidEnvelope(f"{_WHAT}: the protected header is not a JSON object")
    unprotected = document.get("header")
    if not isinstance(unprotected, dict):
        raise InvalidEnvelope(f"{_WHAT}: the unprotected header is missing or not an object")
    both = sorted(set(header) & set(unprotected))
    if both:
        raise InvalidEnvelope(
            f"{_WHAT}: headers {', '.join(both)} are both protected and unprotected"
        )
    if "crit" in unprotected:
        raise InvalidEnvelope(f"{_WHAT}: crit must be a protected header")

    alg_name = header.get("alg")
    algorithm = BY_JWS_NAME.get(alg_name) if isinstance(alg_name, str) else None
    if algorithm is None:
        raise InvalidEnvelope(
            f"{_WHAT}: algorithm {alg_name!r} is not one of {', '.join(sorted(BY_JWS_NAME))}"
        )
    critical = header.get("crit", [])
    if not isinstance(critical, list) or not all(isinstance(name, str) for name in critical):
        raise InvalidEnvelope(f"{_WHAT}: crit is not a list of header names")
    registered = sorted(set(critical) & _REGISTERED)
    if registered:
        raise InvalidEnvelope(
            f"{_WHAT}: crit lists registered headers {', '.join(registered)}, which it must not"
        )
    extended: dict[HeaderName, object] = {
        name: value for name, value in header.items() if name not in _STANDARD_PROTECTED
    }
    attributes = signed_attributes(
        _WHAT,
        algorithm=algorithm,
        content_type=header.get("cty"),
        critical=critical,
        present=frozenset(header),
        signing_scheme=header.get(HEADER_SIGNING_SCHEME),
        signing_time=_time(header, HEADER_SIGNING_TIME),
        authentic_signing_time=_time(header, HEADER_AUTHENTIC_SIGNING_TIME),
        expiry=_time(header, HEADER_EXPIRY),
        extended=extended,
    )

    x5c = unprotected.get("x5c")
    if not isinstance(x5c, list) or not all(isinstance(cert, str) for cert in x5c):
        raise InvalidEnvelope(f"{_WHAT}: x5c is missing or not a list of base64 strings")
    chain = parse_certificates(_WHAT, [_base64(cert, "an x5c certificate") for cert in x5c])
    timestamp = unprotected.get(HEADER_TIMESTAMP_SIGNATURE)
    if timestamp is not None and not isinstance(timestamp, str):
        raise InvalidEnvelope(f"{_WHAT}: {HEADER_TIMESTAMP_SIGNATURE} is not a base64 string")
    agent = unprotected.get(HEADER_SIGNING_AGENT)
    if agent is not None and not isinstance(agent, str):
        raise InvalidEnvelope(f"{_WHAT}: {HEADER_SIGNING_AGENT} is not a string")

    return Envelope(
        media_type=MEDIA_TYPE_JWS,
        protected=protected,
        signed_bytes=f"{protected_b64}.{payload_b64}".encode("ascii"),
        payload=payload,
        signature=signature,
        attributes=attributes,
        certificate_chain=chain,
        timestamp_signature=(
            _base64(timestamp, HEADER_TIMESTAMP_SIGNATURE) if timestamp is not None else None
        ),
        signing_agent=agent,
    )


def _json(data: bytes, what: str) -> Any:
    try:
        return strictjson.loads(data)
    except strictjson.JsonError as error:
        raise InvalidEnvelope(f"{_WHAT}: {what} is not valid JSON ({error})") from None


def _base64url(text: str, what: str) -> bytes:
    """Unpadded base64url, canonical: re-encoding gives the same text, so no two texts decode
    to the same bytes."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidEnvelope(f"{_WHAT}: {what} is not unpadded base64url")
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode("ascii") != text:
        raise InvalidEnvelope(f"{_WHAT}: {what} is not canonical base64url")
    return decoded


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEnvelope(f"{_WHAT}: {what} is not base64") from None


def _time(header: dict[str, Any], name: str) -> datetime | None:
    if name not in header:
        return None
    value = header[name]
    if not isinstance(value, str):
        raise InvalidEnvelope(f"{_WHAT}: {name} is not an RFC 3339 time string")
    parsed = parse_rfc3339(value)
    if parsed is None:
        raise InvalidEnvelope(f"{_WHAT}: {name} {value!r} is not an RFC 3339 time")
    return parsed


def parse_rfc3339(value: str) -> datetime | None:
    """An RFC 3339 date-time as an aware UTC datetime; None if ``value`` is not one."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7)
    microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if match.group(8):
        zone = UTC
    else:
        hours, minutes = int(match.group(10)), int(match.group(11))
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        zone = timezone(-offset if match.group(9) == "-" else offset)
    try:
        moment = datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
