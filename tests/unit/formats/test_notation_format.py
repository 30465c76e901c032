"""NotationFormat against a scripted registry without the referrers API: the tag schema's index
lists the signatures; judge admits the tag as its digest, inspect lists each signature verified
on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.formats import notation_factory as f
from tests.unit.registry_server import Manifest, ScriptedServer, index, manifest, serve
from trustd.config.load import parse_config
from trustd.formats.base import SignatureQuery
from trustd.formats.notation.format import SIGNATURE_ARTIFACT_TYPE, NotationFormat
from trustd.formats.notation.trustpolicy import parse_trust_policy
from trustd.formats.notation.truststore import NotationConfig
from trustd.formats.verified_cache import VerifiedDigests
from trustd.names.reference import parse_reference
from trustd.net.descriptor import Descriptor
from trustd.registry.clients import RegistryClients

REPO = "team/app"
NOW = datetime.now(UTC)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    yield from serve()


def statement_document(repository: str, level: str = "strict") -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "trustPolicies": [
                {
                    "name": "app",
                    "registryScopes": [repository],
                    "signatureVerification": {"level": level},
                    "trustStores": ["ca:acme"],
                    "trustedIdentities": ["*"],
                }
            ],
        }
    ).encode()


def blob(server: ScriptedServer, data: bytes) -> dict[str, object]:
    digest = Manifest(data).digest
    server.fixed("GET", f"/v2/{REPO}/blobs/{digest}", 200, data)
    return {"digest": digest, "size": len(data)}


def signature_manifest(
    server: ScriptedServer, subject: Descriptor, envelope: bytes
) -> dict[str, object]:
    """Serve a signature manifest of ``subject`` (the older form: the config media type says
    it) carrying ``envelope``; its descriptor as an index lists it."""
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": SIGNATURE_ARTIFACT_TYPE, **blob(server, b"{}")},
            "layers": [{"mediaType": f.JWS, **blob(server, envelope)}],
            "subject": subject.to_json(),
        }
    ).encode()
    signature = Manifest(body)
    server.fixed(
        "GET", f"/v2/{REPO}/manifests/{signature.digest}", 200, body, **signature.headers()
    )
    return {
        "mediaType": OCI_MANIFEST,
        "digest": signature.digest,
        "size": len(body),
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
    }


@pytest.fixture
def signed(
    server: ScriptedServer, tmp_path: Path
) -> tuple[NotationFormat, SignatureQuery, Manifest]:
    """An image tagged v1 with two signatures: one by the trusted chain, one by another."""
    image = manifest("notation-format")
    for method in ("HEAD", "GET"):
        for ref in ("v1", image.digest):
            server.fixed(method, f"/v2/{REPO}/manifests/{ref}", 200, image.body, **image.headers())
    server.fixed("GET", f"/v2/{REPO}/referrers/{image.digest}", 404)
    target = Descriptor(OCI_MANIFEST, image.digest, len(image.body))
    # judge verifies at the time of the call: certificates valid now.
    valid = {"not_before": NOW - timedelta(days=1), "not_after": NOW + timedelta(days=365)}
    trusted = f.build_chain(
        f.leaf_spec(**valid), f.intermediate_spec(**valid), f.root_spec(**valid)
    )
    other_root = f.root_spec(key_index=5, subject={"CN": "Other Root"}, **valid)
    other = f.build_chain(f.leaf_spec(**valid), f.intermediate_spec(**valid), other_root)
    payload = f.payload_for(target)
    headers = f.Headers(signing_time=NOW - timedelta(hours=1))
    listed = [
        signature_manifest(server, target, f.sign_jws(other, payload, headers)),
        signature_manifest(server, target, f.sign_jws(trusted, payload, headers)),
    ]
    tag = image.digest.replace(":", "-")
    server.fixed(
        "GET",
        f"/v2/{REPO}/manifests/{tag}",
        200,
        index(*listed),
        Content_Type="application/vnd.oci.image.index.v1+json",
    )
    repository = f"{server.host}/{REPO}"
    document = parse_trust_policy(statement_document(repository), "trustpolicy.json")
    config = NotationConfig("notation", document, f.stores(ca_acme=[trusted.root]))
    registries = RegistryClients(hosts_dirs=())
    notation = NotationFormat(config, registries, VerifiedDigests(None))
    rule = parse_config(
        '[notation]\nconfig_dir = "n"\n[[policy]]\nmatch = "**"\nsignatures = "notation"\n',
        "trustd.toml",
    ).policy[0]
    query = SignatureQuery(parse_reference(f"{repository}:v1"), rule)
    return notation, query, image


def test_inspect_lists_each_signature_verified_on_its_own(
    signed: tuple[NotationFormat, SignatureQuery, Manifest],
) -> None:
    notation, query, image = signed
    inspection = notation.inspect(query)
    assert (inspection.name, inspection.target.digest) == ("v1", image.digest)
    assert (inspection.policy, inspection.level, inspection.problems) == ("app", "strict", ())
    untrusted, trusted = inspection.signatures
    assert (trusted.verified, trusted.level, trusted.problem) == (True, "strict", "")
    assert trusted.signer == "CN=builder,O=acme-rockets.io,L=Seattle,ST=WA,C=US"
    assert trusted.issuer == "CN=Intermediate CA,O=acme-rockets.io,C=US"
    assert trusted.signing_scheme == "notary.x509"
    assert trusted.signing_time == NOW - timedelta(hours=1)
    assert trusted.expiry is None
    assert trusted.certificate_expires == (NOW + timedelta(days=365)).replace(microsecond=0)
    # The other signature is listed with what it claims and why it did not verify.
    assert untrusted.verified is False
    assert untrusted.signer == trusted.signer
    assert "is in the trust stores ca:acme" in untrusted.problem
    notation.registries.close()


def test_judge_admits_the_tag_as_the_digest_one_signature_verifies(
    signed: tuple[NotationFormat, SignatureQuery, Manifest],
) -> None:
    notation, query, image = signed
    answer = notation.judge(query)
    assert answer.error is None, answer.error
    assert answer.signed is not None
    assert (answer.signed.digest, answer.signed.name) == (image.digest, "v1")
    assert answer.signed.signer == "CN=builder,O=acme-rockets.io,L=Seattle,ST=WA,C=US"
    notation.registries.close()
