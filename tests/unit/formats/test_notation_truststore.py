"""Loading a Notation configuration directory: the trust policy and the named trust stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.unit.formats import notation_factory as f
from trustd.errors import ConfigError
from trustd.formats.notation.errors import TrustPolicyError, TrustStoreError
from trustd.formats.notation.trustpolicy import StoreType, TrustStoreRef
from trustd.formats.notation.truststore import (
    load_notation_config,
    load_trust_policy,
    read_certificates,
)
from trustd.formats.notation.verify import verify_signature

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def write_policy(
    directory: Path, file_name: str = "trustpolicy.oci.json", **statement: object
) -> None:
    body = {
        "name": "images",
        "registryScopes": ["registry.example.com/app"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:acme"],
        "trustedIdentities": ["*"],
    }
    body.update(statement)
    (directory / file_name).write_text(json.dumps({"version": "1.0", "trustPolicies": [body]}))


def store(directory: Path, kind: str = "ca", name: str = "acme") -> Path:
    path = directory / "truststore" / "x509" / kind / name
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def chain() -> f.Chain:
    return f.build_chain()


def test_configuration_directory_is_loaded_and_verifies(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path)
    (store(tmp_path) / "root.pem").write_bytes(chain.root.public_bytes(PEM))
    config = load_notation_config(tmp_path)
    policy = config.policy.policy_for("registry.example.com/app")
    result = verify_signature(f.sign_jws(chain), f.JWS, f.MANIFEST, policy, config.stores, f.NOW)
    assert result.trusted_by == "ca:acme"
    assert config.warnings == ()
    assert config.policy.source == str(tmp_path / "trustpolicy.oci.json")


def test_older_policy_file_name_is_read_and_the_newer_wins(tmp_path: Path) -> None:
    write_policy(tmp_path, "trustpolicy.json", name="old")
    assert load_trust_policy(tmp_path).policies[0].name == "old"
    write_policy(tmp_path, name="new")
    assert load_trust_policy(tmp_path).policies[0].name == "new"


def test_missing_policy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(TrustPolicyError, match="no Notation trust policy") as raised:
        load_notation_config(tmp_path)
    assert isinstance(raised.value, ConfigError)


def test_policy_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_policy(elsewhere)
    (tmp_path / "trustpolicy.oci.json").symlink_to(elsewhere / "trustpolicy.oci.json")
    with pytest.raises(TrustPolicyError, match="symbolic link"):
        load_trust_policy(tmp_path)


def test_policy_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "trustpolicy.oci.json")
    with pytest.raises(TrustPolicyError, match="not a regular file"):
        load_trust_policy(tmp_path)


def test_oversized_policy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trustpolicy.oci.json").write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(TrustPolicyError, match="larger than"):
        load_trust_policy(tmp_path)


def test_only_the_stores_the_policy_names_are_read(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path, trustStores=["ca:acme", "signingAuthority:sa", "tsa:ts"])
    (store(tmp_path) / "root.crt").write_bytes(chain.root.public_bytes(DER))
    (store(tmp_path, "signingAuthority", "sa") / "sa.cer").write_bytes(chain.root.public_bytes(PEM))
    (store(tmp_path, "tsa", "ts") / "tsa.pem").write_bytes(chain.root.public_bytes(PEM))
    (store(tmp_path, "ca", "unreferenced") / "broken.pem").write_bytes(b"garbage")
    config = load_notation_config(tmp_path)
    assert set(config.stores.stores) == {
        TrustStoreRef(StoreType.CA, "acme"),
        TrustStoreRef(StoreType.SIGNING_AUTHORITY, "sa"),
        TrustStoreRef(StoreType.TSA, "ts"),
    }


def test_file_with_several_certificates_pem_and_der(tmp_path: Path, chain: f.Chain) -> None:
    other = f.build_chain(root=f.root_spec(key_index=5, subject={"CN": "Other"})).root
    pem = b"subject=CN=Root CA\n" + chain.root.public_bytes(PEM) + other.public_bytes(PEM)
    assert [c.subject for c in read_certificates(pem)] == [chain.root.subject, other.subject]
    der = chain.root.public_bytes(DER) + other.public_bytes(DER)
    assert [c.subject for c in read_certificates(der)] == [chain.root.subject, other.subject]
    write_policy(tmp_path)
    (store(tmp_path) / "roots.pem").write_bytes(pem)
    loaded = load_notation_config(tmp_path).stores.get(TrustStoreRef(StoreType.CA, "acme"))
    assert loaded is not None and len(loaded.certificates) == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no certificates"),
        (b"hello", "neither PEM nor DER"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "no complete PEM block"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not base64"),
        (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "cannot be parsed"),
        (b"\x30\x82\x10\x00\x00", "truncated"),
        (b"\x30\x85\x00\x00\x00\x00\x00", "malformed"),
    ],
)
def test_unreadable_certificate_data_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_certificates(data)


def test_store_problems_are_config_errors(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path)
    with pytest.raises(TrustStoreError, match="trust store ca:acme does not exist"):
        load_notation_config(tmp_path)
    directory = store(tmp_path)
    with pytest.raises(TrustStoreError, match="holds no certificates"):
        load_notation_config(tmp_path)
    (directory / "bad.pem").write_bytes(b"not a certificate")
    with pytest.raises(TrustStoreError, match=r"bad\.pem: neither PEM nor DER"):
        load_notation_config(tmp_path)


def test_symlinks_in_stores_are_refused(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path)
    directory = store(tmp_path)
    real = tmp_path / "root.pem"
    real.write_bytes(chain.root.public_bytes(PEM))
    (directory / "root.pem").symlink_to(real)
    with pytest.raises(TrustStoreError, match="symbolic link"):
        load_notation_config(tmp_path)
    (directory / "root.pem").unlink()
    directory.rmdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "root.pem").write_bytes(chain.root.public_bytes(PEM))
    directory.symlink_to(other)
    with pytest.raises(TrustStoreError, match="not a directory"):
        load_notation_config(tmp_path)


def test_subdirectories_and_other_files_are_ignored_with_a_warning(
    tmp_path: Path, chain: f.Chain
) -> None:
    write_policy(tmp_path)
    directory = store(tmp_path)
    (directory / "root.pem").write_bytes(chain.root.public_bytes(PEM))
    (directory / "sub").mkdir()
    (directory / "sub" / "other.pem").write_bytes(b"ignored")
    (directory / "README").write_text("notes")
    config = load_notation_config(tmp_path)
    assert len(config.warnings) == 2
    assert any("subdirectory" in warning for warning in config.warnings)
    assert any("README is ignored" in warning for warning in config.warnings)


def test_leaf_certificate_that_is_not_self_signed_is_refused(
    tmp_path: Path, chain: f.Chain
) -> None:
    write_policy(tmp_path)
    (store(tmp_path) / "leaf.pem").write_bytes(chain.certificates[0].public_bytes(PEM))
    with pytest.raises(TrustStoreError, match="neither a CA certificate nor self-signed"):
        load_notation_config(tmp_path)


def test_self_signed_leaf_may_be_a_trust_anchor(tmp_path: Path) -> None:
    write_policy(tmp_path)
    (store(tmp_path) / "leaf.pem").write_bytes(f.make_cert(f.leaf_spec()).public_bytes(PEM))
    load_notation_config(tmp_path)


def test_tsa_store_holds_only_root_cas(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path, trustStores=["ca:acme", "tsa:ts"])
    (store(tmp_path) / "root.pem").write_bytes(chain.root.public_bytes(PEM))
    (store(tmp_path, "tsa", "ts") / "ca.pem").write_bytes(chain.certificates[1].public_bytes(PEM))
    with pytest.raises(TrustStoreError, match="not a self-signed root CA"):
        load_notation_config(tmp_path)


def test_oversized_certificate_file_is_refused(tmp_path: Path, chain: f.Chain) -> None:
    write_policy(tmp_path)
    (store(tmp_path) / "big.pem").write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(TrustStoreError, match="larger than"):
        load_notation_config(tmp_path)
