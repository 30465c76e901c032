from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit import notary_factory as f
from trustd.errors import ExpiredMetadata, PinningViolation
from trustd.formats.notary.keys import canonical_key_id
from trustd.formats.notary.pinning import TrustPinning, check_first_root
from trustd.formats.notary.trusted_set import TrustedSet

NOW = f.NOW
FIXTURES = Path(__file__).parent.parent / "data" / "notary"


def _check(repo: f.Repo, pinning: TrustPinning, gun: str = f.GUN) -> None:
    data = repo.root()
    check_first_root(gun, TrustedSet(gun, data).root, data, NOW, pinning)


def test_tofu_allowed_and_refused() -> None:
    _check(f.Repo(), TrustPinning())
    with pytest.raises(PinningViolation, match="trust-on-first-use is disabled"):
        _check(f.Repo(), TrustPinning(allow_tofu=False))


def test_pinned_by_certificate_id_or_canonical_id() -> None:
    repo = f.Repo()
    trusted = TrustedSet(f.GUN, repo.root())
    key = trusted.root.keys[repo.root_keys[0].key_id]
    _check(repo, TrustPinning(pinned_key_ids=(key.key_id,), allow_tofu=False))
    _check(repo, TrustPinning(pinned_key_ids=(canonical_key_id(key),), allow_tofu=False))
    with pytest.raises(PinningViolation, match="is pinned"):
        _check(repo, TrustPinning(pinned_key_ids=("ab" * 32,)))


def test_pinned_key_must_meet_threshold_alone() -> None:
    pinned, other = f.x509_key(), f.x509_key()
    repo = f.Repo(root_keys=[pinned, other], root_threshold=2)
    with pytest.raises(PinningViolation, match="1 of 2"):
        _check(repo, TrustPinning(pinned_key_ids=(pinned.key_id,)))


def test_ca_pinning_accepts_chained_and_refuses_others() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = f.certificate(ca_key, "pinning CA", is_ca=True)
    chained = f.Repo(root_keys=[f.x509_key(issuer=(ca, ca_key))])
    _check(chained, TrustPinning(ca_certificates=(ca,)))
    with pytest.raises(PinningViolation, match="pinned CA"):
        _check(f.Repo(), TrustPinning(ca_certificates=(ca,)))


def test_certificate_rules() -> None:
    with pytest.raises(PinningViolation, match="not for"):
        _check(f.Repo(root_keys=[f.x509_key("other/gun")]), TrustPinning())
    with pytest.raises(ExpiredMetadata, match="expired at"):
        _check(f.Repo(root_keys=[f.x509_key(not_after=NOW - timedelta(days=1))]), TrustPinning())
    with pytest.raises(ExpiredMetadata, match="not valid before"):
        _check(f.Repo(root_keys=[f.x509_key(not_before=NOW + timedelta(days=2))]), TrustPinning())
    with pytest.raises(PinningViolation, match="bare 'ecdsa' key"):
        _check(f.Repo(root_keys=[f.ecdsa_key()]), TrustPinning())


def test_real_root_pinned_by_the_cli_key_file_name() -> None:
    gun = "127.0.0.1:5000/library/hello"
    data = (FIXTURES / "root.json").read_bytes()
    root = TrustedSet(gun, data).root
    file_names = (FIXTURES / "private_key_files.txt").read_text().split()
    pinned = tuple(name.removesuffix(".key") for name in file_names)
    now = datetime(2026, 11, 25, tzinfo=UTC)  # inside the fixture certificate's validity
    check_first_root(gun, root, data, now, TrustPinning(pinned_key_ids=pinned, allow_tofu=False))
