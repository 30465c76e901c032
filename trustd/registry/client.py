"""An OCI distribution client for the signature formats: tags, manifests, blobs, referrers.

It fetches bytes and checks only what content addressing promises: a manifest fetched by digest
hashes to that digest, a blob has its descriptor's size and digest. A tag's descriptor and a
referrers listing are the registry's word (hints); the signature formats decide what to trust.

Every request has a deadline of ``min(timeout, trustd.net.deadline.remaining())`` covering
connect, headers and the whole body (see ``transport.py``), and every body has a size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urljoin

import requests.utils

from trustd.errors import HashMismatch, InvalidReference
from trustd.net.credentials import Credentials
from trustd.net.deadline import remaining
from trustd.net.descriptor import Descriptor, DescriptorError, is_digest
from trustd.registry.auth import Authenticator
from trustd.registry.errors import (
    BlobNotFound,
    ContentTooLarge,
    MalformedContent,
    ManifestNotFound,
    RegistryAuthenticationFailed,
    RegistryRequestFailed,
    TooManyReferrers,
)
from trustd.registry.hosts import RegistryEndpoint
from trustd.registry.transport import Answer, RegistryTransport, origin

log = logging.getLogger(__name__)

MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
# Content types that say nothing about which manifest format a body is.
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "text/plain", "application/json"})

# distribution-spec: repository names, tags.
_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
# For this long after a registry showed it has no referrers API, referrers are read from the tag
# schema without asking the API first: one round trip fewer per signature lookup there. Listings
# are hints, so the worst this does is miss signatures (a denial, never an admission) of a
# registry that gained the API within that time and was then given signatures only through it.
NO_REFERRERS_API_SECONDS = 300.0


@dataclass(frozen=True)
class RegistryLimits:
    """Size and count caps for what a registry may send."""

    manifest_bytes: int = 4 * MiB  # a manifest (also the default cap of ``manifest``)
    blob_bytes: int = 4 * MiB  # a blob (signature envelopes, payloads) unless the caller says
    referrers_page_bytes: int = 4 * MiB  # one page of a referrers listing, or the tag's index
    max_referrers: int = 256  # descriptors a listing may hold (after filtering)
    max_referrers_pages: int = 16
    token_bytes: int = 1 * MiB  # a token service's answer


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for a digest: ``<algorithm>-<encoded>``, truncated to
    32 and 64 characters, anything a tag may not hold replaced by ``-`` (distribution-spec)."""
    algorithm, _, encoded = digest.partition(":")
    tag = f"{algorithm[:32]}-{encoded[:64]}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", tag)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](data).hexdigest()}"


def check_repository(repository: str) -> str:
    if len(repository) >= 256 or not _REPOSITORY.match(repository):
        raise InvalidReference(f"{repository!r} is not a repository name")
    return repository


def _check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise InvalidReference(f"{tag!r} is not a tag")
    return tag


def _check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidReference(f"{digest!r} is not a sha256 or sha512 digest")
    return digest


