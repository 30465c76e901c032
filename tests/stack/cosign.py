"""cosign signatures for the end-to-end tests: the real cosign CLI, and hand-made ones.

``Cosign`` runs a cosign peer (``cosign2`` signs the classic ``sha256-<hex>.sig`` tag,
``cosign3`` a Sigstore bundle: as a referrer, or in the ``sha256-<hex>`` tag-schema index where
the registry has no referrers API), each run with its own HOME, XDG and DOCKER_CONFIG dirs and
every connection but loopback sent to a closed port, so nothing leaves the machine. Keys are
made here (``SigningKey``: an ECDSA P-256 private key kept in the clear for crafting, imported into
cosign's encrypted format for the CLI), so a test can both have cosign sign and sign by hand.

``RegistryWriter`` reads and writes manifests and blobs by plain HTTP, and the ``craft_*``
functions build the signatures the CLI will not make: a payload claiming another digest, a
tampered payload keeping its signature, a certificate-carrying signature.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.stack.peer_program import PeerProgram
from tests.stack.ports import StackError

COSIGN_PASSWORD = "trustd-test-password"  # protects throwaway test keys only

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
SIGNATURE_TYPE = "cosign container image signature"
_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def sig_tag(digest: str) -> str:
    """The classic signature tag of a manifest digest: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-", 1) + ".sig"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """A signing key in the three forms the tests need."""

    name: str
    private_pem: Path  # unencrypted PKCS#8, for signing in test code
    cosign_key: Path  # cosign's encrypted private key, for ``cosign sign --key``
    public: Path  # PEM public key, as trustd's [policy.cosign] keys and policy.json keyPath

    @cached_property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def sign(self, data: bytes) -> bytes:
        """An ASN.1 DER ECDSA P-256/SHA-256 signature of ``data``: what cosign writes."""
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    @property
    def key_id(self) -> str:
        spki = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    def certificate(self, directory: Path) -> Path:
        """A self-issued code-signing certificate of this key, as a Fulcio certificate carries
        the signer's key (``cosign sign --certificate`` attaches it to the signature)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"trustd test {self.name}")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(f"{self.name}@trustd.test")]), False
            )
            .sign(self.private_key, hashes.SHA256())
        )
        path = directory / f"{self.name}.crt"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path


# --- the CLI ------------------------------------------------------------------------------------


class Cosign(PeerProgram):
    """One cosign peer (``cosign2`` or ``cosign3``) with a home of its own under ``home``."""

    def __init__(self, program: Path, home: Path) -> None:
        super().__init__(
            program,
            home,
            {
                "COSIGN_PASSWORD": COSIGN_PASSWORD,
                # Anything but the loopback registries goes to a closed loopback port.
                "HTTPS_PROXY": "http://127.0.0.1:9",
                "HTTP_PROXY": "http://127.0.0.1:9",
                "NO_PROXY": "127.0.0.1",
            },
        )
        (home / "keys").mkdir(exist_ok=True)

    @property
    def major(self) -> int:
        return 3 if self.program.name.endswith("3") else 2

    def new_key(self, name: str) -> SigningKey:
        """A fresh ECDSA P-256 key, imported into cosign's key format."""
        directory = self.home / "keys"
        private_pem = directory / f"{name}.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        private_pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        prefix = directory / name
        self.ok(
            "import-key-pair",
            "--yes",
            "--key",
            str(private_pem),
            "--output-key-prefix",
            str(prefix),
        )
        return SigningKey(name, private_pem, prefix.with_suffix(".key"), prefix.with_suffix(".pub"))

    def log_in(self, host: str, username: str, password: str) -> None:
        """Let this cosign use ``username`` at ``host`` (its own docker config)."""
        config = self.home / "docker" / "config.json"
        auths = json.loads(config.read_text())["auths"] if config.exists() else {}
        auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        config.write_text(json.dumps({"auths": auths}))

    def sign(
        self,
        image: str,
        key: SigningKey,
        certificate: Path | None = None,
        referrer: bool = False,
    ) -> None:
        """Sign ``image`` (``host/repo@sha256:...``) offline with ``key``: cosign 2 the classic
        ``.sig`` tag (with ``referrer``, the same manifest pushed as an OCI 1.1 referrer, an
        experimental mode), cosign 3 a Sigstore bundle. ``certificate`` is attached."""
        args = ["sign", "--yes", "--allow-http-registry", "--key", str(key.cosign_key)]
        args.append("--tlog-upload=false")
        if self.major >= 3:
            args.append("--use-signing-config=false")
        if certificate is not None:
            args += ["--certificate", str(certificate)]
        if referrer:
            args.append("--registry-referrers-mode=oci-1-1")
        saved = dict(self.env)
        if referrer:
            self.env["COSIGN_EXPERIMENTAL"] = "1"
        try:
            self.ok(*args, image)
        finally:
            self.env = saved


# --- containers/image's policy ------------------------------------------------------------------


