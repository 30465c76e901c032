"""cosign signatures end to end: the real cosign 2 and 3 sign, trustd decides, containerd pulls.

The node here is a containerd 1.6 of this module's own with trustd's CRI shim in front of it
(``tests/e2e/cri_helpers.py``); containerd reaches the registries through the hosts.toml
directory ``tests/stack/containerd.py`` writes, and trustd's ``[registry] hosts_dirs`` names the
same directory, so trustd reaches each registry as containerd does. Registries: the session's
docker-registry 2.8 (no referrers API: classic ``.sig`` tags, and cosign 3's bundles in the
``sha256-<hex>`` tag-schema index), go-containerregistry's registry with the referrers API
(cosign 3's bundles as referrers), and two docker-registries of the module's own: one a test
stops (outages), one that wants a password. Keys are made per module (``tests/stack/cosign.py``);
cosign signs offline (no transparency log, nothing but loopback). The signatures cosign will not
make (a payload claiming another digest, a tampered payload) are made in test code with the same
keys. Also here: trustctl, containerd 2.x's image verifier, and containers/image's verdict on
the same images. A test skips only when a peer (cosign, containers-policy, containerd 2.x) could
not be had here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.e2e.cri_helpers import TIMEOUT, Shim, running_shim
from tests.e2e.pod_helpers import Kubelet, RuntimeClient, host_network_pod
from tests.e2e.verifier_helpers import REPO_ROOT, make_node, running_daemon
from tests.e2e.verifier_helpers import Node as VerifierNode
from tests.peers import require_peer
from tests.stack import Containerd, NotaryServer, PushedImage, Registry, Stack, StackError
from tests.stack.cosign import (
    Cosign,
    RegistryWriter,
    SigningKey,
    layers_of,
    put_signature_manifest,
    sig_tag,
    signed_layer,
    sigstore_policy,
    simple_signing_payload,
    tampered,
)
from tests.stack.crane_registry import CraneRegistry
from tests.stack.images import push_busybox_image, require_static_busybox
from tests.stack.trustd_config import toml_value, trustd_config_text
from trustd.errors import RegistryUnavailable
from trustd.policy.engine import Action, Decision, Verdict
from trustd.service.audit import audit_record
from trustd.service.metrics import Metrics

PushImageTo = Callable[..., PushedImage]
PRIVATE = ("cosign-puller", "password-of-the-private-registry")


@dataclass
class CosignNode:
    """The module's node: registries, containerd, the trustd shim, cosign and the keys."""

    registry: Registry
    referrers: CraneRegistry
    outage: Registry  # this module's own, which a test stops
    private: Registry  # this module's own, with a password (PRIVATE)
    containerd: Containerd
    shim: Shim
    cosign2: Cosign
    cosign3: Cosign
    keys: dict[str, SigningKey]  # "a" and "b" are configured; "x" is not
    writers: dict[str, RegistryWriter]  # by registry host
    push_to: PushImageTo
    workdir: Path
    runtime: RuntimeClient
    pause: PushedImage | None  # the pods' sandbox image; None without a static busybox
    config: Path  # the shim's config, for trustctl
    metrics: Metrics  # observing the shim's decisions, as the daemon's do

    def metric(self, sample: str) -> float:
        """The value of one sample line (``name{labels}``), 0 if absent."""
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def trustctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``trustctl ARGS`` in a process of its own, on the shim's config (own state dir)."""
        command = [sys.executable, "-m", "trustd.programs.trustctl_commands", *args]
        command += ["-c", str(self.config), "--state-dir", str(self.workdir / "trustctl-state")]
        return subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def push(self, target: Registry | CraneRegistry, rule: str, name: str) -> PushedImage:
        """A fresh image in a repository the rule ``rule`` applies to."""
        repo = f"cosign/{rule}/{name}-{uuid.uuid4().hex[:8]}"
        return self.push_to(target, repo, "1.0", seed=uuid.uuid4().hex)

    def writer(self, image: PushedImage) -> RegistryWriter:
        return self.writers[image.repository.split("/", 1)[0]]

    def last_pull(self, image: str) -> Decision:
        """The decision of the latest pull of ``image`` through trustd."""
        [decision] = [d for d in self.shim.decisions_for(image) if d.action is Action.PULL][-1:]
        return decision

    def refused(self, image: str) -> tuple[str, Decision]:
        """The message kubelet sees for a pull trustd must refuse, and the decision."""
        with pytest.raises(grpc.RpcError) as raised:
            self.shim.pull(image)
        assert raised.value.code() == grpc.StatusCode.UNKNOWN, raised.value
        decision = self.last_pull(image)
        assert decision.verdict is Verdict.DENY
        return raised.value.details() or "", decision


