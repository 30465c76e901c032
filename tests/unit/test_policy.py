"""Policy decisions: which rule applies, what is pulled, and what is refused, for each mode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trustd.config.load import parse_config
from trustd.errors import ConfigError, NotaryUnavailable
from trustd.formats.notary.engine import OfflineUse
from trustd.formats.notary.metadata import TargetFile
from trustd.policy.engine import Action, Decision, PolicyEngine, Verdict, format_label

GOOD = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64

CONFIG = """
exempt = ["registry.k8s.io/pause:*"]

[[policy]]
match = "example.com/audited/**"
mode = "audit"

[[policy]]
match = "example.com/open/*"
mode = "off"

[[policy]]
match = "example.com/loose/*"
require_signed_digests = false

[[policy]]
match = "example.com/strict/*"
signers = ["targets/releases", "targets/qa"]
"""


class SignedTable:
    """A repository view with just what resolution reads: per role, the signed tags."""

    def __init__(self, gun: str, tags: dict[str, str], cached_age: float | None) -> None:
        self.gun = gun
        self.cached_age = cached_age
        self.outage = "notary is down" if cached_age is not None else None
        self.from_cache = cached_age is not None
        self._targets = SimpleNamespace(
            targets={
                tag: TargetFile(100, {"sha256": bytes.fromhex(digest.split(":")[1])})
                for tag, digest in tags.items()
            }
        )

    def role_targets(self, role: str) -> SimpleNamespace | None:
        return self._targets if role == "targets" else None


class SignedTags:
    """Stands in for the trust engine: a table of what is signed (the engine has its own tests).

    ``down`` makes the server unreachable; ``cached`` says what this node holds from before.
    """

    def __init__(
        self, signed: dict[tuple[str, str], str], down: bool = False, cached: bool = False
    ) -> None:
        self.signed = signed
        self.down = down
        self.cached = cached
        self.offline_asked: list[OfflineUse | None] = []

    def reconfigure(self, settings: object) -> None:
        pass

    def repository(self, registry, gun, credentials=None, offline=None) -> SignedTable:
        self.offline_asked.append(offline)
        tags = {
            tag: digest for (signed_gun, tag), digest in self.signed.items() if signed_gun == gun
        }
        if not self.down:
            return SignedTable(gun, tags, None)
        outage = NotaryUnavailable(
            f"cannot reach notary at https://notary.test for {gun}: connection refused"
        )
        if offline is None or not self.cached:
            raise outage
        return SignedTable(gun, tags, 42.0)


def engine(
    signed: dict[tuple[str, str], str], down: bool = False, cached: bool = False
) -> tuple[PolicyEngine, list]:
    decisions: list[Decision] = []
    trust = SignedTags(signed, down, cached)
    policy = PolicyEngine(parse_config(CONFIG, "test.toml"), trust)  # type: ignore[arg-type]
    policy.add_observer(decisions.append)
    return policy, decisions


def test_enforce_pins_the_pull_to_the_signed_digest() -> None:
    policy, seen = engine({("docker.io/library/nginx", "1.25"): GOOD})
    decision = policy.decide("nginx:1.25")
    assert decision.verdict is Verdict.ALLOW
    assert decision.pull_ref == f"docker.io/library/nginx@{GOOD}"
    assert decision.mode == "enforce" and decision.rule == "default rule"
    assert seen == [decision] and decision.latency_seconds >= 0


def test_enforce_denies_an_unsigned_tag_with_the_reason() -> None:
    policy, _ = engine({})
    decision = policy.decide("example.com/app:1.0")
    assert decision.verdict is Verdict.DENY
    assert decision.pull_ref is None
    assert decision.reason == "tag 1.0 is not signed in example.com/app"


def test_malformed_reference_is_denied_not_raised() -> None:
    policy, _ = engine({})
    decision = policy.decide("Bad Image::")
    assert decision.verdict is Verdict.DENY and decision.mode == "invalid"
    assert "invalid image reference" in decision.reason


def test_unreachable_notary_is_a_denial_in_enforce_mode() -> None:
    policy, _ = engine({}, down=True)
    decision = policy.decide("example.com/app:1.0")
    assert decision.verdict is Verdict.DENY
    assert isinstance(decision.error, NotaryUnavailable)


def test_audit_mode_admits_what_is_asked_and_records_the_failure() -> None:
    policy, _ = engine({})
    decision = policy.decide("example.com/audited/team/app:2")
    assert decision.verdict is Verdict.AUDIT_FAIL
    assert decision.allowed and decision.pull_ref == "example.com/audited/team/app:2"
    assert "not signed" in decision.reason


def test_audit_mode_pulls_as_asked_even_when_signed() -> None:
    policy, _ = engine({("example.com/audited/app", "2"): GOOD})
    decision = policy.decide("example.com/audited/app:2")
    assert decision.verdict is Verdict.ALLOW and decision.pull_ref == "example.com/audited/app:2"


def test_off_and_exempt_skip_verification() -> None:
    policy, _ = engine({}, down=True)
    off = policy.decide("example.com/open/app:1")
    assert (off.verdict, off.mode, off.pull_ref) == (Verdict.ALLOW, "off", "example.com/open/app:1")
    exempt = policy.decide("registry.k8s.io/pause:3.9")
    assert (exempt.verdict, exempt.mode) == (Verdict.ALLOW, "exempt")


def test_decisions_name_the_format_they_rest_on() -> None:
    policy, _ = engine({("docker.io/library/nginx", "1.25"): GOOD})
    assert policy.decide("nginx:1.25").format == "notary-v1"  # what verified
    assert policy.decide("example.com/app:1.0").format == "notary-v1"  # what was required
    assert policy.decide("example.com/open/app:1").format == ""  # nothing asked
    assert policy.decide("registry.k8s.io/pause:3.9").format == ""
    assert policy.decide("Bad Image::").format == ""


@pytest.mark.parametrize(
    ("signatures", "label"),
    [
        ('"notation"', "notation"),
        ('{ any_of = ["notary-v1", "notation"] }', "notary-v1|notation"),
        ('{ all_of = ["notation", "cosign"] }', "notation+cosign"),
    ],
)
def test_a_rules_formats_as_decisions_name_them(signatures: str, label: str) -> None:
    text = (
        '[notation]\nconfig_dir = "n"\n[[policy]]\nmatch = "**"\n'
        f'signatures = {signatures}\n[policy.cosign]\nkeys = ["{__file__}"]\n'
    )
    assert format_label(parse_config(text, "t.toml").policy[0].signatures) == label


def test_digest_references_must_be_signed_unless_the_rule_says_otherwise() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD})
    assert policy.decide(f"example.com/app@{GOOD}").verdict is Verdict.ALLOW
    assert policy.decide(f"example.com/app@{OTHER}").verdict is Verdict.DENY
    loose = policy.decide(f"example.com/loose/app@{OTHER}")
    assert loose.verdict is Verdict.ALLOW and loose.signed is None


def test_tag_and_digest_must_agree() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD})
    assert policy.decide(f"example.com/app:1@{GOOD}").verdict is Verdict.ALLOW
    mismatch = policy.decide(f"example.com/app:1@{OTHER}")
    assert mismatch.verdict is Verdict.DENY
    assert f"signed as {GOOD}, not {OTHER}" in mismatch.reason


def test_rule_signers_must_all_sign() -> None:
    # Only "targets" signed the tag; the rule wants targets/releases and targets/qa.
    policy, _ = engine({("example.com/strict/app", "1"): GOOD})
    decision = policy.decide("example.com/strict/app:1")
    assert decision.verdict is Verdict.DENY
    assert "required signer" in decision.reason


CONFIG_OFFLINE = """
[[policy]]
match = "example.com/strict-outage/*"
offline = "deny"

