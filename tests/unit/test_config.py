import re
import shutil
from pathlib import Path

import pytest

from trustd.config.load import config_warnings, load_config, parse_config
from trustd.config.model import (
    DEFAULT_RULE,
    AuditConfig,
    Config,
    MetricsConfig,
    Mode,
    NotaryServer,
    OfflinePolicy,
    PolicyRule,
    ServerConfig,
)
from trustd.errors import ConfigError
from trustd.names.patterns import (
    GunPattern,
    InvalidPattern,
    RepositoryPattern,
    TagPattern,
    check_gun_prefix,
    longest_gun_prefix,
    most_specific_gun_pattern,
)
from trustd.names.reference import parse_reference

EXAMPLE = Path(__file__).parents[2] / "examples" / "trustd.toml"
SOURCE = "/etc/trustd/trustd.toml"
KEY_A = "a" * 64
KEY_B = "b" * 64


def parse(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(text, SOURCE, base_dir=base_dir)


def config_error(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse(text, base_dir)
    return str(raised.value)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A config directory holding every file the configs below refer to."""
    for name in ["ca.crt", "client.crt", "client.key", "password", "root-ca.crt"]:
        (tmp_path / name).write_text("placeholder\n")
    return tmp_path


# --- repository, tag and GUN patterns -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("docker.io/library/*", "docker.io/library/nginx", True),
        ("docker.io/library/*", "docker.io/library/a/b", False),
        ("docker.io/library/*", "docker.io/user/nginx", False),
        ("docker.io/*/nginx", "docker.io/user/nginx", True),
        ("docker.io/*/nginx", "docker.io/a/b/nginx", False),
        ("registry.example.com/prod/**", "registry.example.com/prod/app", True),
        ("registry.example.com/prod/**", "registry.example.com/prod/team/app", True),
        ("registry.example.com/prod/**", "registry.example.com/prod", False),
        ("registry.example.com/prod/**", "registry.example.com/production/app", False),
        ("registry.example.com/prod/**", "registry.example.com/staging/prod/app", False),
        ("registry.example.com/**/app", "registry.example.com/app", True),
        ("registry.example.com/**/app", "registry.example.com/a/b/app", True),
        ("registry.example.com/**/app", "registry.example.com/a/b/myapp", False),
        ("**/app", "docker.io/library/app", True),
        ("**/app", "docker.io/library/myapp", False),
        ("**", "anything.io/at/all", True),
        ("*.example.com/**", "registry.example.com/a", True),
        ("*.example.com/**", "a.b.example.com/a", True),  # "*" within the host: no "/" crossed
        ("*.example.com/**", "example.com/a", False),
        ("docker.io/library/nginx?", "docker.io/library/nginx1", True),
        ("docker.io/library/nginx?", "docker.io/library/nginx", False),
        ("docker.io/library/a?b", "docker.io/library/a/b", False),
        # "." is literal, not a regular expression
        ("docker.io/library/a.b", "docker.io/library/axb", False),
        ("localhost:5000/app", "localhost:5000/app", True),
        ("[::1]:5000/*", "[::1]:5000/app", True),
        ("docker.io/library/nginx", "docker.io/library/nginx", True),
        ("docker.io/library/nginx", "docker.io/library/nginx2", False),
    ],
)
def test_repository_pattern(pattern: str, name: str, matches: bool) -> None:
    assert RepositoryPattern(pattern).matches(name) is matches


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("nginx", 'like "docker.io/library/nginx"'),
        ("*", "can never match"),
        ("library/nginx", "does not start with a registry host"),
        ("user/**", "does not start with a registry host"),
        ("Docker.io/**", "uppercase"),
        ("docker.io/library/nginx:1.25", "has ':' in its path"),
        ("docker.io/a b", "characters no repository name can contain"),
        ("docker.io/***", "'***'"),
        ("docker.io//a", "empty path component"),
        ("docker.io/a/", "empty path component"),
    ],
)
def test_invalid_repository_pattern(pattern: str, problem: str) -> None:
    with pytest.raises(InvalidPattern, match=re.escape(problem)):
        RepositoryPattern(pattern)


def test_tag_pattern() -> None:
    assert TagPattern("3.*").matches("3.9")
    assert not TagPattern("3.*").matches("13.9")
    assert TagPattern("v?").matches("v1")
    assert not TagPattern("v?").matches("v10")
    assert TagPattern("latest").matches("latest")
    with pytest.raises(InvalidPattern, match="characters no tag can contain"):
        TagPattern("a/b")
    with pytest.raises(InvalidPattern, match="empty"):
        TagPattern("")


def test_gun_patterns_follow_notary() -> None:
    exact = GunPattern("docker.io/library/nginx")
    library = GunPattern("docker.io/library/*")
    hub = GunPattern("docker.io/*")
    everything = GunPattern("*")
    assert exact.matches("docker.io/library/nginx")
    assert not exact.matches("docker.io/library/nginx2")
    assert library.matches("docker.io/library/nginx") and not library.matches("quay.io/x")
    # prefixes are string prefixes, as in notary
    assert GunPattern("docker.io/lib*").matches("docker.io/library/nginx")
    patterns = [everything, hub, library, exact]
    assert most_specific_gun_pattern("docker.io/library/nginx", patterns) is exact
    assert most_specific_gun_pattern("docker.io/library/redis", patterns) is library
    assert most_specific_gun_pattern("docker.io/user/app", patterns) is hub
    assert most_specific_gun_pattern("quay.io/x", patterns) is everything
    assert most_specific_gun_pattern("quay.io/x", [hub, library]) is None
    # an exact key beats a wildcard whatever the order
    assert most_specific_gun_pattern("docker.io/library/nginx", [exact, library]) is exact


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("docker.io/*/app", "only a single trailing"),
        ("docker.io/a**", "only a single trailing"),
        ("nginx", 'write "docker.io/library/nginx"'),
        ("docker.io/Library/*", "uppercase"),
        ("docker.io/library/nginx:1", "no tag"),
    ],
)
def test_invalid_gun_pattern(key: str, problem: str) -> None:
    with pytest.raises(InvalidPattern, match=problem):
        GunPattern(key)


def test_gun_prefix() -> None:
    prefixes = ["docker.io/", "docker.io/library/", "quay.io/org"]
    assert longest_gun_prefix("docker.io/library/nginx", prefixes) == "docker.io/library/"
    assert longest_gun_prefix("docker.io/user/app", prefixes) == "docker.io/"
    assert longest_gun_prefix("registry.example.com/app", prefixes) is None
    assert check_gun_prefix("docker.io/") == "docker.io/"
    with pytest.raises(InvalidPattern, match="wildcards are not allowed"):
        check_gun_prefix("docker.io/*")


# --- defaults ------------------------------------------------------------------------------------


def test_empty_file_gives_production_defaults() -> None:
    config = parse("")
    assert config.server == ServerConfig(
        socket=Path("/run/trustd/cri.sock"),
        containerd="unix:///run/containerd/containerd.sock",
        containerd_namespace="k8s.io",
        state_dir=Path("/var/lib/trustd"),
        pull_timeout=600.0,
        shutdown_grace=30.0,
        socket_mode=0o660,
        verifier_socket=Path("/run/trustd/verify.sock"),
    )
    assert config.server.containerd_socket == Path("/run/containerd/containerd.sock")
    assert config.audit == AuditConfig(file=Path("/var/log/trustd/audit.log"), stdout=True)
    assert config.metrics == MetricsConfig(listen="127.0.0.1:9879")
    assert config.metrics.address == ("127.0.0.1", 9879)
    assert config.notary == ()
    assert config.exempt == ()
    assert config.policy == ()
    assert config.source == Path(SOURCE)
    pinning = config.pinning_for("docker.io/library/nginx")
    assert (pinning.root_key_ids, pinning.ca_file, pinning.allow_tofu) == ((), None, True)


def test_an_empty_verifier_socket_disables_it() -> None:
    assert parse('[server]\nverifier_socket = ""').server.verifier_socket is None


def test_verifier_group_names_a_group_of_the_node() -> None:
    assert parse("").server.verifier_group is None
    assert parse('[server]\nverifier_group = ""').server.verifier_group is None
    assert parse('[server]\nverifier_group = "nogroup"').server.verifier_group == "nogroup"
    assert config_error('[server]\nverifier_group = "no-such-group-here"') == (
        f'{SOURCE}: server.verifier_group: no group "no-such-group-here" on this node '
        "(getent group no-such-group-here)"
    )
    assert "must be a group name" in config_error("[server]\nverifier_group = 0")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nsocket = "/run/containerd/containerd.sock"', "server.socket"),
        ('[server]\nsocket = "/run/containerd//./containerd.sock"', "server.socket"),
        ('[server]\nverifier_socket = "/run/containerd/containerd.sock"', "server.verifier_socket"),
        (
            '[server]\ncontainerd = "unix:///run/c.sock"\nverifier_socket = "/run/c.sock"',
            "server.verifier_socket",
        ),
    ],
)
def test_a_socket_of_trustd_must_not_be_containerds(text: str, key: str) -> None:
    error = config_error(text)
    assert error.startswith(f"{SOURCE}: {key}: must not be containerd's socket (")
    assert "trustd would remove it and listen in containerd's place" in error


@pytest.mark.parametrize(
    ("listen", "key"),
    [
        ("unix:/run/trustd/cri.sock", "server.socket"),
        ("unix:/run/trustd/verify.sock", "server.verifier_socket"),
        ("unix:/run/containerd/containerd.sock", "server.containerd"),
    ],
)
def test_the_metrics_socket_is_none_of_the_others(listen: str, key: str) -> None:
    error = config_error(f'[metrics]\nlisten = "{listen}"')
    assert error.startswith(f"{SOURCE}: metrics.listen: must not be the socket of {key} (")
    assert parse('[metrics]\nlisten = "unix:/run/trustd/metrics.sock"').metrics.listen


@pytest.mark.parametrize(
    ("mode", "warned"),
    [("0660", False), ("0600", False), ("0664", False), ("0666", True), ("0662", True)],
)
def test_a_cri_socket_every_user_can_connect_to_is_warned_about(mode: str, warned: bool) -> None:
    text = f'[server]\nsocket_mode = "{mode}"\n[[notary]]\nregistry = "docker.io"\n'
    warnings = config_warnings(parse(text + 'url = "https://notary.example.com"\n'))
    if not warned:
        assert warnings == []
        return
    (warning,) = warnings
    assert warning.startswith(
        f"server.socket_mode {mode} lets every local user connect to the CRI socket "
        "/run/trustd/cri.sock"
    )


def test_default_rule_enforces_docker_role_order() -> None:
    rule = parse("").rule_for("docker.io/library/nginx")
    assert rule is DEFAULT_RULE
    assert rule.mode == Mode.ENFORCE == "enforce"
    assert rule.roles == ("targets/releases", "targets")
    assert rule.signers == ()
    assert rule.require_signed_digests is True
    assert rule.index is None
    assert rule.source == "default rule"


def test_default_notary_servers_follow_docker() -> None:
    config = parse("")
    hub = config.notary_for("docker.io")
    assert hub.url == "https://notary.docker.io"
    assert config.notary_for("registry.example.com:5000").url == "https://registry.example.com:5000"
    assert (hub.timeout, hub.max_metadata_bytes, hub.root_max_bytes, hub.timestamp_max_bytes) == (
        10.0,
        16 * 1024 * 1024,
        1024 * 1024,
        64 * 1024,
    )
    assert (hub.ca, hub.client_cert, hub.username, hub.password_file) == (None, None, None, None)
    assert hub.source == "default"


def test_policy_rule_defaults() -> None:
    rule = parse('[[policy]]\nmatch = "quay.io/**"').policy[0]
    assert rule == PolicyRule(match="quay.io/**", index=0)
    assert rule.mode is Mode.ENFORCE
    assert (rule.offline, rule.max_offline_age) == (OfflinePolicy.CACHED, None)


def test_outage_policy_and_freshness_window() -> None:
    config = parse(
        "[server]\nfreshness_window = 0\n"
        '[[policy]]\nmatch = "quay.io/**"\noffline = "deny"\n'
        '[[policy]]\nmatch = "**"\nmax_offline_age = 3600\n'
    )
    assert config.freshness_window == 0.0
    assert config.policy[0].offline is OfflinePolicy.DENY
    assert config.policy[1].max_offline_age == 3600.0
    assert parse("").freshness_window == 1.0


# --- a full file ---------------------------------------------------------------------------------


FULL = f"""
version = 1
exempt = ["registry.k8s.io/pause:3.*", "localhost:5000/tools/**"]

[server]
socket = "run/cri.sock"
containerd = "unix:///var/run/containerd.sock"
containerd_namespace = "k8s.io"
state_dir = "/srv/trustd"
pull_timeout = 120
shutdown_grace = 0
socket_mode = "0600"
verifier_socket = "run/verify.sock"

[audit]
file = ""
stdout = false

[metrics]
listen = "[::1]:9100"

[[notary]]
registry = "registry.example.com"
url = "https://notary.example.com:4443/"
ca = "ca.crt"
client_cert = "client.crt"
client_key = "client.key"
username = "reader"
password_file = "password"
timeout = 2.5
max_metadata_bytes = 1000
root_max_bytes = 2000
timestamp_max_bytes = 3000

[[notary]]
registry = "127.0.0.1:5000"
url = "https://127.0.0.1:4443"

[trust_pinning]
disable_tofu = true

[trust_pinning.certs]
"registry.example.com/prod/app" = ["{KEY_A}"]
"registry.example.com/prod/*" = ["{KEY_B}", "{KEY_A}"]

[trust_pinning.ca]
"registry.example.com/" = "root-ca.crt"

[[policy]]
match = "registry.example.com/prod/**"
mode = "enforce"
roles = ["targets/releases"]
signers = ["targets/releases", "targets/qa"]
require_signed_digests = false

[[policy]]
match = "registry.example.com/**"
mode = "audit"

[[policy]]
match = "docker.io/library/*"
mode = "off"
"""


def test_full_file(files: Path) -> None:
    config = parse(FULL, base_dir=files)
    assert config.server.socket == files / "run" / "cri.sock"
    assert config.server.containerd == "unix:///var/run/containerd.sock"
    assert config.server.state_dir == Path("/srv/trustd")
    assert config.server.pull_timeout == 120.0
    assert config.server.shutdown_grace == 0.0
    assert config.server.socket_mode == 0o600
    assert config.server.verifier_socket == files / "run" / "verify.sock"
    assert config.audit == AuditConfig(file=None, stdout=False)
    assert config.metrics.address == ("::1", 9100)

    assert config.notary_for("registry.example.com") == NotaryServer(
        registry="registry.example.com",
        url="https://notary.example.com:4443",
        ca=files / "ca.crt",
        client_cert=files / "client.crt",
        client_key=files / "client.key",
        username="reader",
        password_file=files / "password",
        timeout=2.5,
        max_metadata_bytes=1000,
        root_max_bytes=2000,
        timestamp_max_bytes=3000,
        source="notary[0]",
    )
    assert config.notary_for("127.0.0.1:5000").url == "https://127.0.0.1:4443"
    assert config.notary_for("127.0.0.1:5000").source == "notary[1]"
    assert config.notary_for("docker.io").url == "https://notary.docker.io"

    assert [rule.mode for rule in config.policy] == [Mode.ENFORCE, Mode.AUDIT, Mode.OFF]
    prod = config.rule_for("registry.example.com/prod/app")
    assert prod.index == 0 and prod.source == "policy[0]"
    assert prod.roles == ("targets/releases",)
    assert prod.signers == ("targets/releases", "targets/qa")
    assert prod.require_signed_digests is False
    assert config.rule_for("registry.example.com/staging/app").index == 1
    assert config.rule_for("docker.io/library/nginx").index == 2
    assert config.rule_for("docker.io/user/app") is DEFAULT_RULE


def test_rules_apply_first_match_first(files: Path) -> None:
    config = parse(
        '[[policy]]\nmatch = "quay.io/**"\nmode = "audit"\n'
        '[[policy]]\nmatch = "quay.io/org/*"\nmode = "off"\n'
    )
    # the broader rule comes first, so the narrower one never applies to quay.io/org/app
    assert config.rule_for("quay.io/org/app").mode == Mode.AUDIT
    assert config.rule_for("quay.io/org/app").index == 0


def test_exemptions(files: Path) -> None:
    config = parse(FULL, base_dir=files)
    pause = parse_reference("registry.k8s.io/pause:3.9")
    assert config.exemption_for(pause)[1] == "registry.k8s.io/pause:3.*"
    assert config.exemption_for(parse_reference("registry.k8s.io/pause:latest")) is None
    # a tag pattern never exempts a digest reference: it has no tag to match
    digest = "sha256:" + "0" * 64
    assert config.exemption_for(parse_reference(f"registry.k8s.io/pause@{digest}")) is None
    assert config.exemption_for(parse_reference(f"registry.k8s.io/pause:3.9@{digest}")) is not None
    # without a tag pattern every tag and digest of the matching repositories is exempt
    tools = parse_reference(f"localhost:5000/tools/a/b@{digest}")
    assert config.exemption_for(tools)[1] == "localhost:5000/tools/**"
    assert config.exemption_for(parse_reference("localhost:5000/other")) is None
    assert config.exemption_for(parse_reference("registry.k8s.io/pause2:3.9")) is None


def test_pinning_precedence(files: Path) -> None:
    config = parse(FULL, base_dir=files)
    exact = config.pinning_for("registry.example.com/prod/app")
    assert exact.root_key_ids == (KEY_A,)
    assert exact.allow_tofu is False and exact.ca_file is None
    assert exact.source == 'trust_pinning.certs."registry.example.com/prod/app"'

    wildcard = config.pinning_for("registry.example.com/prod/other")
    assert wildcard.root_key_ids == (KEY_B, KEY_A)
    assert wildcard.source == 'trust_pinning.certs."registry.example.com/prod/*"'

    by_ca = config.pinning_for("registry.example.com/staging/app")
    assert by_ca.root_key_ids == ()
    assert by_ca.ca_file == files / "root-ca.crt"
    assert by_ca.allow_tofu is False
    assert by_ca.source == 'trust_pinning.ca."registry.example.com/"'

    unpinned = config.pinning_for("docker.io/library/nginx")
    assert (unpinned.root_key_ids, unpinned.ca_file, unpinned.allow_tofu) == ((), None, False)
    assert unpinned.source == "trust_pinning.disable_tofu"


def test_longest_ca_prefix_wins(files: Path) -> None:
    (files / "other.crt").write_text("x")
    config = parse(
        '[trust_pinning.ca]\n"docker.io/library/" = "other.crt"\n"docker.io/" = "root-ca.crt"\n',
        base_dir=files,
    )
    assert config.pinning_for("docker.io/library/nginx").ca_file == files / "other.crt"
    assert config.pinning_for("docker.io/user/app").ca_file == files / "root-ca.crt"
    assert config.pinning_for("quay.io/x").allow_tofu is True


# --- the example ---------------------------------------------------------------------------------


def test_example_file_parses(tmp_path: Path) -> None:
    # The example names files relative to its directory (/etc/trustd): recreate them next to a
    # copy of it.
    shutil.copy(EXAMPLE, tmp_path / "trustd.toml")
    for name in [
        "certs/notary-ca.crt",
        "certs/trustd-client.crt",
        "certs/trustd-client.key",
        "certs/root-ca.crt",
        "secrets/notary-password",
        "cosign/release.pub",
        "cosign/security.pub",
    ]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("placeholder\n")
    config = load_config(tmp_path / "trustd.toml")
    assert config.source == tmp_path / "trustd.toml"
    assert config.notary_for("registry.example.com").ca == tmp_path / "certs" / "notary-ca.crt"
    assert config.exemption_for(parse_reference("registry.k8s.io/pause:3.10")) is not None
    assert config.rule_for("registry.example.com/prod/web").mode == Mode.ENFORCE
    assert config.rule_for("registry.example.com/staging/web").mode == Mode.AUDIT
    assert config.rule_for("registry.k8s.io/kube-proxy").mode == Mode.OFF
    assert config.rule_for("docker.io/user/app") is DEFAULT_RULE
    assert config.rule_for("registry.example.com/apps/web").signatures.describe() == (
        "any of notary-v1, notation"
    )
    tools = config.rule_for("registry.example.com/tools/cli")
    assert tools.cosign is not None and tools.cosign.threshold == 2
    assert config.notation.config_dir == Path("/etc/trustd/notation")
    # Docker Hub images are verified against the operator's own Notary, not notary.docker.io.
    assert config.notary_for("docker.io").url == "https://notary.example.com:4443"
    assert config_warnings(config) == []


def test_example_file_names_its_missing_files(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "trustd.toml")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "trustd.toml")
    assert str(raised.value) == (
        f"{tmp_path / 'trustd.toml'}: notary[0].client_cert: file "
        f"{tmp_path / 'certs' / 'trustd-client.crt'} does not exist (relative to {tmp_path})"
    )


# --- errors --------------------------------------------------------------------------------------


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: no such file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "binary.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_syntax_errors_name_line_and_column() -> None:
    message = config_error('[server]\nsocket = "/a"\nshutdown_grace = = 3\n')
    assert message.startswith(f"{SOURCE}: line 3, column 18: invalid TOML: ")
    message = config_error('[server]\nsocket = "/a')
    assert message.startswith(f"{SOURCE}: line 2, column ")
    message = config_error("[server]\nsocket = [")
    assert message.startswith(f"{SOURCE}: line 2, column 11: invalid TOML: ")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("colour = 1", "colour: unknown key"),
        ("[server]\nsockets = '/a'", "server.sockets: unknown key (known: socket, "),
        ("[audit]\nfiles = ''", "audit.files: unknown key"),
        ("[metrics]\nport = 1", "metrics.port: unknown key"),
        ("[[notary]]\nregistry='a.io'\nurl='https://a'\ncert='x'", "notary[0].cert: unknown key"),
        ("[trust_pinning]\ntofu = false", "trust_pinning.tofu: unknown key"),
        ("[[policy]]\nmatch='**'\npin_root_keys=[]", "policy[0].pin_root_keys: unknown key"),
    ],
)
def test_unknown_keys_at_every_level(text: str, where: str) -> None:
    assert f"{SOURCE}: {where}" in config_error(text)


def test_unknown_key_suggests_the_close_one() -> None:
    assert 'did you mean "shutdown_grace"?' in config_error("[server]\nshutdown_grce = 1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2", "version: must be 1 (got 2)"),
        ("version = '1'", 'version: must be an integer (got "1")'),
        ("server = 1", "server: must be a table (got 1)"),
        ("[server]\nsocket = 5", "server.socket: must be a path (got 5)"),
        ("[server]\nsocket = ''", "server.socket: must not be empty"),
        ("[server]\ncontainerd = '/run/c.sock'", "server.containerd: must be unix://"),
        ("[server]\ncontainerd = 'tcp://h:1'", "server.containerd: must be unix://"),
        ("[server]\ncontainerd = 'unix://'", "server.containerd: must be unix://"),
        ("[server]\ncontainerd = 'unix://rel.sock'", "server.containerd: must be unix://"),
        ("[server]\ncontainerd_namespace = 'a b'", "server.containerd_namespace: must be"),
        ("[server]\npull_timeout = 0", "server.pull_timeout: must be more than zero seconds"),
        ("[server]\npull_timeout = -1.5", "server.pull_timeout: must be more than zero"),
        ("[server]\npull_timeout = true", "server.pull_timeout: must be a number of seconds"),
        ("[server]\npull_timeout = '60'", 'must be a number of seconds (got "60")'),
        ("[server]\npull_timeout = inf", "server.pull_timeout: must be more than zero"),
        ("[server]\npull_timeout = nan", "server.pull_timeout: must be more than zero"),
        ("[server]\nshutdown_grace = -1", "server.shutdown_grace: must be zero or more"),
        ("[server]\nfreshness_window = -1", "server.freshness_window: must be zero or more"),
        ("[server]\nfreshness_window = 7200", "server.freshness_window: must be at most 3600"),
        (
            "[[notary]]\nregistry = 'r.io'\nurl = 'https://n.io'\nretries = 11",
            "notary[0].retries: must be from 0 to 10 (got 11)",
        ),
        (
            "[[policy]]\nmatch = '**'\noffline = 'allow'",
            'policy[0].offline: must be one of "cached", "deny" (got "allow")',
        ),
        (
            "[[policy]]\nmatch = '**'\nmax_offline_age = 0",
            "policy[0].max_offline_age: must be more than zero seconds",
        ),
        ("[server]\nsocket_mode = 660", "server.socket_mode: must be a string of octal digits"),
        ("[server]\nsocket_mode = '0980'", "server.socket_mode: must be octal permission bits"),
        ("[server]\nsocket_mode = '1777'", "server.socket_mode: must be octal permission bits"),
        ("[server]\nexpiry_warning_days = -1", "must be from 0 (never warn) to 3650 days (got -1"),
        ("[server]\nexpiry_warning_days = 2592000", "(got 2592000; the value is in days"),
        ("[server]\nexpiry_warning_days = 1.5", "must be a whole number of days (got 1.5)"),
        ("[server]\nexpiry_warning_days = true", "must be a whole number of days (got true)"),
        ("[server]\nexpiry_warning_days = '30'", 'must be a whole number of days (got "30")'),
        ("[server]\nverifier_socket = 5", "server.verifier_socket: must be a string (got 5)"),
        (
            "[server]\nsocket = '/run/t.sock'\nverifier_socket = '/run/t.sock'",
            "server.verifier_socket: must not be server.socket (/run/t.sock)",
        ),
        ("[audit]\nstdout = 'yes'", 'audit.stdout: must be true or false (got "yes")'),
        ("[audit]\nfile = false", "audit.file: must be a string (got false)"),
        ("[metrics]\nlisten = '9879'", "metrics.listen: must be host:port"),
        ("[metrics]\nlisten = ':9879'", "metrics.listen: must be host:port"),
        ("[metrics]\nlisten = 'localhost:0'", "port must be a number from 1 to 65535"),
        ("[metrics]\nlisten = 'localhost:65536'", "port must be a number from 1 to 65535"),
        ("[metrics]\nlisten = '::1:9879'", "IPv6 address must be in brackets"),
        ("[metrics]\nlisten = '[::g]:9879'", "is not an IPv6 address"),
        ("[metrics]\nlisten = 'bad_host:9879'", "is not a host name or IPv4 address"),
        ("exempt = 'registry.k8s.io/pause'", "exempt: must be an array of strings"),
        ("exempt = [1]", "exempt[0]: must be a string (got 1)"),
        ("exempt = ['registry.k8s.io/pause', 'pause']", 'exempt[1]: pattern "pause"'),
        (
            "exempt = ['registry.k8s.io/pause:a/b']",
            "exempt[0]: pattern \"registry.k8s.io/pause:a/b\" has ':'",
        ),
        ("exempt = ['registry.k8s.io/pause:']", "exempt[0]: tag pattern is empty"),
        ("policy = 1", "policy: must be an array of tables, written [[policy]]"),
        ("policy = [1]", "policy[0]: must be a table (got 1)"),
        ("[[policy]]\nmode = 'off'", "policy[0].match: is required"),
        ("[[policy]]\nmatch = ''", "policy[0].match: must not be empty"),
        ("[[policy]]\nmatch = 'nginx'", 'policy[0].match: pattern "nginx" can never match'),
        ("[[policy]]\nmatch = 'Docker.io/**'", 'policy[0].match: pattern "Docker.io/**" has'),
        ("[[policy]]\nmatch = '**'\nroles = []", "policy[0].roles: must name at least one role"),
        ("[[policy]]\nmatch = '**'\nroles = 'targets'", "policy[0].roles: must be an array of"),
        ("[[policy]]\nmatch = '**'\nroles = ['targets/']", "policy[0].roles[0]: must be"),
        ("[[policy]]\nmatch = '**'\nroles = ['targets/../x']", "policy[0].roles[0]: must be"),
        ("[[policy]]\nmatch = '**'\nroles = ['targets', 'targets']", 'roles[1]: "targets" is'),
        ("[[policy]]\nmatch = '**'\nsigners = ['targets']", 'signers[0]: must be "targets/<name>"'),
        ("[[policy]]\nmatch = '**'\nsigners = ['qa']", 'policy[0].signers[0]: must be "targets/'),
        ("[[policy]]\nmatch = '**'\nrequire_signed_digests = 1", "must be true or false (got 1)"),
        ("[trust_pinning]\ndisable_tofu = 'no'", "trust_pinning.disable_tofu: must be true or"),
        ("[trust_pinning]\ncerts = []", "trust_pinning.certs: must be a table (got an array)"),
        (f"[trust_pinning.certs]\n'docker.io/x' = ['{KEY_A}']", "not a normalised GUN"),
        ("[trust_pinning.certs]\n'docker.io/*' = []", "must list at least one root key ID"),
        ("[trust_pinning.certs]\n'docker.io/*' = 'ab'", "must be an array of strings"),
        (f"[trust_pinning.certs]\n'docker.io/*' = ['{KEY_A}', 'ab']", '"docker.io/*"[1]: must be'),
        (f"[trust_pinning.certs]\n'docker.io/*' = ['{KEY_A.upper()}']", "64 lowercase hexadecimal"),
        ("[trust_pinning.certs]\n'docker.io/*/x' = []", "only a single trailing '*'"),
        ("[trust_pinning.ca]\n'docker.io/*' = 'ca.crt'", "wildcards are not allowed"),
        ("[trust_pinning.ca]\n'docker.io/' = 5", 'trust_pinning.ca."docker.io/": must be a path'),
        ("[trust_pinning.ca]\n'docker.io/' = 'none.crt'", "none.crt does not exist"),
    ],
)
def test_invalid_values(text: str, message: str, files: Path) -> None:
    error = config_error(text, base_dir=files)
    assert error.startswith(f"{SOURCE}: ")
    assert message in error


def test_bad_mode_message_is_exact() -> None:
    text = '[[policy]]\nmatch = "**"\n[[policy]]\nmatch = "**"\n[[policy]]\nmatch = "**"\n'
    assert config_error(text + 'mode = "enforced"') == (
        f'{SOURCE}: policy[2].mode: must be one of "enforce", "audit", "off" (got "enforced")'
    )


NOTARY = '[[notary]]\nregistry = "registry.example.com"\nurl = "https://notary.example.com"\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", None),
        ('ca = "ca.crt"', None),
        ('ca = "missing.crt"', "notary[0].ca: file {dir}/missing.crt does not exist"),
        ('ca = "/nonexistent/ca.crt"', "notary[0].ca: file /nonexistent/ca.crt does not exist"),
        ('ca = ""', "notary[0].ca: must not be empty"),
        ('client_cert = "client.crt"', "notary[0].client_key: is required when client_cert is set"),
        ('client_key = "client.key"', "notary[0].client_cert: is required when client_key is set"),
        ('password_file = "password"', "notary[0].username: is required when password_file"),
        ('username = "reader"', "notary[0].password_file: is required when username is set"),
        ('username = ""', "notary[0].username: must not be empty"),
        ('password = "hunter2"', "notary[0].password: passwords are never read from the config"),
        ("timeout = 0", "notary[0].timeout: must be more than zero seconds"),
        ("max_metadata_bytes = 0", "notary[0].max_metadata_bytes: must be more than zero bytes"),
        ("root_max_bytes = 1.5", "notary[0].root_max_bytes: must be a number of bytes (got 1.5)"),
        ("timestamp_max_bytes = -1", "notary[0].timestamp_max_bytes: must be more than zero"),
    ],
)
def test_notary_server_entries(extra: str, message: str | None, files: Path) -> None:
    text = NOTARY + extra
    if message is None:
        assert parse(text, base_dir=files).notary[0].registry == "registry.example.com"
    else:
        assert message.format(dir=files) in config_error(text, base_dir=files)


def test_password_is_never_echoed(files: Path) -> None:
    assert "hunter2" not in config_error(NOTARY + 'password = "hunter2"', base_dir=files)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://notary.example.com", "must be an https:// URL"),
        ("notary.example.com", "must be an https:// URL"),
        ("https://", "has no host"),
        ("https://user:pw@notary.example.com", "must not contain credentials"),
        ("https://notary.example.com/?x=1", "must not have a query or fragment"),
        ("https://notary.example.com:99999", "is not a valid URL"),
    ],
)
def test_notary_url_must_be_https(url: str, problem: str) -> None:
    text = f'[[notary]]\nregistry = "registry.example.com"\nurl = "{url}"\n'
    assert f"notary[0].url: {problem}" in config_error(text)


@pytest.mark.parametrize(
    ("registry", "problem"),
    [
        ("index.docker.io", "normalised to 'docker.io'"),
        ("Registry.example.com", "must be lowercase"),
        ("https://registry.example.com", "invalid registry host"),
        ("registry.example.com/path", "invalid registry host"),
    ],
)
def test_notary_registry_must_be_normalised(registry: str, problem: str) -> None:
    text = f'[[notary]]\nregistry = "{registry}"\nurl = "https://n.example.com"\n'
    message = config_error(text)
    assert message.startswith(f"{SOURCE}: notary[0].registry: ")
    assert problem in message


def test_notary_registry_required() -> None:
    assert "notary[0].registry: is required" in config_error('[[notary]]\nurl = "https://n"')
    assert "notary[0].url: is required" in config_error('[[notary]]\nregistry = "a.io"')


def test_duplicate_notary_registry() -> None:
    text = NOTARY + NOTARY.replace("notary.example.com", "other.example.com")
    assert config_error(text) == (
        f'{SOURCE}: notary[1].registry: "registry.example.com" is already configured in notary[0]'
    )


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "trustd"
    (etc / "certs").mkdir(parents=True)
    (etc / "certs" / "ca.crt").write_text("x")
    (etc / "trustd.toml").write_text(
        '[server]\nstate_dir = "../../var/lib/trustd"\n'
        '[audit]\nfile = "log/audit.log"\n' + NOTARY + 'ca = "certs/ca.crt"\n'
    )
    config = load_config(etc / "trustd.toml")
    assert config.server.state_dir == tmp_path / "var" / "lib" / "trustd"
    assert config.audit.file == etc / "log" / "audit.log"
    assert config.notary[0].ca == etc / "certs" / "ca.crt"
    # absolute paths are kept as written
    assert load_config(etc / "trustd.toml").server.socket == Path("/run/trustd/cri.sock")


def test_expiry_warning_days() -> None:
    assert parse("").server.expiry_warning_days == 30
    assert parse("[server]\nexpiry_warning_days = 0").server.expiry_warning_days == 0
    assert parse("[server]\nexpiry_warning_days = 180").server.expiry_warning_days == 180


DOCKER_HUB_NOTARY_CONFIG = """
[[notary]]
registry = "docker.io"
url = "https://notary.example.com"
"""


@pytest.mark.parametrize(
    ("text", "verifying"),
    [
        ("", "the default rule (enforce) verifies docker.io images"),
        ("[[policy]]\nmatch = 'docker.io/**'\nmode = 'off'", None),
        ("exempt = ['docker.io/**']", None),
        (  # a tag-narrowed exemption leaves the other tags to the default rule
            "exempt = ['docker.io/**:1.*']",
            "the default rule (enforce) verifies",
        ),
        (DOCKER_HUB_NOTARY_CONFIG, None),
        (
            "[[policy]]\nmatch = 'docker.io/library/nginx'\n"
            "[[policy]]\nmatch = 'docker.io/**'\nmode = 'off'",
            'policy[0] ("docker.io/library/nginx", enforce) verifies docker.io images',
        ),
        (
            "[[policy]]\nmatch = '**'\nmode = 'audit'",
            'policy[0] ("**", audit) verifies docker.io images',
        ),
        (
            "[[policy]]\nmatch = '*.example.com/**'\n[[policy]]\nmatch = 'docker*/**'\n"
            "mode = 'off'",
            None,
        ),
        (
            "[[policy]]\nmatch = 'docker.*/**'\n[[policy]]\nmatch = '**'\nmode = 'off'",
            'policy[0] ("docker.*/**", enforce) verifies',
        ),
        (  # Notation only: Notary is never asked
            "[notation]\nconfig_dir = 'n'\n[[policy]]\nmatch = '**'\nsignatures = 'notation'",
            None,
        ),
        (
            "[notation]\nconfig_dir = 'n'\n[[policy]]\nmatch = '**'\n"
            "signatures = { any_of = ['notation', 'notary-v1'] }",
            'policy[0] ("**", enforce) verifies docker.io images',
        ),
    ],
)
def test_warning_when_docker_hub_images_are_verified_without_a_notary_for_them(
    text: str, verifying: str | None
) -> None:
    warnings = config_warnings(parse(text))
    if verifying is None:
        assert warnings == []
        return
    (warning,) = warnings
    assert verifying in warning
    assert "no [[notary]] entry is configured for docker.io" in warning
    assert "https://notary.docker.io, which Docker shuts down on 2026-12-08" in warning


def test_config_objects_are_frozen() -> None:
    config = parse('[[policy]]\nmatch = "**"')
    with pytest.raises(AttributeError):
        config.policy[0].mode = Mode.OFF  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.server.socket = Path("/tmp/x")  # type: ignore[misc]
