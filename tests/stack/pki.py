"""A throwaway P-256 certificate authority for TLS and Notary delegation certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates start a little in the past so clock skew between processes never matters.
_BACKDATE = datetime.timedelta(minutes=5)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    # Unencrypted PKCS#8: what notary-server, `notary key import` and requests all accept.
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class TestPKI:
    """A CA under ``directory`` issuing server, client and self-signed certificates."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, directory: Path, ca_name: str = "trustd test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_cert = self.directory / "ca.crt"
        _write_cert(self._ca, self.ca_cert)

    def _issue(
        self,
        name: str,
        common_name: str,
        usage: x509.ObjectIdentifier,
        hosts: Sequence[str],
        days: int,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san_entry(host) for host in hosts]), critical=False
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        _write_cert(cert, cert_path)
        _write_key(key, key_path)
        return cert_path, key_path

    def issue_server_cert(
        self, name: str, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 30
    ) -> tuple[Path, Path]:
        """A TLS server certificate for ``hosts``, signed by the CA: (cert_path, key_path)."""
        return self._issue(
            name, hosts[0] if hosts else name, ExtendedKeyUsageOID.SERVER_AUTH, hosts, days
        )

    def issue_client_cert(self, name: str, days: int = 30) -> tuple[Path, Path]:
        """A TLS client certificate with CN ``name``, signed by the CA: (cert_path, key_path)."""
        return self._issue(name, name, ExtendedKeyUsageOID.CLIENT_AUTH, (), days)

    def _unused_paths(self, stem: str) -> tuple[Path, Path]:
        """``stem.crt``/``stem.key``, numbered so two signers with one name never collide."""
        candidate, number = stem, 1
        while (self.directory / f"{candidate}.crt").exists():
            number += 1
            candidate = f"{stem}-{number}"
        return self.directory / f"{candidate}.crt", self.directory / f"{candidate}.key"

    def self_signed_cert(
        self,
        common_name: str,
        days: int = 365,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        file_stem: str | None = None,
    ) -> tuple[Path, Path]:
        """A self-signed P-256 certificate, as Notary delegation signers use: (cert, key).

        ``not_before``/``not_after`` override the validity window (e.g. an expired signer).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start = not_before if not_before is not None else now - _BACKDATE
        end = not_after if not_after is not None else now + datetime.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        stem = file_stem or "self-signed-" + common_name.replace("/", "_")
        cert_path, key_path = self._unused_paths(stem)
        _write_cert(cert, cert_path)
        _write_key(key, key_path)
        return cert_path, key_path