class RegistryClient:
    """Reads one registry endpoint with one pull's credentials.

    ``transport`` shares keep-alive connections and tokens between clients of the same endpoint
    (tokens are keyed by credentials, so clients with different credentials may share it);
    without one, the client makes its own and closes it in ``close``.
    """

    def __init__(
        self,
        endpoint: RegistryEndpoint,
        credentials: Credentials | None = None,
        timeout: float = 10.0,
        limits: RegistryLimits | None = None,
        *,
        transport: RegistryTransport | None = None,
    ) -> None:
        if transport is not None and transport.endpoint != endpoint:
            raise ValueError("the transport serves another endpoint")
        self.endpoint = endpoint
        self.timeout = timeout
        self.limits = limits or RegistryLimits()
        self._own_transport = transport is None
        self._transport = transport or RegistryTransport(endpoint)
        self._auth = Authenticator(
            self._transport,
            self._transport.auth_state,
            credentials,
            timeout,
            self.limits.token_bytes,
        )

    def close(self) -> None:
        if self._own_transport:
            self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the API ---------------------------------------------------------------------------------

    def resolve(self, repository: str, tag: str) -> Descriptor:
        """The descriptor the registry gives ``repository:tag`` (its word, not a verified fact).

        HEAD with the manifest media types; the digest from ``Docker-Content-Digest``, or, when
        the HEAD answer lacks it (or its length or type), the hash of the manifest's bytes.
        """
        check_repository(repository)
        _check_tag(tag)
        with self._open(
            "HEAD", repository, self._url(repository, "manifests", tag), MANIFEST_MEDIA_TYPES
        ) as answer:
            if answer.status == 404:
                raise self._manifest_not_found(repository, tag)
            if answer.status == 200:
                digest = answer.headers.get("Docker-Content-Digest", "").strip()
                length = answer.headers.get("Content-Length", "").strip()
                media_type = answer.media_type()
                if is_digest(digest) and length.isdigit() and media_type not in _GENERIC_TYPES:
                    size = int(length)
                    if size > self.limits.manifest_bytes:
                        what = f"manifest {repository}:{tag}"
                        raise ContentTooLarge(
                            f"{what} on {self.endpoint.describe()} is {size} bytes, over the "
                            f"{self.limits.manifest_bytes}-byte limit",
                            what,
                            size,
                            self.limits.manifest_bytes,
                        )
                    return Descriptor(media_type, digest, size)
            elif answer.status != 405:  # some registries do not allow HEAD on manifests
                raise self._unexpected(answer, f"manifest {repository}:{tag}")
        descriptor, _ = self.manifest(repository, tag)
        return descriptor

    def manifest(
        self, repository: str, reference: str | Descriptor, max_bytes: int | None = None
    ) -> tuple[Descriptor, bytes]:
        """A manifest and its descriptor.

        ``reference`` a digest (or a descriptor): the bytes must hash to it (and have its
        size), else HashMismatch. A tag: the descriptor is the hash of the bytes served.
        """
        check_repository(repository)
        limit = self.limits.manifest_bytes if max_bytes is None else max_bytes
        given = reference if isinstance(reference, Descriptor) else None
        ref = _check_digest(given.digest) if given is not None else reference
        assert isinstance(ref, str)
        by_digest = is_digest(ref)
        if not by_digest:
            _check_tag(ref)
        what = f"manifest {repository}{'@' if by_digest else ':'}{ref}"
        if given is not None:
            if given.size > limit:
                raise self._too_large(what, given.size, limit)
            limit = given.size
        accept: tuple[str, ...] = MANIFEST_MEDIA_TYPES
        if given is not None and given.media_type not in accept:
            accept = (given.media_type, *accept)
        with self._open("GET", repository, self._url(repository, "manifests", ref), accept) as a:
            if a.status == 404:
                raise self._manifest_not_found(repository, ref)
            if a.status != 200:
                raise self._unexpected(a, what)
            served_type = a.media_type()
            try:
                body = a.read(limit, what)
            except ContentTooLarge:
                if given is None:
                    raise
                raise HashMismatch(
                    f"{what} on {self.endpoint.describe()} is longer than the {given.size} bytes "
                    "its descriptor says"
                ) from None
        if given is not None and len(body) != given.size:
            raise HashMismatch(
                f"{what} on {self.endpoint.describe()} is {len(body)} bytes, its descriptor "
                f"says {given.size}"
            )
        digest = self._verify_digest(body, ref, what) if by_digest else digest_of(body)
        media_type = served_type if served_type not in _GENERIC_TYPES else _body_media_type(body)
        if not media_type and given is not None:
            media_type = given.media_type
        if not media_type:
            raise MalformedContent(
                f"{what} on {self.endpoint.describe()} has no media type (no Content-Type and "
                "no mediaType field)"
            )
        if given is not None:
            return Descriptor(
                media_type, digest, len(body), given.artifact_type, given.annotations
            ), body
        return Descriptor(media_type, digest, len(body)), body

    def tag_manifest(
        self, repository: str, tag: str, max_bytes: int | None = None
    ) -> tuple[Descriptor, bytes] | None:
        """``manifest`` by tag, None when the tag does not exist (cosign's ``sha256-<hex>.sig``)."""
        try:
            return self.manifest(repository, tag, max_bytes)
        except ManifestNotFound:
            return None

    def blob(self, repository: str, descriptor: Descriptor, max_bytes: int | None = None) -> bytes:
        """A blob, checked against its descriptor's size and digest."""
        check_repository(repository)
        digest = _check_digest(descriptor.digest)
        limit = self.limits.blob_bytes if max_bytes is None else max_bytes
        what = f"blob {digest} of {repository}"
        if descriptor.size > limit:
            raise self._too_large(what, descriptor.size, limit)
        with self._open("GET", repository, self._url(repository, "blobs", digest), ()) as answer:
            if answer.status == 404:
                raise BlobNotFound(f"{self.endpoint.describe()} has no {what}", repository, digest)
            if answer.status != 200:
                raise self._unexpected(answer, what)
            try:
                body = answer.read(descriptor.size, what)
            except ContentTooLarge:
                raise HashMismatch(
                    f"{what} from {answer.where} is longer than the {descriptor.size} bytes its "
                    "descriptor says"
                ) from None
        if len(body) != descriptor.size:
            raise HashMismatch(
                f"{what} from {self.endpoint.describe()} is {len(body)} bytes, its descriptor "
                f"says {descriptor.size}"
            )
        self._verify_digest(body, digest, what)
        return body

    def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """The manifests naming ``digest`` as their subject, as the registry lists them (hints).

        The OCI 1.1 referrers API, its pages followed; a registry without it (404, or an answer
        that is not an image index) is read through the referrers tag schema instead (the image
        index tagged ``sha256-<hex>``; no such tag: no referrers). Filtered by ``artifact_type``
        here when the registry did not apply the filter. A registry found without the API is
        not asked for it again for ``NO_REFERRERS_API_SECONDS`` (by any client of the endpoint).
        """
        check_repository(repository)
        _check_digest(digest)
        said = self._transport.no_referrers_api_at
        if said is not None and time.monotonic() - said < NO_REFERRERS_API_SECONDS:
            return self._referrers_by_tag(repository, digest, artifact_type)
        query = {"artifactType": artifact_type} if artifact_type else None
        url: str | None = self._url(repository, "referrers", digest, query)
        found: list[Descriptor] = []
        seen: set[str] = set()
        pages = 0
        while url is not None:
            if pages >= self.limits.max_referrers_pages:
                what = f"referrers of {repository}@{digest}"
                raise TooManyReferrers(
                    f"{what} on {self.endpoint.describe()} run past "
                    f"{self.limits.max_referrers_pages} pages",
                    what,
                    None,
                    self.limits.max_referrers_pages,
                )
            pages += 1
            seen.add(url)
            page = self._referrers_page(repository, digest, url, artifact_type)
            if page is None:
                if pages > 1:
                    raise MalformedContent(
                        f"page {pages} of the referrers of {repository}@{digest} on "
                        f"{self.endpoint.describe()} is not an image index"
                    )
                self._transport.no_referrers_api_at = time.monotonic()
                return self._referrers_by_tag(repository, digest, artifact_type)
            descriptors, url = page
            found.extend(descriptors)
            self._check_referrer_count(found, repository, digest)
            if url is not None and url in seen:
                raise MalformedContent(
                    f"the referrers pages of {repository}@{digest} on "
                    f"{self.endpoint.describe()} link back to an earlier page"
                )
        return found

    # --- referrers -------------------------------------------------------------------------------

    def _referrers_page(
        self, repository: str, digest: str, url: str, artifact_type: str | None
    ) -> tuple[list[Descriptor], str | None] | None:
        """One page of the referrers API: its descriptors and the next page's URL; None when the
        registry has no referrers API."""
        what = f"referrers of {repository}@{digest}"
        with self._open("GET", repository, url, (OCI_INDEX,)) as answer:
            if answer.status in (404, 405):
                return None
            if answer.status != 200:
                raise self._unexpected(answer, what)
            body = answer.read(self.limits.referrers_page_bytes, what)
            filtered = "artifacttype" in {
                item.strip().lower()
                for item in answer.headers.get("OCI-Filters-Applied", "").split(",")
            }
            link = _next_link(answer.headers.get("Link", ""))
            page_url = answer.url
        manifests = _index_manifests(body)
        if manifests is None:
            log.info(
                "%s answered the referrers API with something other than an image index; "
                "reading the referrers tag schema instead",
                self.endpoint.describe(),
            )
            return None
        descriptors = self._descriptors(manifests, what)
        if artifact_type and not filtered:
            descriptors = [d for d in descriptors if d.artifact_type == artifact_type]
        next_url = None
        if link:
            next_url = urljoin(page_url, link)
            if origin(next_url) != origin(page_url):
                raise MalformedContent(
                    f"the next page of the {what} on {self.endpoint.describe()} is on another "
                    f"host ({origin(next_url)})"
                )
        return descriptors, next_url

    def _referrers_by_tag(
        self, repository: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor]:
        tag = referrers_tag(digest)
        what = f"referrers index {repository}:{tag}"
        fetched = self.tag_manifest(repository, tag, self.limits.referrers_page_bytes)
        if fetched is None:
            return []
        descriptor, body = fetched
        manifests = _index_manifests(body)
        if manifests is None or descriptor.media_type != OCI_INDEX:
            raise MalformedContent(
                f"{what} on {self.endpoint.describe()} is not an OCI image index "
                f"({descriptor.media_type})"
            )
        descriptors = self._descriptors(manifests, what)
        if artifact_type:
            descriptors = [d for d in descriptors if d.artifact_type == artifact_type]
        self._check_referrer_count(descriptors, repository, digest)
        return descriptors

    def _descriptors(self, manifests: list[Any], what: str) -> list[Descriptor]:
        descriptors = []
        for position, item in enumerate(manifests):
            try:
                descriptors.append(Descriptor.from_json(item))
            except DescriptorError as error:
                # One malformed entry must not hide the others; they are hints either way.
                log.warning(
                    "%s on %s: entry %d skipped: %s",
                    what,
                    self.endpoint.describe(),
                    position,
                    error,
                )
        return descriptors

    def _check_referrer_count(
        self, descriptors: list[Descriptor], repository: str, digest: str
    ) -> None:
        if len(descriptors) > self.limits.max_referrers:
            what = f"referrers of {repository}@{digest}"
            raise TooManyReferrers(
                f"{self.endpoint.describe()} lists more than {self.limits.max_referrers} {what}",
                what,
                len(descriptors),
                self.limits.max_referrers,
            )

    # --- requests --------------------------------------------------------------------------------

    def _url(
        self, repository: str, kind: str, reference: str, query: dict[str, str] | None = None
    ) -> str:
        parameters = dict(query or {})
        if self.endpoint.namespace is not None:
            parameters["ns"] = self.endpoint.namespace
        url = f"{self._transport.base_url}/{repository}/{kind}/{reference}"
        return f"{url}?{urlencode(parameters)}" if parameters else url

    def _budget(self) -> float:
        left = remaining(self.timeout)
        return self.timeout if left is None else left

    @contextlib.contextmanager
    def _open(
        self, method: str, repository: str, url: str, accept: tuple[str, ...]
    ) -> Iterator[Answer]:
        """An exchange authenticated for ``repository``: a 401 is answered once (a token or
        Basic), a second 401 or a 403 is RegistryAuthenticationFailed."""
        headers = {"Accept": ", ".join(accept)} if accept else {}
        sent = self._auth.authorization(repository)
        with self._transport.exchange(
            method, url, timeout=self._budget(), headers=headers, authorization=sent
        ) as answer:
            if answer.status not in (401, 403):
                yield answer
                return
            if answer.status == 403:
                raise self._denied(answer, repository)
            challenge = answer.headers.get("WWW-Authenticate", "")
        authorization = self._auth.answer_challenge(challenge, repository, sent)
        with self._transport.exchange(
            method, url, timeout=self._budget(), headers=headers, authorization=authorization
        ) as answer:
            if answer.status in (401, 403):
                raise self._denied(answer, repository)
            yield answer

    # --- checks and errors -----------------------------------------------------------------------

    def _verify_digest(self, body: bytes, expected: str, what: str) -> str:
        algorithm = expected.partition(":")[0]
        actual = digest_of(body, algorithm)
        if actual != expected:
            raise HashMismatch(
                f"{what} from {self.endpoint.describe()} hashes to {actual}, not to the digest "
                "it was asked for"
            )
        return actual

    def _too_large(self, what: str, size: int, limit: int) -> ContentTooLarge:
        return ContentTooLarge(
            f"{what} on {self.endpoint.describe()} is {size} bytes by its descriptor, over the "
            f"{limit}-byte limit",
            what,
            size,
            limit,
        )

    def _manifest_not_found(self, repository: str, reference: str) -> ManifestNotFound:
        separator = "@" if is_digest(reference) else ":"
        return ManifestNotFound(
            f"{self.endpoint.describe()} has no manifest {repository}{separator}{reference}",
            repository,
            reference,
        )

    def _denied(self, answer: Answer, repository: str) -> RegistryAuthenticationFailed:
        codes = answer.error_codes()
        return RegistryAuthenticationFailed(
            f"{answer.where} refused access to {repository} (HTTP {answer.status}"
            + (f", {codes}" if codes else "")
            + ")"
        )

    def _unexpected(self, answer: Answer, what: str) -> RegistryRequestFailed:
        codes = answer.error_codes()
        return RegistryRequestFailed(
            f"{answer.where} answered HTTP {answer.status} for {what}"
            + (f" ({codes})" if codes else ""),
            answer.status,
        )


def _body_media_type(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    value = document.get("mediaType") if isinstance(document, dict) else None
    return value if isinstance(value, str) else ""


def _index_manifests(body: bytes) -> list[Any] | None:
    """The ``manifests`` of an image index, or None when the body is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    media_type = document.get("mediaType", OCI_INDEX)
    manifests = document.get("manifests")
    if media_type != OCI_INDEX or not isinstance(manifests, list):
        return None
    return manifests


def _next_link(header: str) -> str | None:
    """The target of the ``rel="next"`` link of a Link header (RFC 8288)."""
    if not header:
        return None
    for link in requests.utils.parse_header_links(header):
        rels = link.get("rel", "").split()
        if "next" in rels and link.get("url"):
            return link["url"]
    return None