def _rule(
    match: str, signatures: str, keys: list[Path], threshold: int = 1, extra: str = ""
) -> str:
    key_list = ", ".join(toml_value(str(key)) for key in keys)
    return (
        f"[[policy]]\nmatch = {toml_value(match)}\nsignatures = {signatures}\n{extra}"
        f"[policy.cosign]\nkeys = [{key_list}]\nthreshold = {threshold}\n\n"
    )


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    referrers_registry: CraneRegistry,
    notary_server: NotaryServer,
    push_image_to: PushImageTo,
) -> Iterator[CosignNode]:
    workdir = tmp_path_factory.mktemp("cosign-node")
    cosign2 = Cosign(require_peer("cosign2"), workdir / "cosign2")
    cosign3 = Cosign(require_peer("cosign3"), workdir / "cosign3")
    keys = {name: cosign2.new_key(name) for name in ("a", "b", "x")}
    a, b = keys["a"].public, keys["b"].public
    policy = ""
    for host in (registry.host, referrers_registry.host):
        policy += _rule(f"{host}/cosign/keyed/**", '"cosign"', [a])
    policy += _rule(f"{registry.host}/cosign/threshold/**", '"cosign"', [a, b], threshold=2)
    policy += _rule(
        f"{registry.host}/cosign/any-of/**", '{ any_of = ["notary-v1", "cosign"] }', [a]
    )
    policy += _rule(
        f"{registry.host}/cosign/all-of/**", '{ all_of = ["notary-v1", "cosign"] }', [a]
    )
    pause = _pause_image(registry, workdir)
    with ExitStack() as cleanup:
        try:
            outage = Registry.start(workdir / "outage-registry")
            cleanup.callback(outage.stop)
            private = Registry.start(workdir / "private-registry", credentials=PRIVATE)
            cleanup.callback(private.stop)
            containerd = Containerd.launch(
                workdir / "containerd",
                [registry.host, referrers_registry.host, outage.host, private.host],
                sandbox_image=pause.tagged if pause is not None else None,
            )
            cleanup.callback(containerd.stop)
        except StackError as error:
            pytest.fail(f"the node did not start: {error}", pytrace=False)
        policy += _rule(f"{private.host}/cosign/keyed/**", '"cosign"', [a])
        for offline in ("cached", "deny"):
            policy += _rule(
                f"{outage.host}/cosign/{offline}/**",
                '"cosign"',
                [a],
                extra=f"offline = {toml_value(offline)}\n",
            )
        runtime = RuntimeClient(containerd.endpoint)
        cleanup.callback(runtime.close)
        cleanup.callback(runtime.remove_all_pods)  # before containerd stops
        policy += f"[registry]\nhosts_dirs = [{toml_value(str(containerd.hosts_dir))}]\n"
        state_dir = workdir / "trustd"
        text = trustd_config_text(
            state_dir=state_dir,
            notary=[(registry.host, notary_server.url, notary_server.ca_file)],
            exempt=[f"{pause.repository}:*"] if pause is not None else [],
            policy=policy,
            # Every question verifies anew: the tests move tags and stop registries right
            # after a verification, which the freshness window would otherwise answer.
            server={"freshness_window": 0},
        )
        shim = cleanup.enter_context(running_shim(text, containerd.endpoint, state_dir))
        config = workdir / "trustd.toml"
        config.write_text(text)
        metrics = Metrics("test")
        shim.policy.add_observer(metrics.observe)
        hosts = (registry.host, referrers_registry.host, outage.host)
        writers = {host: RegistryWriter(host) for host in hosts}
        cosign2.log_in(private.host, *PRIVATE)
        for writer in writers.values():
            cleanup.callback(writer.close)
        yield CosignNode(
            registry,
            referrers_registry,
            outage,
            private,
            containerd,
            shim,
            cosign2,
            cosign3,
            keys,
            writers,
            push_image_to,
            workdir,
            runtime,
            pause,
            config,
            metrics,
        )


