"""The signature formats a config asks for beyond Notary v1, built from it and rebuilt on reload.

Notation and cosign share the node's registry clients (one transport per endpoint) and keep what
each verified in the state directory (``verified/<format>.json``), which outlives reloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trustd.config.model import Config, RegistryConfig
from trustd.formats.base import FormatName, SignatureFormat
from trustd.formats.verified_cache import VerifiedDigests

if TYPE_CHECKING:
    # Imported when a config asks for them: a node verifying Notary v1 alone loads neither
    # format nor the registry client.
    from trustd.formats.registry_format import RegistrySignatureFormat
    from trustd.registry.clients import RegistryClients


class RegistryFormats:
    """Builds the Notation and cosign formats for a config; the caller closes it."""

    def __init__(self, state_dir: Path) -> None:
        verified = state_dir / "verified"
        self._verified = {
            FormatName.NOTATION: VerifiedDigests(verified / "notation.json"),
            FormatName.COSIGN: VerifiedDigests(verified / "cosign.json"),
        }
        self._clients: RegistryClients | None = None
        self._clients_for: RegistryConfig | None = None

    def formats_for(self, config: Config) -> dict[FormatName, SignatureFormat]:
        """The formats ``config`` configures; ConfigError (naming the file) when its Notation
        trust policy or a trust store it names cannot be used. Nothing changes on an error."""
        wanted = {name for rule in config.policy for name in rule.signatures.formats}
        built: list[RegistrySignatureFormat] = []
        if config.notation.config_dir is not None:
            from trustd.formats.notation.format import NotationFormat
            from trustd.formats.notation.truststore import load_notation_config

            notation = load_notation_config(config.notation.config_dir)
            clients = self._registry_clients(config.registry)
            built.append(NotationFormat(notation, clients, self._verified[FormatName.NOTATION]))
        if FormatName.COSIGN in wanted:
            from trustd.formats.cosign.format import CosignFormat

            clients = self._registry_clients(config.registry)
            built.append(CosignFormat(clients, self._verified[FormatName.COSIGN]))
        formats: dict[FormatName, SignatureFormat] = {}
        for signature_format in built:
            signature_format.freshness_window = config.server.freshness_window
            formats[signature_format.name] = signature_format
        return formats

    def _registry_clients(self, settings: RegistryConfig) -> RegistryClients:
        from trustd.registry.client import RegistryLimits
        from trustd.registry.clients import RegistryClients

        if self._clients is None or settings != self._clients_for:
            if self._clients is not None:
                self._clients.close()
            limits = RegistryLimits(
                manifest_bytes=settings.max_manifest_bytes,
                referrers_page_bytes=settings.max_manifest_bytes,
                blob_bytes=settings.max_signature_bytes,
            )
            self._clients = RegistryClients(settings.hosts_dirs, settings.timeout, limits)
            self._clients_for = settings
        return self._clients

    def close(self) -> None:
        if self._clients is not None:
            self._clients.close()
            self._clients = None
        for verified in self._verified.values():
            verified.close()  # writes what its writer has not written yet


def check_formats(config: Config) -> list[str]:
    """What ``trustd check-config`` says of the formats beyond Notary v1: lines to print, after
    reading the Notation trust policy and stores and every cosign key file the rules name
    (ConfigError, naming the file, for one that cannot be used)."""
    said: list[str] = []
    if config.notation.config_dir is not None:
        from trustd.formats.notation.truststore import load_notation_config

        notation = load_notation_config(config.notation.config_dir)
        said.extend(f"warning: {warning}" for warning in notation.warnings)
        stores = len(notation.stores.stores)
        said.append(
            f"notation: {notation.policy.source}: {len(notation.policy.policies)} trust "
            f"policy statement(s), {stores} trust store(s)"
        )
    for rule in config.policy:
        if rule.cosign is not None:
            from trustd.formats.cosign.loader import load_public_key_files

            keys = load_public_key_files(list(rule.cosign.keys))
            load_public_key_files(list(rule.cosign.rekor_public_keys))
            ids = ", ".join(key.short_id for key in keys)
            said.append(
                f"cosign: {rule.source}: {len(keys)} key(s) ({ids}), threshold "
                f"{rule.cosign.threshold}"
            )
    return said
