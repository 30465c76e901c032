"""Notation signatures in the test registries: the real ``notation`` CLI, trust policies and
stores laid out as notation keeps them, and the signature manifests it writes, read back and
changed the way an attacker (or a broken pipeline) would change them.

``Notation`` runs the CLI (the ``notation`` peer, tests/peers) with a HOME and XDG directories of
its own, so nothing outside its directory is read or written. ``notation_config_dir`` makes the
directory trustd's ``[notation] config_dir`` points at: the signer's trust store and a trust
policy of the test's statements. ``OciRegistry`` reads and writes manifests and blobs of a test
registry over plain HTTP, for signature manifests trustd must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.stack.ports import StackError

SIGNATURE_TYPE = "application/vnd.cncf.notary.signature"
JWS = "application/jose+json"
COSE = "application/cose"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# The trust store `notation cert generate-test --default NAME` adds its certificate to.
TEST_STORE = "trustd-test"
_RUN_TIMEOUT = 180.0
_HTTP_TIMEOUT = 30.0


class Notation:
    """The notation CLI with a home of its own under ``home``."""

    def __init__(self, program: Path, home: Path) -> None:
        self.program = program
        self.home = home
        config = home / "config"
        for directory in (home, config, home / "cache", home / "docker"):
            directory.mkdir(parents=True, exist_ok=True)
        # Where notation keeps its keys, trust store and trust policy.
        self.config_dir = config / "notation"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(config),
            "XDG_CACHE_HOME": str(home / "cache"),
            "DOCKER_CONFIG": str(home / "docker"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.program), *args],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_RUN_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        if result.returncode != 0:
            # Never show a password given on the command line.
            shown = ["***" if index and args[index - 1] == "--password" else arg
                     for index, arg in enumerate(args)]  # fmt: skip
            raise StackError(
                f"notation {' '.join(shown)} -> exit {result.returncode}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
            )
        return result

    def generate_test_key(self, name: str, default: bool = False) -> Path:
        """A self-signed RSA test key and certificate, the certificate added to the trust store
        ``ca:<name>``; returns the certificate's file."""
        self.ok("cert", "generate-test", *(["--default"] if default else []), name)
        return self.config_dir / "localkeys" / f"{name}.crt"

    def add_local_key(self, name: str, key_file: Path, certificate_file: Path) -> None:
        """Make a key and certificate made elsewhere a signing key of this name (notation 1.x
        has no command for local key files: its signingkeys.json is edited as it writes it)."""
        path = self.config_dir / "signingkeys.json"
        document = json.loads(path.read_text()) if path.exists() else {"keys": []}
        document["keys"] = [k for k in document["keys"] if k.get("name") != name]
        document["keys"].append(
            {"name": name, "keyPath": str(key_file), "certPath": str(certificate_file)}
        )
        path.write_text(json.dumps(document, indent=4))

    def sign(
        self,
        reference: str,
        *,
        key: str | None = None,
        envelope: str = "jws",
        referrers_tag: bool = True,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """``notation sign`` of ``reference`` (repo@digest) into its plain-HTTP registry.

        ``referrers_tag=False`` is ``--force-referrers-tag=false``: the referrers API where the
        registry has one."""
        args = ["sign", "--insecure-registry", "--signature-format", envelope]
        if not referrers_tag:
            args.append("--force-referrers-tag=false")
        if key is not None:
            args += ["--key", key]
        if credentials is not None:
            args += ["--username", credentials[0], "--password", credentials[1]]
        self.ok(*args, reference)


# --- keys made here --------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalKey:
    """A signing key and its self-signed certificate, in files."""

    key_file: Path
    certificate_file: Path
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey


def short_lived_key(directory: Path, common_name: str, lifetime: timedelta) -> LocalKey:
    """A key whose self-signed code-signing certificate (made like ``notation cert
    generate-test``'s) stops being valid ``lifetime`` from now: sign with it at once, and it
    expires after signing. (notation refuses to sign with a certificate not valid then.)"""
    directory.mkdir(parents=True, exist_ok=True)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Notary"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    key_file = directory / f"{common_name}.key"
    certificate_file = directory / f"{common_name}.crt"
    key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return LocalKey(key_file, certificate_file, certificate, private_key)


def load_local_key(notation: Notation, name: str) -> LocalKey:
    """The key and certificate ``notation cert generate-test NAME`` wrote."""
    key_file = notation.config_dir / "localkeys" / f"{name}.key"
    certificate_file = notation.config_dir / "localkeys" / f"{name}.crt"
    private_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise StackError(f"{key_file} is not an RSA key")
    certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
    return LocalKey(key_file, certificate_file, certificate, private_key)


# --- trust policies --------------------------------------------------------------------------


def statement(
    name: str,
    scopes: Sequence[str],
    *,
    level: str = "strict",
    stores: Sequence[str] = (f"ca:{TEST_STORE}",),
    identities: Sequence[str] = ("*",),
) -> dict[str, Any]:
    """One trust policy statement, as notation's trustpolicy.json holds it."""
    return {
        "name": name,
        "registryScopes": list(scopes),
        "signatureVerification": {"level": level},
        "trustStores": list(stores),
        "trustedIdentities": list(identities),
    }


def write_trust_policy(config_dir: Path, statements: Iterable[Mapping[str, Any]]) -> Path:
    """``trustpolicy.json`` (the name notation 1.3 reads) in ``config_dir``."""
    path = config_dir / "trustpolicy.json"
    path.write_text(json.dumps({"version": "1.0", "trustPolicies": list(statements)}, indent=2))
    return path


def notation_config_dir(
    signer: Notation, directory: Path, statements: Iterable[Mapping[str, Any]]
) -> Path:
    """A notation configuration directory for trustd: ``signer``'s trust store, copied, and a
    trust policy of ``statements``."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shutil.copytree(signer.config_dir / "truststore", directory / "truststore")
    write_trust_policy(directory, statements)
    return directory


def add_to_trust_store(config_dir: Path, store: str, certificate_file: Path) -> None:
    """Put a certificate into the ``ca`` trust store ``store`` of a notation directory."""
    target = config_dir / "truststore" / "x509" / "ca" / store
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(certificate_file, target / certificate_file.name)


# --- signature manifests in a registry -------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def referrers_tag(digest: str) -> str:
    return digest.replace(":", "-")


@dataclass(frozen=True)
class SignatureManifest:
    """A Notation signature manifest in a registry, and its envelope."""

    descriptor: dict[str, Any]  # as an index lists it
    manifest: dict[str, Any]
    envelope: bytes

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])

    @property
    def envelope_type(self) -> str:
        return str(self.manifest["layers"][0]["mediaType"])


class OciRegistry:
    """Manifests and blobs of one plain-HTTP test registry (Basic auth when it has a user)."""

    def __init__(self, host: str, credentials: tuple[str, str] | None = None) -> None:
        self.host = host
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy for loopback traffic
        self.session.auth = credentials

    def close(self) -> None:
        self.session.close()

    def _url(self, repo: str, kind: str, reference: str) -> str:
        path = repo.removeprefix(self.host + "/")
        return f"http://{self.host}/v2/{path}/{kind}/{reference}"

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        accept = f"{OCI_MANIFEST}, {OCI_INDEX}"
        response = self.session.get(
            self._url(repo, "manifests", reference),
            headers={"Accept": accept},
            timeout=_HTTP_TIMEOUT,
        )
        if response.status_code == 404:
            return None
        self._check(response, f"GET manifest {repo}:{reference}", 200)
        return response.content, response.headers.get("Content-Type", "")

    def blob(self, repo: str, digest: str) -> bytes:
        response = self.session.get(self._url(repo, "blobs", digest), timeout=_HTTP_TIMEOUT)
        self._check(response, f"GET blob {repo}@{digest}", 200)
        return response.content

    def push_blob(self, repo: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` (monolithic); its descriptor (without a media type)."""
        digest = sha256(data)
        path = repo.removeprefix(self.host + "/")
        started = self.session.post(
            f"http://{self.host}/v2/{path}/blobs/uploads/", timeout=_HTTP_TIMEOUT
        )
        self._check(started, f"start a blob upload to {repo}", 202)
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.host}{location}"
        separator = "&" if "?" in location else "?"
        finished = self.session.put(
            f"{location}{separator}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=_HTTP_TIMEOUT,
        )
        self._check(finished, f"finish the blob upload of {digest} to {repo}", 201)
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo: str, reference: str | None, data: bytes, media_type: str) -> str:
        """Put a manifest (by its digest when ``reference`` is None); its digest."""
        digest = sha256(data)
        response = self.session.put(
            self._url(repo, "manifests", reference or digest),
            data=data,
            headers={"Content-Type": media_type},
            timeout=_HTTP_TIMEOUT,
        )
        self._check(response, f"PUT manifest {repo}:{reference or digest}", 201)
        return digest

    def delete_manifest(self, repo: str, reference: str) -> None:
        response = self.session.delete(
            self._url(repo, "manifests", reference), timeout=_HTTP_TIMEOUT
        )
        self._check(response, f"DELETE manifest {repo}:{reference}", 202)

    def referrers_api(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        """What ``GET /v2/<repo>/referrers/<digest>`` lists; None without the API."""
        response = self.session.get(
            self._url(repo, "referrers", digest),
            headers={"Accept": OCI_INDEX},
            timeout=_HTTP_TIMEOUT,
        )
        if response.status_code in (404, 405):
            return None
        self._check(response, f"GET referrers of {repo}@{digest}", 200)
        return list(response.json().get("manifests") or [])

    def tag_index(self, repo: str, digest: str) -> list[dict[str, Any]]:
        """The manifests the referrers tag schema's index (``sha256-<hex>``) lists."""
        fetched = self.manifest(repo, referrers_tag(digest))
        if fetched is None:
            return []
        return list(json.loads(fetched[0]).get("manifests") or [])

    def set_tag_index(self, repo: str, digest: str, manifests: Sequence[Mapping[str, Any]]) -> None:
        """Write the referrers tag schema's index of ``digest`` with exactly ``manifests``."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        data = json.dumps(index).encode()
        self.push_manifest(repo, referrers_tag(digest), data, OCI_INDEX)

    def notation_signatures(self, repo: str, digest: str, *, api: bool) -> list[SignatureManifest]:
        """The Notation signature manifests listed for ``digest``: by the referrers API
        (``api``) or by the tag schema's index."""
        listed = self.referrers_api(repo, digest) if api else self.tag_index(repo, digest)
        if listed is None:
            raise StackError(f"{self.host} has no referrers API")
        found = []
        for descriptor in listed:
            fetched = self.manifest(repo, descriptor["digest"])
            if fetched is None:
                continue
            manifest = json.loads(fetched[0])
            kind = manifest.get("artifactType") or manifest["config"]["mediaType"]
            if kind != SIGNATURE_TYPE:
                continue
            envelope = self.blob(repo, manifest["layers"][0]["digest"])
            found.append(SignatureManifest(dict(descriptor), manifest, envelope))
        return found

    def push_signature(
        self,
        repo: str,
        subject: Mapping[str, Any],
        envelope: bytes,
        envelope_type: str,
        *,
        tag_schema: bool,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Push a Notation signature manifest (notation's form: the config media type names
        it) of ``subject`` carrying ``envelope``; with ``tag_schema``, also list it in the
        subject's ``sha256-<hex>`` index. Returns the descriptor an index lists it by."""
        config = self.push_blob(repo, b"{}")
        layer = self.push_blob(repo, envelope)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": SIGNATURE_TYPE, **config},
            "layers": [{"mediaType": envelope_type, **layer}],
            "subject": dict(subject),
            "annotations": dict(annotations or {"io.cncf.notary.x509chain.thumbprint#S256": "[]"}),
        }
        data = json.dumps(manifest).encode()
        digest = self.push_manifest(repo, None, data, OCI_MANIFEST)
        descriptor = {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(data),
            "artifactType": SIGNATURE_TYPE,
        }
        if tag_schema:
            listed = self.tag_index(repo, str(subject["digest"]))
            self.set_tag_index(repo, str(subject["digest"]), [*listed, descriptor])
        return descriptor

    def _check(self, response: requests.Response, what: str, expected: int) -> None:
        if response.status_code != expected:
            raise StackError(
                f"registry {self.host}: {what} -> HTTP {response.status_code} {response.text[:300]}"
            )


def tampered(envelope: bytes, envelope_type: str) -> bytes:
    """The envelope with its signature changed in one bit: it parses, and no longer verifies."""
    if envelope_type == JWS:
        document = json.loads(envelope)
        signature = bytearray(_b64url_decode(document["signature"]))
        signature[len(signature) // 2] ^= 0x01
        document["signature"] = base64.urlsafe_b64encode(bytes(signature)).rstrip(b"=").decode()
        return json.dumps(document).encode()
    # COSE_Sign1 ends with its signature, a byte string: flip a bit of its last byte.
    changed = bytearray(envelope)
    changed[-1] ^= 0x01
    return bytes(changed)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
