"""Trust data read back from this node's cache, every file verified again (no network)."""

from __future__ import annotations

import logging
from datetime import datetime

from trustd.errors import TrustError
from trustd.formats.notary.metadata import Root
from trustd.formats.notary.store import MetadataStore
from trustd.formats.notary.trusted_set import TrustedSet

log = logging.getLogger(__name__)


def load_cached_set(
    store: MetadataStore, gun: str, now: datetime, *, delegations: bool = False
) -> TrustedSet | None:
    """The trusted set of ``gun`` rebuilt from the cache, every file verified again.

    Cached files were verified before they were written; loading them again restores the
    versions this node has seen (rollback protection across restarts) and spares downloads when
    the server's timestamp has not changed. An expired cached file is still a valid baseline.
    Stops at the first file that is missing or no longer fits; ``delegations`` also loads the
    delegated roles, parents first (the refresh loads those itself as it needs them).
    """
    root_data = store.load(gun, "root")
    if root_data is None:
        return None
    try:
        trusted = TrustedSet(gun, root_data)
    except TrustError as error:
        raise TrustError(
            f"the cached root of {gun} ({store.path(gun, 'root')}) no longer verifies "
            f"({error}); trustd will not silently trust a new root: inspect the file, then "
            f"run trustctl forget-root {gun} to re-establish trust"
        ) from error
    for role, update in (
        ("timestamp", trusted.update_timestamp),
        ("snapshot", trusted.update_snapshot),
        ("targets", trusted.update_targets),
    ):
        data = store.load(gun, role)
        if data is None:
            return trusted
        try:
            update(data, now, allow_expired=True)
        except TrustError as error:
            log.warning("ignoring cached %s.json of %s: %s", role, gun, error)
            return trusted
    if delegations:
        assert trusted.snapshot is not None  # loaded above
        listed = sorted(
            (role for role in trusted.snapshot.meta if role.startswith("targets/")),
            key=lambda role: (role.count("/"), role),
        )
        for role in listed:
            data = store.load(gun, role)
            expected = trusted.expected_meta(role)
            if data is None or expected is None or trusted.delegation(role) is None:
                continue
            try:
                trusted.update_delegated_targets(role, data, now, allow_expired=True)
            except TrustError as error:
                log.debug("not reading cached %s.json of %s: %s", role, gun, error)
    return trusted


def cached_root(store: MetadataStore, gun: str) -> Root | None:
    """The cached root of ``gun`` if it still verifies; None otherwise (or when none is cached)."""
    data = store.load(gun, "root")
    if data is None:
        return None
    try:
        return TrustedSet(gun, data).root
    except TrustError:
        return None  # forgetting a root that no longer verifies is the repair for it
