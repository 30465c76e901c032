"""OCI content descriptors: what a manifest, a signature or a payload names (pure data)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# OCI image-spec digest grammar, restricted to the algorithms a registry serves.
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


class DescriptorError(ValueError):
    """A descriptor that is not well formed."""


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.match(value) is not None


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor: media type, digest and size, with the optional fields verifiers read."""

    media_type: str
    digest: str
    size: int
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_json(cls, value: Any) -> Descriptor:
        """A descriptor from its JSON object form; DescriptorError if it is not one."""
        if not isinstance(value, dict):
            raise DescriptorError("a descriptor must be a JSON object")
        media_type = value.get("mediaType")
        digest = value.get("digest")
        size = value.get("size")
        artifact_type = value.get("artifactType", "")
        annotations = value.get("annotations", {})
        if not isinstance(media_type, str) or not media_type:
            raise DescriptorError("descriptor has no mediaType")
        if not is_digest(digest):
            raise DescriptorError(f"descriptor digest {digest!r} is not a sha256/sha512 digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DescriptorError(f"descriptor size {size!r} is not a non-negative integer")
        if not isinstance(artifact_type, str):
            raise DescriptorError("descriptor artifactType is not a string")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise DescriptorError("descriptor annotations are not a map of strings")
        assert isinstance(digest, str)
        return cls(media_type, digest, size, artifact_type, dict(annotations))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def same_content(self, other: Descriptor) -> bool:
        """Media type, digest and size all equal: the test a signed payload's subject must pass."""
        return (self.media_type, self.digest, self.size) == (
            other.media_type,
            other.digest,
            other.size,
        )
