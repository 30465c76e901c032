"""Clients for the registries a node pulls from, sharing one transport per endpoint.

Each pull brings its own credentials, so each lookup gets its own ``RegistryClient``; the
keep-alive connections and the tokens (kept per credentials) live in the endpoint's transport
(``RegistryTransports``), which outlives the lookup. Where a registry is reached, and with which
TLS settings, comes from containerd's hosts.toml directories, as containerd itself reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trustd.net.credentials import Credentials
from trustd.registry.client import RegistryClient, RegistryLimits
from trustd.registry.hosts import RegistryEndpoint, endpoint_for
from trustd.registry.transport import RegistryTransports


class RegistryClients:
    """Makes a client for a registry host, reusing that endpoint's transport."""

    def __init__(
        self,
        hosts_dirs: Sequence[Path],
        timeout: float = 10.0,
        limits: RegistryLimits | None = None,
    ) -> None:
        self.hosts_dirs = tuple(hosts_dirs)
        self.timeout = timeout
        self.limits = limits or RegistryLimits()
        self._transports = RegistryTransports()

    def endpoint(self, registry: str) -> RegistryEndpoint:
        return endpoint_for(registry, [str(d) for d in self.hosts_dirs] or None)

    def client(self, registry: str, credentials: Credentials | None) -> RegistryClient:
        """A client of ``registry`` with ``credentials``; closing it leaves the transport open."""
        endpoint = self.endpoint(registry)
        transport = self._transports.get(endpoint)
        return RegistryClient(endpoint, credentials, self.timeout, self.limits, transport=transport)

    def close(self) -> None:
        self._transports.close()
