"""The errors of the registry client.

Outages (network, TLS, timeouts, 5xx, statuses the protocol does not allow, refused credentials)
are ``RegistryUnavailable``: kubelet reports them as ``RegistryUnavailable`` and the pull may be
retried. Content that is missing, too large, malformed or not what its digest says is a
``TrustError`` of its own kind: the image is denied. Messages name the registry, the repository
and the reference, never credentials.
"""

from __future__ import annotations

from trustd.errors import (
    BadMetadata,
    ConfigError,
    MetadataTooLarge,
    RegistryUnavailable,
    TrustError,
)


class RegistryRequestFailed(RegistryUnavailable):
    """The registry could not be reached, broke the connection, failed TLS, or answered with a
    status the request does not allow (5xx and the like)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryTimeout(RegistryUnavailable):
    """An exchange with the registry did not complete (headers and whole body) in time."""


class RegistryAuthenticationFailed(RegistryUnavailable):
    """The registry or its token service refused the pull's credentials (401/403 after
    authenticating), or trustd refused to send them where they would not be protected."""


class RegistryEndpointUnusable(RegistryUnavailable):
    """The node's settings for a registry cannot be used (a CA or client certificate file that
    cannot be read or loaded)."""


class ManifestNotFound(TrustError):
    """The registry has no manifest for this repository and reference (tag or digest)."""

    def __init__(self, message: str, repository: str, reference: str) -> None:
        super().__init__(message)
        self.repository = repository
        self.reference = reference


class BlobNotFound(TrustError):
    """The registry has no blob of this digest in the repository."""

    def __init__(self, message: str, repository: str, digest: str) -> None:
        super().__init__(message)
        self.repository = repository
        self.digest = digest


class ContentTooLarge(MetadataTooLarge):
    """A manifest, index, blob or token response over its size limit; refused unread."""

    def __init__(self, message: str, what: str, length: int | None, limit: int) -> None:
        super().__init__(message)
        self.what = what
        self.length = length  # None: the body ran past the limit without declaring a length
        self.limit = limit


class TooManyReferrers(ContentTooLarge):
    """A referrers listing with more descriptors, or more pages, than the limit allows."""


class MalformedContent(BadMetadata):
    """A registry answer that is not what the protocol says it must be (a referrers listing that
    is not an image index, a descriptor without a digest, ...)."""


class HostsConfigError(ConfigError):
    """A ``hosts.toml`` (containerd's registry host settings) that cannot be used; the message
    names the file and the key."""
