"""The trust stores the pure verifier reads: named collections of trusted certificates, by type
(``ca``, ``signingAuthority``, ``tsa``). ``truststore.py`` loads them from notation's
configuration directory; tests build them directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustd.formats.notation.trustpolicy import TrustStoreRef


@dataclass(frozen=True)
class NamedStore:
    ref: TrustStoreRef
    certificates: tuple[x509.Certificate, ...] = field(repr=False)
    # Where it came from (a directory), for messages.
    source: str = ""

    def contains(self, cert: x509.Certificate) -> bool:
        """Whether the store holds exactly this certificate (same DER bytes)."""
        der = cert.public_bytes(serialization.Encoding.DER)
        return any(
            trusted.public_bytes(serialization.Encoding.DER) == der for trusted in self.certificates
        )


@dataclass(frozen=True)
class TrustStores:
    stores: Mapping[TrustStoreRef, NamedStore] = field(default_factory=dict)

    @classmethod
    def of(cls, *stores: NamedStore) -> TrustStores:
        return cls({store.ref: store for store in stores})

    def get(self, ref: TrustStoreRef) -> NamedStore | None:
        return self.stores.get(ref)
