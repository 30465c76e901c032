"""The simple-signing payload a classic cosign signature signs, parsed strictly.

Format: containers/image ``docs/containers-signature.5.md`` with cosign's type string (cosign
``specs/SIGNATURE_SPEC.md``); strictness as containers/image ``signature/internal/
sigstore_payload.go``: exactly ``critical`` and ``optional`` at the top, exactly ``identity``,
``image`` and ``type`` in ``critical``, exactly ``docker-manifest-digest`` and
``docker-reference`` in those, names matched case-sensitively, no key twice. ``optional`` is
``null`` (what cosign writes without annotations) or an object of free-form claims, of which
``creator`` must be a string and ``timestamp`` an integer when present.

Call only on bytes whose signature already verified: the payload is attacker-controlled until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trustd.formats.cosign import _json
from trustd.formats.cosign.errors import CosignPayloadInvalid
from trustd.net.descriptor import is_digest

MEDIA_TYPE: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_TYPE: Final = "cosign container image signature"


@dataclass(frozen=True)
class SimpleSigningPayload:
    """What a verified simple-signing payload claims."""

    manifest_digest: str  # critical.image.docker-manifest-digest
    docker_reference: str  # critical.identity.docker-reference (cosign itself ignores it)
    optional: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def creator(self) -> str | None:
        value = self.optional.get("creator")
        return value if isinstance(value, str) else None

    @property
    def timestamp(self) -> int | None:
        value = self.optional.get("timestamp")
        return value if isinstance(value, int) else None


def parse_simple_signing(
    payload: bytes, what: str = "simple-signing payload"
) -> SimpleSigningPayload:
    """The claims of ``payload``; CosignPayloadInvalid naming ``what`` if it is not valid."""
    err = CosignPayloadInvalid
    top = _json.expect_object(_json.loads(payload, what, err), what, err)
    _json.expect_keys(top, what, err, required=("critical", "optional"))

    critical_what = f"{what}: critical"
    critical = _json.expect_object(top["critical"], critical_what, err)
    _json.expect_keys(critical, critical_what, err, required=("identity", "image", "type"))

    kind = _json.expect_string(critical["type"], f"{critical_what}.type", err)
    if kind != SIGNATURE_TYPE:
        raise err(f"{what}: critical.type is {kind!r}, not {SIGNATURE_TYPE!r}")

    image_what = f"{critical_what}.image"
    image = _json.expect_object(critical["image"], image_what, err)
    _json.expect_keys(image, image_what, err, required=("docker-manifest-digest",))
    digest = _json.expect_string(
        image["docker-manifest-digest"], f"{image_what}.docker-manifest-digest", err
    )
    if not is_digest(digest):
        raise err(
            f"{what}: docker-manifest-digest {digest!r} is not a sha256/sha512 digest "
            "(algorithm, colon, lowercase hex)"
        )

    identity_what = f"{critical_what}.identity"
    identity = _json.expect_object(critical["identity"], identity_what, err)
    _json.expect_keys(identity, identity_what, err, required=("docker-reference",))
    reference = _json.expect_string(
        identity["docker-reference"], f"{identity_what}.docker-reference", err
    )

    optional_value = top["optional"]
    optional: dict[str, Any] = {}
    if optional_value is not None:
        optional = _json.expect_object(optional_value, f"{what}: optional", err)
        if "creator" in optional:
            _json.expect_string(optional["creator"], f"{what}: optional.creator", err)
        if "timestamp" in optional:
            stamp = optional["timestamp"]
            if isinstance(stamp, float) and stamp.is_integer():
                optional["timestamp"] = int(stamp)
            elif isinstance(stamp, bool) or not isinstance(stamp, int):
                raise err(f"{what}: optional.timestamp must be an integer")
    return SimpleSigningPayload(digest, reference, optional)