def _pause_image(registry: Registry, workdir: Path) -> PushedImage | None:
    """The pods' sandbox image (busybox sleeping), or None where busybox is not static."""
    try:
        require_static_busybox()
    except StackError:
        return None
    return push_busybox_image(
        registry,
        "cosign-pod/pause",
        "3.9",
        {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        workdir=workdir / "images",
    )


def _admitted(node: CosignNode, image: PushedImage) -> Decision:
    """Pull ``image.tagged`` through trustd; it must be admitted and pinned to its digest."""
    node.shim.pull(image.tagged)
    decision = node.last_pull(image.tagged)
    assert decision.verdict is Verdict.ALLOW, decision.reason
    assert decision.pull_ref == image.by_digest
    assert decision.signed is not None
    assert (decision.signed.format, decision.signed.digest) == ("cosign", image.digest)
    assert node.keys["a"].key_id[:12] in decision.signed.signer
    assert node.shim.manifest_digest_of(image.tagged) == image.digest
    assert node.shim.manifest_digest_of(image.by_digest) == image.digest
    return decision


# -- admitted --------------------------------------------------------------------------------------


def test_cosign2_classic_signature_admits_the_pull_pinned_to_the_digest(node: CosignNode) -> None:
    image = node.push(node.registry, "keyed", "v2-classic")
    node.cosign2.sign(image.by_digest, node.keys["a"])
    assert sig_tag(image.digest) in node.writer(image).tags(image.repository.split("/", 1)[1])

    _admitted(node, image)
    # By digest too (require_signed_digests): the digest is what the signature names.
    assert node.shim.pull(image.by_digest).startswith("sha256:")
    decision = node.last_pull(image.by_digest)
    assert (decision.verdict, decision.pull_ref) == (Verdict.ALLOW, image.by_digest)
    unsigned = node.push(node.registry, "keyed", "v2-unsigned-digest")
    message, _ = node.refused(unsigned.by_digest)
    assert f"no cosign signature of {unsigned.by_digest}" in message, message


@pytest.mark.parametrize("where", ["tag-schema", "referrers"])
def test_cosign3_bundle_admits_the_pull_pinned_to_the_digest(node: CosignNode, where: str) -> None:
    target = node.registry if where == "tag-schema" else node.referrers
    image = node.push(target, "keyed", f"v3-{where}")
    node.cosign3.sign(image.by_digest, node.keys["a"])
    repo = image.repository.split("/", 1)[1]
    tags = node.writer(image).tags(repo)
    assert sig_tag(image.digest) not in tags  # a bundle only, no classic signature
    if where == "referrers":
        # Only the referrers API lists it: the fallback index this registry also gets is gone.
        index_tag = image.digest.replace(":", "-", 1)
        if index_tag in tags:
            node.referrers.delete_manifest(repo, index_tag)
        assert node.referrers.referrers(repo, image.digest)["manifests"]
    _admitted(node, image)


def test_cosign2_classic_signature_pushed_as_a_referrer_admits_the_pull(
    node: CosignNode,
) -> None:
    """cosign 2's ``--registry-referrers-mode=oci-1-1``: the classic manifest as a referrer."""
    image = node.push(node.referrers, "keyed", "v2-referrer")
    node.cosign2.sign(image.by_digest, node.keys["a"], referrer=True)
    repo = image.repository.split("/", 1)[1]
    assert sig_tag(image.digest) not in node.referrers.tags(repo)
    [listed] = node.referrers.referrers(repo, image.digest)["manifests"]
    assert listed["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"

    _admitted(node, image)


# -- refused ---------------------------------------------------------------------------------------


def test_unsigned_image_is_refused(node: CosignNode) -> None:
    image = node.push(node.registry, "keyed", "unsigned")
    denied = 'trustd_decisions_total{action="pull",format="cosign",mode="enforce",verdict="deny"}'
    kind = 'trustd_notary_errors_total{kind="NoCosignSignatures"}'
    before = node.metric(denied), node.metric(kind)

    message, decision = node.refused(image.tagged)
    assert message.startswith("SignatureValidationFailed: trustd: no cosign signature of "), message
    assert image.digest in message
    assert type(decision.error).__name__ == "NoCosignSignatures"
    # Counted like any denial; the error kind says it was cosign's.
    assert (node.metric(denied), node.metric(kind)) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("cosign", ["cosign2", "cosign3"])
def test_signature_by_a_key_not_configured_is_refused(node: CosignNode, cosign: str) -> None:
    signer: Cosign = getattr(node, cosign)
    image = node.push(node.registry, "keyed", f"wrong-key-{cosign}")
    signer.sign(image.by_digest, node.keys["x"])
    message, decision = node.refused(image.tagged)
    assert message.startswith("SignatureValidationFailed: trustd: no configured cosign key "), (
        message
    )
    assert type(decision.error).__name__ == "CosignSignatureInvalid"


@pytest.mark.parametrize("form", ["classic", "bundle"])
def test_signature_of_another_digest_is_refused(node: CosignNode, form: str) -> None:
    """Image A's signatures put where image B's are looked for: its ``.sig`` manifest under
    B's signature tag, or its tag-schema index (the bundle's listing) under B's index tag."""
    signed = node.push(node.registry, "keyed", f"other-digest-{form}")
    repo = signed.repository.split("/", 1)[1]
    other = node.push_to(node.registry, repo, "2.0", uuid.uuid4().hex)
    if form == "classic":
        node.cosign2.sign(signed.by_digest, node.keys["a"])
        copied = (sig_tag(signed.digest), sig_tag(other.digest))
    else:
        node.cosign3.sign(signed.by_digest, node.keys["a"])
        copied = (signed.digest.replace(":", "-", 1), other.digest.replace(":", "-", 1))
    node.writer(other).copy_manifest(repo, *copied)

    message, decision = node.refused(other.tagged)
    assert message.startswith("SignatureValidationFailed: trustd: "), message
    assert f"for {signed.digest}, not for the pulled {other.digest}" in message, message
    assert type(decision.error).__name__ == "SignatureForOtherDigest"


def test_tampered_payload_is_refused(node: CosignNode) -> None:
    image = node.push(node.registry, "keyed", "tampered")
    node.cosign2.sign(image.by_digest, node.keys["a"])
    repo = image.repository.split("/", 1)[1]
    writer = node.writer(image)
    layers = [tampered(layer) for layer in layers_of(writer, repo, sig_tag(image.digest))]
    put_signature_manifest(writer, repo, sig_tag(image.digest), layers)

    message, decision = node.refused(image.tagged)
    assert "does not verify with any configured key" in message, message
    assert type(decision.error).__name__ == "CosignSignatureInvalid"


def test_payload_claiming_another_digest_is_refused(node: CosignNode) -> None:
    """A payload naming image B's repository but image A's digest, validly signed by the
    configured key, stored under B's signature tag."""
    a = node.push(node.registry, "keyed", "claim-a")
    b = node.push(node.registry, "keyed", "claim-b")
    repo = b.repository.split("/", 1)[1]
    payload = simple_signing_payload(b.repository, a.digest)
    put_signature_manifest(
        node.writer(b), repo, sig_tag(b.digest), [signed_layer(node.keys["a"], payload)]
    )

    message, decision = node.refused(b.tagged)
    assert f"for {a.digest}, not for the pulled {b.digest}" in message, message
    assert type(decision.error).__name__ == "SignatureForOtherDigest"


def test_tag_moved_after_signing_is_refused(node: CosignNode) -> None:
    signed = node.push(node.registry, "keyed", "moved")
    node.cosign2.sign(signed.by_digest, node.keys["a"])
    _admitted(node, signed)
    repo = signed.repository.split("/", 1)[1]
    moved = node.push_to(node.registry, repo, signed.tag, seed=uuid.uuid4().hex)
    assert moved.digest != signed.digest

    message, decision = node.refused(moved.tagged)
    assert f"no cosign signature of {moved.repository}@{moved.digest}" in message, message
    assert type(decision.error).__name__ == "NoCosignSignatures"
    # containerd's tag still points at what was signed.
    assert node.shim.manifest_digest_of(signed.tagged) == signed.digest


@pytest.mark.parametrize("cosign", ["cosign2", "cosign3"])
def test_key_carried_in_the_signature_is_not_trusted(node: CosignNode, cosign: str) -> None:
    """Signed by key X with X's certificate attached, as a keyless signature carries its
    signer's key; only A is configured: refused, saying keyless is not supported. (The real
    keyless flow needs Fulcio and an OIDC token, which cannot be had offline; the signature it
    leaves has this shape: a certificate, and no configured key that signed.)"""
    signer: Cosign = getattr(node, cosign)
    image = node.push(node.registry, "keyed", f"carried-key-{cosign}")
    certificate = node.keys["x"].certificate(node.workdir)
    signer.sign(image.by_digest, node.keys["x"], certificate=certificate)

    message, decision = node.refused(image.tagged)
    assert message.startswith("SignatureValidationFailed: trustd: "), message
    assert "is not trusted by itself" in message, message
    assert "keyless (Fulcio) signatures are not supported yet" in message, message
    assert type(decision.error).__name__ == "KeylessNotSupported"

    # A configured key's signature counts, a certificate attached to it or not.
    configured = node.push(node.registry, "keyed", f"carried-configured-key-{cosign}")
    certificate = node.keys["a"].certificate(node.workdir)
    signer.sign(configured.by_digest, node.keys["a"], certificate=certificate)
    _admitted(node, configured)


def test_signatures_are_read_with_the_pulls_credentials(node: CosignNode) -> None:
    """The registry wants a password: trustd reads the tag and its signatures with the pull's
    own credentials, and what it verified serves kubelet's ImageStatus, which carries none."""
    image = node.push(node.private, "keyed", "private")
    node.cosign2.sign(image.by_digest, node.keys["a"])

    for auth in (None, api_pb2.AuthConfig(username=PRIVATE[0], password="wrong")):
        with pytest.raises(grpc.RpcError) as raised:
            node.shim.pull(image.tagged, auth)
        message = raised.value.details() or ""
        assert message.startswith("RegistryUnavailable: trustd: "), message
        assert "this node never verified cosign signatures of" in message, message

    right = api_pb2.AuthConfig(username=PRIVATE[0], password=PRIVATE[1])
    node.shim.pull(image.tagged, right)
    decision = node.last_pull(image.tagged)
    assert (decision.verdict, decision.pull_ref) == (Verdict.ALLOW, image.by_digest)
    assert decision.cached_age is None
    assert node.shim.manifest_digest_of(image.tagged) == image.digest

    assert node.shim.status(image.tagged).HasField("image")
    status = [d for d in node.shim.decisions_for(image.tagged) if d.action is Action.STATUS][-1]
    assert status.verdict is Verdict.ALLOW, status.reason
    assert status.signed is not None and status.signed.digest == image.digest
    # Anonymous, the registry answers 401: an outage for the rule's offline = "cached".
    assert status.cached_age is not None
    assert "the pull carries none" in status.reason, status.reason


# -- threshold -------------------------------------------------------------------------------------


def test_threshold_of_two_keys_needs_both_signatures(node: CosignNode) -> None:
    image = node.push(node.registry, "threshold", "two-keys")
    node.cosign2.sign(image.by_digest, node.keys["a"])
    node.cosign2.sign(image.by_digest, node.keys["a"])  # the same key again counts once
    node.cosign2.sign(image.by_digest, node.keys["x"])  # and a key not configured not at all

    message, decision = node.refused(image.tagged)
    assert f"{image.digest} is signed by 1 of the 2 required cosign keys" in message, message
    assert type(decision.error).__name__ == "CosignThresholdNotMet"

    node.cosign3.sign(image.by_digest, node.keys["b"])  # the second key, and the other form
    node.shim.pull(image.tagged)
    decision = node.last_pull(image.tagged)
    assert decision.verdict is Verdict.ALLOW, decision.reason
    assert decision.pull_ref == image.by_digest
    assert decision.signed is not None
    for key in (node.keys["a"], node.keys["b"]):
        assert key.key_id[:12] in decision.signed.signer


# -- with Notary v1 --------------------------------------------------------------------------------


def test_any_of_notary_v1_and_cosign_admits_a_cosign_signed_image(node: CosignNode) -> None:
    image = node.push(node.registry, "any-of", "cosign-only")
    node.cosign2.sign(image.by_digest, node.keys["a"])
    unsigned = node.push(node.registry, "any-of", "unsigned")

    decision = _admitted(node, image)
    assert decision.signed is not None and decision.signed.format == "cosign"
    message, _ = node.refused(unsigned.tagged)
    assert "no accepted signature (any of notary-v1, cosign)" in message, message
    assert "notary-v1: " in message and "cosign: no cosign signature" in message, message


def test_all_of_notary_v1_and_cosign_needs_both(node: CosignNode, stack: Stack) -> None:
    cosign_only = node.push(node.registry, "all-of", "cosign-only")
    node.cosign2.sign(cosign_only.by_digest, node.keys["a"])
    both = node.push(node.registry, "all-of", "both")
    node.cosign2.sign(both.by_digest, node.keys["a"])
    stack.sign(both)

    message, _ = node.refused(cosign_only.tagged)
    assert message.startswith("SignatureValidationFailed: trustd: notary-v1: "), message

    node.shim.pull(both.tagged)
    decision = node.last_pull(both.tagged)
    assert decision.verdict is Verdict.ALLOW, decision.reason
    assert decision.pull_ref == both.by_digest
    assert decision.signed is not None
    assert decision.signed.format == "notary-v1+cosign"
    assert node.shim.manifest_digest_of(both.tagged) == both.digest


# -- a container runs --------------------------------------------------------------------------


def test_kubelet_runs_a_container_of_a_cosign_signed_image(node: CosignNode) -> None:
    if node.pause is None:
        pytest.skip("no static busybox (Debian's busybox-static) to build the pod's images from")
    message = f"cosign-signed workload {uuid.uuid4().hex}"
    image = push_busybox_image(
        node.registry,
        f"cosign/keyed/pod-{uuid.uuid4().hex[:8]}",
        "1.0",
        {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "/bin/busybox cat /etc/trustd-message"]},
        files={"etc/trustd-message": f"{message}\n".encode()},
        workdir=node.workdir / "images",
    )
    node.cosign3.sign(image.by_digest, node.keys["a"])
    node.shim.pull(node.pause.tagged)  # containerd 1.6 finds its sandbox image locally

    config = host_network_pod(f"cosign-{uuid.uuid4().hex[:8]}", node.workdir / "pod-logs")
    sandbox_id = node.runtime.run_pod_sandbox(config)
    try:
        kubelet = Kubelet(node.shim.cri, node.runtime)
        container_id = kubelet.start_container(sandbox_id, config, "app", image.tagged)
        status = node.runtime.wait_until_exited(container_id)
        output = node.runtime.output(status, expected_lines=1)
    finally:
        node.runtime.remove_pod(sandbox_id)

    assert status.exit_code == 0, (status.reason, status.message)
    assert status.image_ref == image.by_digest  # the signed bytes ran
    assert output == [message]
    [pull] = [d for d in node.shim.decisions_for(image.tagged) if d.action is Action.PULL]
    assert (pull.verdict, pull.pull_ref) == (Verdict.ALLOW, image.by_digest)


# -- trustctl -------------------------------------------------------------------------------------


def test_trustctl_verify_explain_and_inspect_show_cosign(node: CosignNode) -> None:
    image = node.push(node.registry, "keyed", "trustctl")
    node.cosign2.sign(image.by_digest, node.keys["a"])
    node.cosign2.sign(image.by_digest, node.keys["x"])  # a second layer, by a stranger
    node.cosign3.sign(image.by_digest, node.keys["a"])
    unsigned = node.push(node.registry, "keyed", "trustctl-unsigned")
    key = node.keys["a"]

    verify = node.trustctl("verify", image.tagged, "--json")
    assert verify.returncode == 0, verify.stderr
    verified = json.loads(verify.stdout)
    assert (verified["digest"], verified["format"]) == (image.digest, "cosign")
    assert verified["pinned"] == image.by_digest
    refused = node.trustctl("verify", unsigned.tagged)
    assert refused.returncode == 1
    assert "no cosign signature of" in refused.stderr, refused.stderr

    explain = node.trustctl("explain", image.tagged, "--json")
    assert explain.returncode == 0, explain.stderr
    explained = json.loads(explain.stdout)
    assert explained["signatures"] == "cosign"
    assert explained["cosign"] == {
        "keys": [{"file": str(key.public), "id": key.key_id, "algorithm": "ecdsa-p256"}],
        "threshold": 1,
        "rekor_public_keys": [],
    }
    assert (explained["verdict"], explained["pull_ref"]) == ("allow", image.by_digest)
    text = node.trustctl("explain", image.tagged)
    rows = dict(re.split(r"\s{3,}", line, maxsplit=1) for line in text.stdout.splitlines())
    assert rows["signatures"] == "cosign"
    assert rows["cosign keys"] == f"{key.key_id[:12]} ecdsa-p256 ({key.public})"
    assert rows["cosign threshold"] == "1 of the 1 key(s)"
    assert "notary" not in rows and "roles" not in rows  # Notary v1 is not asked here

    inspect = node.trustctl("inspect", image.tagged, "--json")
    assert inspect.returncode == 0, inspect.stderr
    [inspected] = json.loads(inspect.stdout)
    listing = inspected["cosign"]
    assert (listing["digest"], listing["verified"], listing["threshold"]) == (
        image.digest,
        True,
        1,
    )
    found = sorted((s["form"], tuple(s["key_ids"])) for s in listing["signatures"])
    assert found == [("bundle", (key.key_id,)), ("classic", ()), ("classic", (key.key_id,))]
    assert len({s["source"] for s in listing["signatures"]}) == 3  # each told apart
    [stranger] = [s for s in listing["signatures"] if not s["key_ids"]]
    assert "does not verify with any configured key" in stranger["problem"]
    text = node.trustctl("inspect", image.tagged)
    assert text.returncode == 0, text.stderr
    assert f"cosign signatures of {image.repository}@{image.digest}" in text.stdout
    assert re.search(rf"^bundle\s+{key.key_id[:12]}\s+bundle referrer ", text.stdout, re.M)
    assert "verdict: signed" in text.stdout

    # Under any_of with Notary v1, an image Notary never signed still lists its cosign signatures.
    migrating = node.push(node.registry, "any-of", "trustctl")
    node.cosign3.sign(migrating.by_digest, key)
    inspect = node.trustctl("inspect", migrating.tagged, "--json")
    assert inspect.returncode == 0, inspect.stderr
    [inspected] = json.loads(inspect.stdout)
    assert inspected["notary_error"].startswith("no trust data for "), inspected
    assert inspected["cosign"]["verified"] is True
    assert [s["form"] for s in inspected["cosign"]["signatures"]] == ["bundle"]


# -- registry outages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryDown:
    """Images of the outage registry, verified through trustd (or not) before it stopped."""

    cached: PushedImage  # pulled under offline = "cached"
    never_verified: PushedImage  # signed, never pulled, under offline = "cached"
    deny: PushedImage  # pulled under offline = "deny"


@pytest.fixture(scope="module")
def registry_down(node: CosignNode) -> RegistryDown:
    cached = node.push(node.outage, "cached", "pulled")
    never_verified = node.push(node.outage, "cached", "never-pulled")
    deny = node.push(node.outage, "deny", "pulled")
    for image in (cached, never_verified, deny):
        node.cosign2.sign(image.by_digest, node.keys["a"])
    for image in (cached, deny):
        _admitted(node, image)
    node.outage.stop()
    return RegistryDown(cached, never_verified, deny)


def test_registry_outage_under_offline_cached_uses_the_verified_digest(
    node: CosignNode, registry_down: RegistryDown
) -> None:
    image = registry_down.cached
    # kubelet restarting a container: the image is present, verified from this node's record.
    assert node.shim.status(image.tagged).HasField("image")
    status = [d for d in node.shim.decisions_for(image.tagged) if d.action is Action.STATUS][-1]
    decision = node.shim.policy.decide(image.tagged)
    for judged in (status, decision):
        assert judged.verdict is Verdict.ALLOW, judged.reason
        assert judged.cached_age is not None
        assert "signatures verified cached on this node" in judged.reason, judged.reason
        record = audit_record(judged)
        assert (record["from_cache"], record["format"], record["digest"]) == (
            True,
            "cosign",
            image.digest,
        )
    assert decision.pull_ref == image.by_digest

    # What this node never verified is not admitted from a cache it does not have.
    message, never = node.refused(registry_down.never_verified.tagged)
    assert message.startswith("RegistryUnavailable: trustd: "), message
    assert "this node never verified cosign signatures of" in message, message
    assert never.cached_age is None


def test_registry_outage_under_offline_deny_refuses(
    node: CosignNode, registry_down: RegistryDown
) -> None:
    image = registry_down.deny
    assert not node.shim.status(image.tagged).HasField("image")  # kubelet will pull
    message, decision = node.refused(image.tagged)
    assert message.startswith("RegistryUnavailable: trustd: "), message
    assert f"registry {node.outage.host}" in message, message
    assert isinstance(decision.error, RegistryUnavailable)
    assert decision.cached_age is None


# -- a second opinion: containers/image's sigstore policy ------------------------------------------

# case: (trustd's error, or None for admitted; what containers/image says)
SECOND_OPINION_CASES = {
    "signed-cosign2": (None, "admitted"),
    "unsigned": ("NoCosignSignatures", "no signature exists"),
    "wrong-key": ("CosignSignatureInvalid", "signature verification failed"),
    "signature-of-another-digest": ("SignatureForOtherDigest", "does not match"),
    "tampered-payload": ("CosignSignatureInvalid", "signature verification failed"),
    "payload-claiming-another-digest": ("SignatureForOtherDigest", "does not match"),
}


@dataclass(frozen=True)
class SecondOpinion:
    images: dict[str, PushedImage]
    policy: Path
    registries_d: Path
    program: Path


@pytest.fixture(scope="module")
def second_opinion(node: CosignNode) -> SecondOpinion:
    """The same images for trustd and for containers/image, each case in its own repository
    (plus the images whose signatures are borrowed), under one sigstoreSigned policy."""
    program = require_peer("containers-policy")
    key, stranger = node.keys["a"], node.keys["x"]
    images = {case: node.push(node.registry, "keyed", case) for case in SECOND_OPINION_CASES}
    node.cosign2.sign(images["signed-cosign2"].by_digest, key)
    node.cosign2.sign(images["wrong-key"].by_digest, stranger)

    other = images["signature-of-another-digest"]
    repo = other.repository.split("/", 1)[1]
    signed_sibling = node.push_to(node.registry, repo, "signed", seed=uuid.uuid4().hex)
    node.cosign2.sign(signed_sibling.by_digest, key)
    node.writer(other).copy_manifest(repo, sig_tag(signed_sibling.digest), sig_tag(other.digest))

    image = images["tampered-payload"]
    repo = image.repository.split("/", 1)[1]
    node.cosign2.sign(image.by_digest, key)
    layers = [
        tampered(layer) for layer in layers_of(node.writer(image), repo, sig_tag(image.digest))
    ]
    put_signature_manifest(node.writer(image), repo, sig_tag(image.digest), layers)

    image = images["payload-claiming-another-digest"]
    repo = image.repository.split("/", 1)[1]
    claimed = node.push_to(node.registry, repo, "claimed", seed=uuid.uuid4().hex)
    payload = simple_signing_payload(image.repository, claimed.digest)
    put_signature_manifest(
        node.writer(image), repo, sig_tag(image.digest), [signed_layer(key, payload)]
    )

    directory = node.workdir / "containers-policy"
    directory.mkdir()
    scope = f"{node.registry.host}/cosign/keyed"
    policy, registries_d = sigstore_policy(directory, scope, key.public)
    return SecondOpinion(images, policy, registries_d, program)


@pytest.mark.parametrize("case", list(SECOND_OPINION_CASES))
def test_trustd_and_containers_image_agree(
    node: CosignNode, second_opinion: SecondOpinion, case: str
) -> None:
    """trustd and containers/image (``signature/policy_eval_sigstore.go``: the sigstoreSigned
    evaluator skopeo, podman and CRI-O run, with ``use-sigstore-attachments``) judge the same
    image the same way. skopeo itself cannot be had here: the Go module proxy refuses
    github.com/containers/skopeo (403) and Debian bookworm's skopeo 1.9 has sigstore patched
    out; the ``containers-policy`` peer runs the same containers/image code skopeo does."""
    image = second_opinion.images[case]
    result = subprocess.run(
        [
            str(second_opinion.program),
            "--policy",
            str(second_opinion.policy),
            "--registries.d",
            str(second_opinion.registries_d),
            "--tls-verify=false",
            f"docker://{image.tagged}",
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(node.workdir)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode in (0, 1), f"containers-policy failed: {result.stderr}"
    containers_image_admits = result.returncode == 0

    with suppress(grpc.RpcError):  # refused: the decision says why
        node.shim.pull(image.tagged)
    decision = node.last_pull(image.tagged)
    trustd_admits = decision.allowed

    said = f"trustd: {decision.reason}\ncontainers/image: {result.stdout.strip()}"
    assert trustd_admits == containers_image_admits, said
    # The same reason, in each one's words.
    error, words = SECOND_OPINION_CASES[case]
    assert words in result.stdout, said
    assert (type(decision.error).__name__ if decision.error else None) == error, said
    if trustd_admits:
        assert decision.pull_ref == image.by_digest


# -- containerd 2.x's image verifier ---------------------------------------------------------------

CONTAINERD2 = REPO_ROOT.parent / "shared" / "bin" / "containerd2"


@dataclass
class VerifyingContainerd:
    """containerd 2.x with trustd as its bindir image verifier (judging in its own process)."""

    daemon: Containerd
    node: VerifierNode
    cri: api_pb2_grpc.ImageServiceStub

    def pull(self, image: str) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.cri.PullImage(request, timeout=TIMEOUT).image_ref

    def present(self, image: str) -> bool:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        return self.cri.ImageStatus(request, timeout=TIMEOUT).HasField("image")


@pytest.fixture(scope="module")
def containerd2(
    tmp_path_factory: pytest.TempPathFactory, node: CosignNode, notary_server: NotaryServer
) -> Iterator[VerifyingContainerd]:
    if not CONTAINERD2.is_file():
        pytest.skip(
            f"no containerd 2.x binary at {CONTAINERD2} (Debian bookworm ships containerd 1.6, "
            "which has no image-verifier plugin)"
        )
    workdir = tmp_path_factory.mktemp("cosign-containerd2").resolve()
    # Containerd.launch writes its hosts.toml files here; the verifier's trustd reads them too.
    hosts_dir = workdir / "certs.d"
    policy = _rule(f"{node.registry.host}/cosign/**", '"cosign"', [node.keys["a"].public])
    policy += f"[registry]\nhosts_dirs = [{toml_value(str(hosts_dir))}]\n"
    verifier_node = make_node(
        tmp_path_factory.mktemp("cosign-verifier"), node.registry, notary_server, policy=policy
    )
    try:
        daemon = Containerd.launch(
            workdir,
            [node.registry.host],
            program=str(CONTAINERD2),
            verifier_bin_dir=verifier_node.verifier.parent,
        )
    except StackError as error:
        pytest.fail(f"containerd 2.x did not start: {error}", pytrace=False)
    assert daemon.hosts_dir == hosts_dir
    channel = grpc.insecure_channel(daemon.endpoint)
    try:
        yield VerifyingContainerd(daemon, verifier_node, api_pb2_grpc.ImageServiceStub(channel))
    finally:
        channel.close()
        daemon.stop()


@pytest.mark.parametrize("daemon", ["daemon running", "daemon stopped"])
def test_containerd2_verifier_admits_a_cosign_signed_pull_and_blocks_an_unsigned_one(
    node: CosignNode, containerd2: VerifyingContainerd, daemon: str
) -> None:
    """The verifier asks ``trustd serve`` when it runs, else judges in its own process."""
    signed = node.push(node.registry, "verifier", "signed")
    node.cosign3.sign(signed.by_digest, node.keys["a"])
    unsigned = node.push(node.registry, "verifier", "unsigned")
    verifier = containerd2.node

    with ExitStack() as running:
        server = None
        if daemon == "daemon running":
            server = running.enter_context(
                running_daemon(verifier.config, verifier.verifier_socket, verifier.metrics_port)
            )
        containerd2.pull(signed.tagged)
        with pytest.raises(grpc.RpcError) as raised:
            containerd2.pull(unsigned.tagged)
        if server is not None:
            allowed = (
                'trustd_decisions_total{action="verify",format="cosign",mode="enforce",'
                'verdict="allow"}'
            )
            assert server.metric(allowed) == 1.0
            assert server.metric('trustd_notary_errors_total{kind="NoCosignSignatures"}') == 1.0

    assert containerd2.present(signed.tagged)
    [record] = verifier.audited(signed.tagged)
    assert (record["verdict"], record["format"], record["digest"]) == (
        "allow",
        "cosign",
        signed.digest,
    )
    assert node.keys["a"].key_id[:12] in str(record["signer"])
    message = raised.value.details() or ""
    assert (
        f"image verifier bindir blocked pull of {unsigned.tagged} with digest {unsigned.digest} "
        "for reason: verifier trustd rejected image (exit code 1): SignatureValidationFailed: "
        f"trustd: no cosign signature of {unsigned.repository}@{unsigned.digest}"
    ) in message, message
    assert not containerd2.present(unsigned.tagged)
    assert [r["verdict"] for r in verifier.audited(unsigned.tagged)] == ["deny"]
