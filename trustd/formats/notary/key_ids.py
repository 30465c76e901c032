"""What a notary key ID looks like, for the places that take one from an operator (the config's
``trust_pinning.certs``, ``trustctl forget-root --pin``).

A key ID is the hex SHA-256 of a key's canonical JSON (see ``trustd.formats.notary.keys``, which
computes them); this module is apart from it so that checking one needs no cryptography.
"""

from __future__ import annotations

import re

ROOT_KEY_ID_FORM = "a root key ID: 64 lowercase hexadecimal characters"

_KEY_ID = re.compile(r"[0-9a-f]{64}")


def is_key_id(text: str) -> bool:
    """Whether ``text`` is written as notary writes key IDs: 64 lowercase hex characters."""
    return _KEY_ID.fullmatch(text) is not None
