"""Trust data over time: when each verified role and root certificate expires, and root key IDs.

Pure functions over verified metadata and a ``now`` passed in: no clock, disk or network. The
daemon turns the result into gauges and warnings, ``trustctl`` into listings.

Two things expire and break every pull when they do (notary issues #1444, #1500; Docker Official
Images from 2025-08-08):

* each role's metadata (``expires``; notary's defaults: root 10 years, targets, snapshot and
  delegations 3 years, timestamp 14 days), and
* each root key's x509 certificate (``notAfter``; notary checks it on every root it accepts).

The timestamp is re-signed by notary-server on its own and fetched on every lookup, so its
14-day expiry is reported as a figure but never as something an operator must act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from trustd.formats.notary.keys import canonical_key_id
from trustd.formats.notary.metadata import Root, format_time

# Roles the server re-signs by itself (the operator has nothing to do before they expire).
RENEWED_BY_SERVER = frozenset({"timestamp"})


class ExpiryKind(StrEnum):
    ROLE = "role"  # a role's metadata; ``name`` is the role
    CERTIFICATE = "certificate"  # a root key's certificate; ``name`` is the key ID in root.json


@dataclass(frozen=True)
class Expiry:
    """One thing of one repository that stops verifying at ``expires``."""

    gun: str
    kind: ExpiryKind
    name: str
    expires: datetime

    def seconds_left(self, now: datetime) -> float:
        """Seconds from ``now`` until it expires; negative once it has."""
        return (self.expires - now).total_seconds()

    @property
    def renewed_by_server(self) -> bool:
        return self.kind is ExpiryKind.ROLE and self.name in RENEWED_BY_SERVER

    def describe(self, now: datetime) -> str:
        """``targets/releases of GUN expires at … (in 9 days)``, for logs and listings."""
        what = (
            f"role {self.name}"
            if self.kind is ExpiryKind.ROLE
            else f"root certificate of key {self.name}"
        )
        return f"{what} of {self.gun} {self.when(now)}"

    def owner_advice(self) -> str:
        """What the repository's owner does about this, with the notary CLI."""
        if self.kind is ExpiryKind.CERTIFICATE:
            return (
                "its owner must rotate the root key before then "
                f"(notary key rotate {self.gun} root)"
            )
        return (
            f"its owner must re-sign {self.name} before then "
            f"(notary witness {self.gun} {self.name} && notary publish {self.gun})"
        )

    def when(self, now: datetime) -> str:
        """``expires at 2029-11-22T13:05:13Z (in 1095 days)``, or ``expired at … (… ago)``."""
        left = self.seconds_left(now)
        verb = "expired" if left < 0 else "expires"
        return f"{verb} at {format_time(self.expires)} ({_human(left)})"


def repository_expiries(gun: str, root: Root, roles: Mapping[str, datetime]) -> list[Expiry]:
    """Every role's expiry (``roles``: role -> expires) and every root certificate's notAfter."""
    found = [Expiry(gun, ExpiryKind.ROLE, role, expires) for role, expires in sorted(roles.items())]
    for key_id in root.roles["root"].keyids:
        key = root.keys.get(key_id)
        if key is not None and key.certificate is not None:
            found.append(
                Expiry(gun, ExpiryKind.CERTIFICATE, key_id, key.certificate.not_valid_after_utc)
            )
    return found


def due(expiries: Iterable[Expiry], now: datetime, horizon: timedelta) -> list[Expiry]:
    """What expires within ``horizon`` of ``now`` (or has expired), soonest first.

    Roles the server renews by itself are left out: a node sees a fresh one at every lookup.
    """
    limit = now + horizon
    return sorted(
        (item for item in expiries if item.expires <= limit and not item.renewed_by_server),
        key=lambda item: (item.expires, item.gun, item.name),
    )


@dataclass(frozen=True)
class RootKey:
    """A root key in both forms users meet, and its certificate's validity."""

    key_id: str  # the ID root.json lists (for x509 keys: of the certificate)
    canonical_id: str  # notary's canonical ID of the bare public key (the CLI's key file name)
    key_type: str
    not_after: datetime | None


def root_keys(root: Root) -> tuple[RootKey, ...]:
    """The root role's keys, in the order root.json lists them."""
    keys = []
    for key_id in root.roles["root"].keyids:
        key = root.keys.get(key_id)
        if key is None:
            continue
        not_after = key.certificate.not_valid_after_utc if key.certificate is not None else None
        keys.append(RootKey(key_id, canonical_key_id(key), key.key_type, not_after))
    return tuple(keys)


def pinning_line(gun: str, root: Root) -> str:
    """A ``[trust_pinning.certs]`` line that pins ``gun`` to its current root keys.

    Canonical IDs: they name the key itself, so the pin survives the owner renewing the root
    certificate (or re-creating the repository with the same root key, as docker and the notary
    CLI do by default), and they are what ``notary key list`` shows.
    """
    ids = ", ".join(f'"{key.canonical_id}"' for key in root_keys(root))
    return f'"{gun}" = [{ids}]'


def _human(seconds: float) -> str:
    magnitude = abs(seconds)
    if magnitude >= 2 * 86400:
        amount = f"{magnitude / 86400:.0f} days"
    elif magnitude >= 2 * 3600:
        amount = f"{magnitude / 3600:.0f} hours"
    else:
        amount = f"{magnitude / 60:.0f} minutes"
    return f"{amount} ago" if seconds < 0 else f"in {amount}"
