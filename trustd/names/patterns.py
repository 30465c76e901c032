"""Name patterns of the config: repository globs (policy, exemptions), GUN prefixes (pinning).

Repository globs match normalised repository names (``docker.io/library/nginx``):

* ``*`` any characters except ``/`` (one path component, or part of one);
* ``**`` any characters including ``/``; ``a/**`` matches everything below ``a`` (not ``a``
  itself), ``a/**/b`` matches ``a/b`` and ``a/x/y/b``, ``**`` alone matches every name;
* ``?`` exactly one character except ``/``;
* everything else is literal.

Trust pinning keys follow notary's ``trust_pinning`` rules instead: a ``certs`` key is an exact GUN
or a ``prefix*`` wildcard (longest prefix wins, an exact key beats any wildcard); a ``ca`` key is a
plain string prefix of the GUN (longest wins). These are string prefixes, not path prefixes:
``docker.io/library`` also covers ``docker.io/library-extra/app``, exactly as in notary.

Every pattern is validated and compiled once; a pattern that can never match a normalised name
(``nginx``, ``Docker.io/**``) is an error rather than a rule that silently never applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from trustd.errors import InvalidReference
from trustd.names.reference import looks_like_registry, parse_repository

# Characters a normalised repository name can contain (host, port, IPv6 brackets, path).
_NAME_CHARACTERS = re.compile(r"[a-z0-9._\-/:\[\]]*")
_TAG_CHARACTERS = re.compile(r"[A-Za-z0-9_.\-]*")
_WILDCARDS = frozenset("*?")


class InvalidPattern(ValueError):
    """A pattern that is malformed or can never match; the message says why."""


@dataclass(frozen=True)
class RepositoryPattern:
    """A glob over normalised repository names, e.g. ``registry.example.com/prod/**``."""

    text: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_repository_glob(self.text)
        object.__setattr__(self, "_regex", re.compile(_repository_glob_regex(self.text)))

    def matches(self, repository: str) -> bool:
        return self._regex.fullmatch(repository) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TagPattern:
    """A glob over tags (``3.*``, ``v?``): ``*`` any characters, ``?`` one character."""

    text: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.text:
            raise InvalidPattern("tag pattern is empty")
        if not _TAG_CHARACTERS.fullmatch(_without_wildcards(self.text)):
            raise InvalidPattern(
                f"tag pattern {_quote(self.text)} has characters no tag can contain "
                "(tags are letters, digits, '_', '.' and '-')"
            )
        regex = "".join(
            ".*" if character == "*" else "." if character == "?" else re.escape(character)
            for character in self.text
        )
        object.__setattr__(self, "_regex", re.compile(regex))

    def matches(self, tag: str) -> bool:
        return self._regex.fullmatch(tag) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GunPattern:
    """A notary ``trust_pinning.certs`` key: an exact GUN, or ``prefix*``."""

    text: str

    def __post_init__(self) -> None:
        prefix = self.prefix
        if "*" in prefix or "?" in prefix:
            raise InvalidPattern(
                f"{_quote(self.text)}: only a single trailing '*' is allowed (notary matches "
                "an exact GUN or a 'prefix*' wildcard)"
            )
        _check_gun_characters(self.text, prefix)
        if not self.is_wildcard:
            _check_normalised(self.text)

    @property
    def is_wildcard(self) -> bool:
        return self.text.endswith("*")

    @property
    def prefix(self) -> str:
        """The literal part: the whole GUN, or what precedes the trailing ``*``."""
        return self.text[:-1] if self.is_wildcard else self.text

    def matches(self, gun: str) -> bool:
        if self.is_wildcard:
            return gun.startswith(self.prefix)
        return gun == self.text

    def __str__(self) -> str:
        return self.text


def check_gun_prefix(text: str) -> str:
    """Validate a notary ``trust_pinning.ca`` key, a plain GUN prefix; returns it."""
    if "*" in text or "?" in text:
        raise InvalidPattern(
            f"{_quote(text)}: CA keys are plain GUN prefixes already; wildcards are not allowed"
        )
    _check_gun_characters(text, text)
    return text


def most_specific_gun_pattern(gun: str, patterns: Iterable[GunPattern]) -> GunPattern | None:
    """notary's choice among ``certs`` keys: the exact GUN, else the longest matching wildcard."""
    best: GunPattern | None = None
    for pattern in patterns:
        if not pattern.matches(gun):
            continue
        if not pattern.is_wildcard:
            return pattern
        if best is None or len(pattern.prefix) > len(best.prefix):
            best = pattern
    return best


def longest_gun_prefix(gun: str, prefixes: Iterable[str]) -> str | None:
    """notary's choice among ``ca`` keys: the longest one that is a prefix of ``gun``."""
    matching = [prefix for prefix in prefixes if gun.startswith(prefix)]
    return max(matching, key=len) if matching else None


# --- validation and compilation ---------------------------------------------------------------


def _without_wildcards(text: str) -> str:
    return "".join(character for character in text if character not in _WILDCARDS)


def _check_repository_glob(text: str) -> None:
    if not text:
        raise InvalidPattern("pattern is empty")
    literal = _without_wildcards(text)
    if literal.lower() != literal:
        raise InvalidPattern(
            f"pattern {_quote(text)} has uppercase letters; it is matched against normalised, "
            "lowercase names"
        )
    if not _NAME_CHARACTERS.fullmatch(literal):
        raise InvalidPattern(
            f"pattern {_quote(text)} has characters no repository name can contain"
        )
    if "***" in text:
        raise InvalidPattern(f"pattern {_quote(text)}: use '*' or '**', not '***'")
    if "//" in text or text.startswith("/") or text.endswith("/"):
        raise InvalidPattern(f"pattern {_quote(text)} has an empty path component")
    first, slash, path = text.partition("/")
    if ":" in path:
        raise InvalidPattern(
            f"pattern {_quote(text)} has ':' in its path, where no repository name has one "
            "(a tag is not part of the repository)"
        )
    if not slash and "**" not in text:
        raise InvalidPattern(
            f"pattern {_quote(text)} can never match: normalised names always have a registry "
            f'and a path, like {_quote(_normalised_example(text))} ("**" matches every name)'
        )
    if slash and not _WILDCARDS.intersection(first) and not looks_like_registry(first):
        raise InvalidPattern(
            f"pattern {_quote(text)} does not start with a registry host; it is matched against "
            f"normalised names like {_quote(_normalised_example(text))}"
        )


def _repository_glob_regex(text: str) -> str:
    parts: list[str] = []
    position = 0
    while position < len(text):
        if text.startswith("**", position):
            at_start = position == 0 or text[position - 1] == "/"
            followed_by_slash = text.startswith("/", position + 2)
            if at_start and followed_by_slash:
                # "**/" may stand for no component at all: "a/**/b" matches "a/b".
                parts.append("(?:.*/)?")
                position += 3
            else:
                parts.append(".*")
                position += 2
        elif text[position] == "*":
            parts.append("[^/]*")
            position += 1
        elif text[position] == "?":
            parts.append("[^/]")
            position += 1
        else:
            parts.append(re.escape(text[position]))
            position += 1
    return "".join(parts)


def _normalised_example(text: str) -> str:
    return "docker.io/" + (text if "/" in text else f"library/{text}")


def _quote(text: str) -> str:
    return json.dumps(text)


def _check_gun_characters(text: str, literal: str) -> None:
    if literal.lower() != literal:
        raise InvalidPattern(
            f"{_quote(text)} has uppercase letters; GUNs are normalised, lowercase"
        )
    if not _NAME_CHARACTERS.fullmatch(literal):
        raise InvalidPattern(f"{_quote(text)} has characters no GUN can contain")


def _check_normalised(gun: str) -> None:
    try:
        normalised = parse_repository(gun)
    except InvalidReference as error:
        raise InvalidPattern(str(error)) from error
    if normalised != gun:
        raise InvalidPattern(f"{_quote(gun)} is not a normalised GUN; write {_quote(normalised)}")
