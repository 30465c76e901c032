"""Image references, parsed and normalised the way docker does it.

``parse_reference("nginx")`` gives ``docker.io/library/nginx:latest``, exactly as ``docker pull``
and kubelet name the image (distribution/reference ``ParseNormalizedNamed`` plus ``TagNameOnly``).
The normalised repository (``docker.io/library/nginx``) is the Notary GUN.

Two deliberate differences from docker, both about what trustd can verify:

* a reference with both a tag and a digest keeps both (docker drops the tag): trustd checks that
  the tag is signed as exactly that digest;
* the registry host must be lowercase. Host names are case-insensitive, so ``Example.com/app``
  and ``example.com/app`` are the same image but would be different policy names and GUNs; docker
  would accept the first, trustd refuses it rather than let case decide which rule applies.

Digests are limited to the algorithms Notary records: sha256 and sha512.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from trustd.errors import InvalidReference

# Turns a problem description into the error to raise, with the whole input quoted.
_ProblemFactory = Callable[[str], InvalidReference]

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255  # registry + "/" + path
MAX_TAG_LENGTH = 128
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}

# One path component: lowercase alphanumerics joined by ".", "_", "__" or any run of "-".
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST_LABEL = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_REGISTRY = re.compile(
    rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-f0-9:]+\])"  # DNS name or IPv4, or [IPv6]
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGEST_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_LOWER_HEX = re.compile(r"[a-f0-9]+")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
_SHOWN_INPUT_MAX = 300  # long hostile input is cut in messages, not echoed whole into logs


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/path[:tag][@digest]``."""

    registry: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """``docker.io/library/nginx``: the policy name and the Notary GUN."""
        return f"{self.registry}/{self.path}"

    @property
    def gun(self) -> str:
        return self.repository

    @property
    def tagged_name(self) -> str | None:
        return f"{self.repository}:{self.tag}" if self.tag is not None else None

    def pinned(self, digest: str) -> str:
        """``repository@digest``: the reference that pulls exactly the signed bytes."""
        parse_digest(digest)
        return f"{self.repository}@{digest}"

    @property
    def familiar(self) -> str:
        """docker's short form (``nginx:1.25``, ``user/app``), for messages only."""
        name = self.repository
        if self.registry == DEFAULT_REGISTRY:
            name = self.path
            namespace, _, rest = name.partition("/")
            if namespace == OFFICIAL_NAMESPACE and "/" not in rest:
                name = rest
        return name + self._suffix()

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def __str__(self) -> str:
        return self.repository + self._suffix()


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; InvalidReference says what is wrong."""

    def invalid(problem: str) -> InvalidReference:
        return InvalidReference(f"invalid image reference {_show(text)}: {problem}")

    if not text:
        raise invalid("it is empty")
    if any(character.isspace() or not character.isprintable() for character in text):
        raise invalid("it contains whitespace or control characters")
    if _IMAGE_ID.fullmatch(text):
        raise invalid("a 64-character hexadecimal string is an image ID, not a repository name")

    name, at, digest_text = text.partition("@")
    digest: str | None = None
    if at:
        problem = _digest_problem(digest_text)
        if problem is not None:
            raise invalid(problem)
        digest = digest_text

    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):  # a ":" before the last "/" belongs to the registry's port
        name, tag = name[:colon], name[colon + 1 :]
        problem = _tag_problem(tag)
        if problem is not None:
            raise invalid(problem)

    registry, path = _split_registry(name, invalid)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


def parse_repository(text: str) -> str:
    """Normalise a repository name given without tag or digest (``nginx`` -> the GUN)."""

    def invalid(problem: str) -> InvalidReference:
        return InvalidReference(f"invalid repository name {_show(text)}: {problem}")

    if "@" in text:
        raise invalid("a repository name has no digest")
    if text.rfind(":") > text.rfind("/"):
        raise invalid("a repository name has no tag")
    reference = parse_reference(text)
    return reference.repository


def parse_registry(text: str) -> str:
    """Check a registry host[:port] as it appears in a normalised reference; returns it."""
    problem = _registry_problem(text)
    if problem is not None:
        raise InvalidReference(f"invalid registry {_show(text)}: {problem}")
    if text == LEGACY_DEFAULT_REGISTRY:
        raise InvalidReference(
            f"invalid registry {_show(text)}: it is normalised to {DEFAULT_REGISTRY!r}; use that"
        )
    return text


def parse_digest(text: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` -> ``("sha256", "<hex>")``; InvalidReference when malformed."""
    problem = _digest_problem(text)
    if problem is not None:
        raise InvalidReference(f"invalid digest {_show(text)}: {problem}")
    algorithm, _, hex_value = text.partition(":")
    return algorithm, hex_value