[[policy]]
match = "example.com/aged/*"
max_offline_age = 600
"""


def test_outage_policy_reaches_the_engine() -> None:
    trust = SignedTags({}, down=False)
    policy = PolicyEngine(parse_config(CONFIG_OFFLINE, "t.toml"), trust)  # type: ignore[arg-type]
    policy.decide("example.com/strict-outage/app:1")
    policy.decide("example.com/aged/app:1")
    policy.decide("example.com/other:1")
    assert trust.offline_asked == [None, OfflineUse(600.0), OfflineUse(None)]


def test_decision_from_cached_trust_data_says_so() -> None:
    policy, seen = engine({("example.com/app", "1"): GOOD}, down=True, cached=True)
    decision = policy.decide("example.com/app:1")
    assert decision.verdict is Verdict.ALLOW and decision.pull_ref == f"example.com/app@{GOOD}"
    assert decision.cached_age == 42.0
    assert "judged from trust data cached on this node, confirmed 42s ago" in decision.reason
    assert "because notary is down" in decision.reason
    denied = policy.decide("example.com/app:2")
    assert denied.verdict is Verdict.DENY and denied.cached_age == 42.0
    assert denied.message.startswith("SignatureValidationFailed: trustd: tag 2 is not signed")
    assert [d.cached_age for d in seen] == [42.0, 42.0]


def test_outage_without_cached_data_is_registry_unavailable() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD}, down=True, cached=False)
    decision = policy.decide("example.com/app:1")
    assert decision.verdict is Verdict.DENY and decision.cached_age is None
    assert decision.message.startswith("RegistryUnavailable: trustd: cannot reach notary")


@pytest.mark.parametrize("image", ["nginx", "docker.io/library/nginx:latest"])
def test_default_tag_is_latest(image: str) -> None:
    policy, _ = engine({("docker.io/library/nginx", "latest"): GOOD})
    assert policy.decide(image).pull_ref == f"docker.io/library/nginx@{GOOD}"


def test_local_image_must_be_the_signed_one() -> None:
    policy, seen = engine({("example.com/app", "1"): GOOD, ("example.com/audited/app", "1"): GOOD})
    status = policy.decide("example.com/app:1", action=Action.STATUS)
    assert policy.check_local_image(status, [f"example.com/app@{GOOD}"]) is status

    sideloaded = policy.check_local_image(status, [f"example.com/app@{OTHER}"])
    assert sideloaded.verdict is Verdict.DENY and sideloaded.pull_ref is None
    assert sideloaded.reason == (
        f"the local image is example.com/app@{OTHER}, but tag 1 of example.com/app is signed as "
        f"{GOOD}"
    )
    assert seen[-1] is sideloaded  # recorded like any decision

    audited = policy.decide("example.com/audited/app:1")
    mismatch = policy.check_local_image(audited, [f"example.com/audited/app@{OTHER}"])
    assert mismatch.verdict is Verdict.AUDIT_FAIL and mismatch.allowed
    assert mismatch.reason.startswith(f"pulled example.com/audited/app@{OTHER}, but tag 1")


def test_local_image_checks_leave_unverified_decisions_alone() -> None:
    policy, seen = engine({}, down=True)
    off = policy.decide("example.com/open/app:1", action=Action.STATUS)
    assert policy.check_local_image(off, ["example.com/open/app@" + OTHER]) is off
    denied = policy.decide("example.com/app:1", action=Action.STATUS)
    assert policy.check_local_image(denied, []) is denied
    assert len(seen) == 2


def test_a_config_problem_met_during_a_lookup_is_a_denial() -> None:
    policy, _ = engine({})

    def unreadable(*args: object, **kwargs: object) -> None:
        raise ConfigError("cannot read the Notary password file /etc/trustd/pw: Permission denied")

    policy.trust.repository = unreadable  # type: ignore[method-assign]
    decision = policy.decide("example.com/app:1")
    assert decision.verdict is Verdict.DENY
    assert decision.message == (
        "SignatureValidationFailed: trustd: cannot read the Notary password file "
        "/etc/trustd/pw: Permission denied"
    )


# -- containerd's image-verifier hook: a name already resolved to a digest ------------------------


def test_resolved_tag_is_admitted_only_as_its_signed_digest() -> None:
    policy, seen = engine({("example.com/app", "1"): GOOD})
    admitted = policy.judge_resolved("example.com/app:1", GOOD)
    assert (admitted.action, admitted.verdict, admitted.mode) == (
        Action.VERIFY,
        Verdict.ALLOW,
        "enforce",
    )
    assert admitted.signed is not None and admitted.signed.digest == GOOD
    assert admitted.pull_ref == f"example.com/app@{GOOD}"

    swapped = policy.judge_resolved("example.com/app:1", OTHER)  # the tag was re-pushed
    assert swapped.verdict is Verdict.DENY
    assert swapped.reason == f"tag 1 of example.com/app is signed as {GOOD}, not {OTHER}"
    assert swapped.message.startswith("SignatureValidationFailed: trustd: tag 1 of example.com")
    assert seen == [admitted, swapped]


def test_resolved_digest_reference_must_be_a_signed_target() -> None:
    policy, _ = engine({("example.com/app", "1"): GOOD})
    assert policy.judge_resolved(f"example.com/app@{GOOD}", GOOD).verdict is Verdict.ALLOW
    unsigned = policy.judge_resolved(f"example.com/app@{OTHER}", OTHER)
    assert unsigned.verdict is Verdict.DENY
    assert unsigned.reason == f"{OTHER} is not a signed target of example.com/app"
    loose = policy.judge_resolved(f"example.com/loose/app@{OTHER}", OTHER)
    assert loose.verdict is Verdict.ALLOW and loose.signed is None


def test_resolved_unsigned_tag_and_unreachable_notary() -> None:
    policy, _ = engine({})
    unsigned = policy.judge_resolved("example.com/app:1.1", GOOD)
    assert (
        unsigned.message
        == "SignatureValidationFailed: trustd: tag 1.1 is not signed in example.com/app"
    )
    down, _ = engine({}, down=True)
    unreachable = down.judge_resolved("example.com/app:1", GOOD)
    assert unreachable.verdict is Verdict.DENY
    assert unreachable.message.startswith("RegistryUnavailable: trustd: cannot reach notary")


def test_resolved_audit_off_and_exempt_as_for_pulls() -> None:
    policy, _ = engine({("example.com/audited/app", "2"): GOOD}, down=False)
    audited = policy.judge_resolved("example.com/audited/app:2", OTHER)
    assert audited.verdict is Verdict.AUDIT_FAIL and audited.allowed
    assert audited.reason == f"tag 2 of example.com/audited/app is signed as {GOOD}, not {OTHER}"
    down, _ = engine({}, down=True)
    off = down.judge_resolved("example.com/open/app:1", OTHER)
    assert (off.verdict, off.mode) == (Verdict.ALLOW, "off")
    exempt = down.judge_resolved("registry.k8s.io/pause:3.9", OTHER)
    assert (exempt.verdict, exempt.mode) == (Verdict.ALLOW, "exempt")


@pytest.mark.parametrize(
    ("image", "digest", "problem"),
    [
        ("example.com/app:1", "sha256:short", "invalid digest"),
        ("example.com/app:1", "md5:" + "a" * 32, "invalid digest"),
        ("Example.com/app:1", GOOD, "invalid image reference"),
        (f"example.com/app@{GOOD}", OTHER, f"names {GOOD}, but containerd resolved it to {OTHER}"),
    ],
)
def test_resolved_malformed_input_is_denied_not_raised(
    image: str, digest: str, problem: str
) -> None:
    policy, seen = engine({("example.com/app", "1"): GOOD})
    decision = policy.judge_resolved(image, digest)
    assert (decision.verdict, decision.mode, decision.action) == (
        Verdict.DENY,
        "invalid",
        Action.VERIFY,
    )
    assert problem in decision.reason
    assert seen == [decision]
