"""Clients for the registries a node pulls from, sharing one transport per endpoint.

Each pull brings its own credentials, so each lookup gets its own ``RegistryClient``; the
keep-alive connections and the tokens (kept per credentials) live in the endpoint's transport,
which outlives the lookup. Where a registry is reached, and with which TLS settings, comes from
containerd's hosts.toml directory, as containerd itself would reach it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from trustd.net.credentials import Credentials
from trustd.registry.client import RegistryClient, RegistryLimits
from trustd.registry.hosts import RegistryEndpoint, endpoint_for
from trustd.registry.transport import RegistryTransport

# Transports kept at once; the least recently opened goes when more endpoints are in use.
_MAX_TRANSPORTS = 64


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
        self._transports: dict[RegistryEndpoint, RegistryTransport] = {}
        self._lock = threading.Lock()

    def endpoint(self, registry: str) -> RegistryEndpoint:
        return endpoint_for(registry, self.hosts_dirs or None)

    def client(self, registry: str, credentials: Credentials | None) -> RegistryClient:
        """A client of ``registry`` with ``credentials``; closing it leaves the transport open."""
        endpoint = self.endpoint(registry)
        with self._lock:
            transport = self._transports.get(endpoint)
            if transport is None:
                if len(self._transports) >= _MAX_TRANSPORTS:
                    oldest = next(iter(self._transports))
                    self._transports.pop(oldest).close()
                transport = RegistryTransport(endpoint)
                self._transports[endpoint] = transport
        return RegistryClient(endpoint, credentials, self.timeout, self.limits, transport=transport)

    def close(self) -> None:
        with self._lock:
            transports = list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.close()