def sigstore_policy(directory: Path, scope: str, public_key: Path) -> tuple[Path, Path]:
    """containers/image's policy.json requiring a cosign key for ``scope``, and a registries.d
    that reads sigstore signatures from the registry (the classic ``.sig`` tag): what skopeo,
    podman and CRI-O (the ``containers-policy`` peer) are given."""
    policy = directory / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": [{"type": "reject"}],
                "transports": {
                    "docker": {
                        scope: [
                            {
                                "type": "sigstoreSigned",
                                "keyPath": str(public_key),
                                "signedIdentity": {"type": "matchRepository"},
                            }
                        ]
                    }
                },
            },
            indent=2,
        )
    )
    registries_d = directory / "registries.d"
    registries_d.mkdir()
    # YAML is a superset of JSON.
    (registries_d / "trustd-test.yaml").write_text(
        json.dumps({"docker": {scope: {"use-sigstore-attachments": True}}})
    )
    return policy, registries_d


# --- the registry, by plain HTTP ----------------------------------------------------------------


class RegistryWriter:
    """Reads and writes a test registry's manifests and blobs (no authentication)."""

    def __init__(self, host: str) -> None:
        self.url = f"http://{host}"
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: no proxies

    def close(self) -> None:
        self.session.close()

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        response = self.session.get(
            f"{self.url}/v2/{repo}/manifests/{reference}", headers={"Accept": _ACCEPT}, timeout=30
        )
        if response.status_code == 404:
            return None
        _check(response, f"GET manifest {repo}:{reference}")
        return response.content, response.headers.get("Content-Type", "").split(";")[0]

    def manifest_json(self, repo: str, reference: str) -> dict[str, Any]:
        found = self.manifest(repo, reference)
        if found is None:
            raise StackError(f"{self.url}: no manifest {repo}:{reference}")
        document: dict[str, Any] = json.loads(found[0])
        return document

    def tags(self, repo: str) -> list[str]:
        response = self.session.get(f"{self.url}/v2/{repo}/tags/list", timeout=30)
        _check(response, f"tags of {repo}")
        return list(response.json().get("tags") or [])

    def blob(self, repo: str, digest: str) -> bytes:
        response = self.session.get(f"{self.url}/v2/{repo}/blobs/{digest}", timeout=30)
        _check(response, f"GET blob {repo}@{digest}")
        if digest_of(response.content) != digest:
            raise StackError(f"{self.url}: blob {digest} of {repo} came with other bytes")
        return response.content

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` (monolithic: POST, then PUT with the digest); its digest."""
        digest = digest_of(data)
        started = self.session.post(f"{self.url}/v2/{repo}/blobs/uploads/", timeout=30)
        _check(started, f"start a blob upload to {repo}")
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        finished = self.session.put(
            f"{location}{separator}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        _check(finished, f"upload blob {digest} to {repo}")
        return digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        response = self.session.put(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            data=data,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        _check(response, f"PUT manifest {repo}:{reference}")
        return digest_of(data)

    def copy_manifest(self, repo: str, source: str, destination: str) -> str:
        """Tag the manifest ``source`` names as ``destination`` too (its bytes unchanged)."""
        found = self.manifest(repo, source)
        if found is None:
            raise StackError(f"{self.url}: no manifest {repo}:{source} to copy")
        data, media_type = found
        return self.put_manifest(repo, destination, data, media_type or OCI_MANIFEST)


def _check(response: requests.Response, what: str) -> None:
    if response.status_code >= 300:
        raise StackError(f"{what} -> {response.status_code} {response.text[:300]}")


# --- signatures made by hand --------------------------------------------------------------------


def simple_signing_payload(
    docker_reference: str, digest: str, *, optional: Any = None, kind: str = SIGNATURE_TYPE
) -> bytes:
    """A classic payload, as cosign writes it (compact JSON, ``optional`` null unless given);
    keys in the order cosign's Go structs marshal them."""
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": kind,
        },
        "optional": optional,
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    """A classic signature layer: the payload and the annotations its descriptor carries."""

    payload: bytes
    annotations: Mapping[str, str]


def signed_layer(key: SigningKey, payload: bytes, certificate: Path | None = None) -> Layer:
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(key.sign(payload)).decode()}
    if certificate is not None:
        annotations[CERTIFICATE_ANNOTATION] = certificate.read_text()
    return Layer(payload, annotations)


def layers_of(writer: RegistryWriter, repo: str, reference: str) -> list[Layer]:
    """The layers of a classic signature manifest, with their payload bytes."""
    manifest = writer.manifest_json(repo, reference)
    return [
        Layer(writer.blob(repo, layer["digest"]), dict(layer.get("annotations") or {}))
        for layer in manifest["layers"]
    ]


def put_signature_manifest(
    writer: RegistryWriter, repo: str, tag: str, layers: Sequence[Layer]
) -> str:
    """Push a classic signature manifest of ``layers`` as ``tag``; its digest."""
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(x.payload) for x in layers]},
        },
        separators=(",", ":"),
    ).encode()
    descriptors = []
    for layer in layers:
        descriptors.append(
            {
                "mediaType": SIMPLE_SIGNING,
                "size": len(layer.payload),
                "digest": writer.put_blob(repo, layer.payload),
                "annotations": dict(layer.annotations),
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "size": len(config),
            "digest": writer.put_blob(repo, config),
        },
        "layers": descriptors,
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return writer.put_manifest(repo, tag, data, OCI_MANIFEST)


def tampered(layer: Layer) -> Layer:
    """The same layer with its payload changed and its signature annotation kept."""
    document = json.loads(layer.payload)
    document["optional"] = {"creator": "someone else"}
    return Layer(json.dumps(document, separators=(",", ":")).encode(), layer.annotations)