def looks_like_registry(component: str) -> bool:
    """docker's rule for whether the first component of a name is a registry host."""
    return (
        component == "localhost"
        or "." in component
        or ":" in component
        or component.lower() != component
    )


# --- the parts ------------------------------------------------------------------------------------


def _split_registry(name: str, invalid: _ProblemFactory) -> tuple[str, str]:
    if not name:
        raise invalid("repository name is missing")
    first, slash, rest = name.partition("/")
    if slash and looks_like_registry(first):
        registry, path = first, rest
        problem = _registry_problem(registry)
        if problem is not None:
            raise invalid(problem)
        if registry == LEGACY_DEFAULT_REGISTRY:
            registry = DEFAULT_REGISTRY
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"

    problem = _path_problem(path)
    if problem is not None:
        raise invalid(problem)
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise invalid(f"repository name is longer than {MAX_NAME_LENGTH} characters")
    return registry, path


def _path_problem(path: str) -> str | None:
    if path.lower() != path:
        return "repository name must be lowercase"
    for component in path.split("/"):
        if not component:
            return "repository name has an empty path component"
        if not _PATH_COMPONENT.fullmatch(component):
            return (
                f"invalid path component {_show(component)}: use lowercase letters and digits, "
                'separated by ".", "_", "__" or "-"'
            )
    return None


def _registry_problem(registry: str) -> str | None:
    if not registry:
        return "registry host is empty"
    if registry.lower() != registry:
        return (
            f"registry host {_show(registry)} must be lowercase (a first component with "
            "uppercase letters is taken as a registry; repository names are lowercase)"
        )
    if not _REGISTRY.fullmatch(registry):
        return f"invalid registry host {_show(registry)}"
    return None


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "tag is empty"
    if len(tag) > MAX_TAG_LENGTH:
        return f"tag is longer than {MAX_TAG_LENGTH} characters"
    if not _TAG.fullmatch(tag):
        return (
            f"invalid tag {_show(tag)}: use letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    return None


def _digest_problem(digest: str) -> str | None:
    algorithm, colon, hex_value = digest.partition(":")
    if not colon:
        return f"digest {_show(digest)} is not of the form <algorithm>:<hex>"
    if not _DIGEST_ALGORITHM.fullmatch(algorithm):
        return f"digest {_show(digest)} has a malformed algorithm"
    expected_length = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected_length is None:
        supported = " and ".join(DIGEST_HEX_LENGTHS)
        return f"unsupported digest algorithm {_show(algorithm)} (supported: {supported})"
    if len(hex_value) != expected_length or not _LOWER_HEX.fullmatch(hex_value):
        return (
            f"a {algorithm} digest is {expected_length} lowercase hexadecimal characters "
            f"(got {_show(hex_value)})"
        )
    return None


def _show(text: str) -> str:
    """Quote input for a message, escaped and cut so it cannot forge or flood log lines."""
    if len(text) > _SHOWN_INPUT_MAX:
        text = text[:_SHOWN_INPUT_MAX] + "..."
    return json.dumps(text)
