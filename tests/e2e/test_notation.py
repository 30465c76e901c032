"""Notation signatures end to end: the real notation CLI signs, trustd's CRI shim judges, the real
containerd pulls.

The signer is the ``notation`` peer (notation 1.3.2, built from the Go module proxy; the tests
skip only where it could not be built). Images live in two registries: Debian's docker-registry
2.8, which has no referrers API (notation writes the referrers tag schema's ``sha256-<hex>``
index, with JWS envelopes here), and go-containerregistry's registry with the referrers API
(signed with ``--force-referrers-tag=false``, COSE envelopes, and the fallback index notation
writes anyway removed, so only the API lists the signatures). trustd reaches both as containerd
does: its ``[registry] hosts_dirs`` is the hosts.toml directory of the module's containerd.

Every image a test judges is signed once per registry (``images``), and one shim per registry
judges them in front of the module's containerd 1.6, whose pods run on a busybox pause image:
a signed tag pulled pinned and a container run from it; refusals, each with its reason
(unsigned, untrusted certificate, another digest's signature, a moved tag, a tampered envelope,
a wrong trusted identity, an expired certificate under strict, a verification plugin); an
expired certificate admitted under permissive and audited so. Tests with shims of their own:
rules naming Notary v1 and Notation (any of, all of), a registry of their own stopped (offline
cached and deny) or requiring a password, and trustctl explain and inspect in this process.
containerd 2.x (``../shared/bin``) runs trustd as its image verifier for the same signatures.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.e2e.cri_helpers import Shim, running_shim
from tests.e2e.pod_helpers import Kubelet, RuntimeClient, host_network_pod
from tests.e2e.verifier_helpers import REPO_ROOT, install_verifier
from tests.peers import require_peer
from tests.stack import (
    Containerd,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    require_programs,
)
from tests.stack.images import PushTarget, push_busybox_image, require_static_busybox
from tests.stack.notation import (
    JWS,
    OCI_MANIFEST,
    TEST_STORE,
    Notation,
    OciRegistry,
    add_to_trust_store,
    load_local_key,
    notation_config_dir,
    referrers_tag,
    short_lived_key,
    statement,
    tampered,
)
from tests.stack.trustd_config import toml_value, trustd_config_text
from tests.unit.formats.notation_factory import PLUGIN, Chain, Headers, sign_jws
from trustd.policy.engine import Decision, Verdict
from trustd.programs.trustctl_commands import trustctl_main
from trustd.service.audit import audit_record
from trustd.service.metrics import Metrics

PREFIX = "trustd-notation"
TIMEOUT = 60.0
# notation cert generate-test's subject for the default test key.
SIGNER = "CN=trustd-test,O=Notary,L=Seattle,ST=WA,C=US"
# A certificate that expires this long after it was made, and is signed with at once.
EXPIRING_LIFETIME = timedelta(seconds=20)
PushImage = Callable[..., PushedImage]


# --- the module's node: containerd 1.6 with a pause image, a notation home ----------------------


@dataclass
class Node:
    containerd: Containerd
    runtime: RuntimeClient
    workdir: Path

    def add_registry(self, host: str) -> None:
        self.containerd.add_registry_host(host)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Node]:
    require_programs("skopeo", "containerd", "runc", "containerd-shim-runc-v2")
    require_static_busybox()
    workdir = tmp_path_factory.mktemp("notation-node")
    # The sandbox's only process; containerd 1.6 pulls it itself (the registry is anonymous).
    pause = push_busybox_image(
        registry,
        f"{PREFIX}/pause",
        "3.9",
        {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        workdir=workdir / "images",
    )
    with ExitStack() as cleanup:
        containerd = Containerd.launch(
            workdir / "containerd", [registry.host], sandbox_image=pause.tagged
        )
        cleanup.callback(containerd.stop)
        runtime = RuntimeClient(containerd.endpoint)
        cleanup.callback(runtime.close)
        cleanup.callback(runtime.remove_all_pods)  # runs first: no sandbox outlives containerd
        yield Node(containerd, runtime, workdir)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Notation:
    """notation with the test key ``trustd-test`` (trusted: trust store ``ca:trustd-test``)
    as its default and ``trustd-untrusted`` (in a store no trust policy here names)."""
    notation = Notation(require_peer("notation"), tmp_path_factory.mktemp("notation-home"))
    notation.generate_test_key(TEST_STORE, default=True)
    notation.generate_test_key("trustd-untrusted")
    return notation


def unique(name: str) -> str:
    return f"{PREFIX}/{name}-{uuid.uuid4().hex[:8]}"


def path_of(image: PushedImage) -> str:
    return image.repository.split("/", 1)[1]


def descriptor_of(image: PushedImage) -> dict[str, Any]:
    manifest = json.loads(image.manifest)
    return {"mediaType": manifest["mediaType"], "digest": image.digest, "size": image.size}


# --- the images, signed once per registry ------------------------------------------------------


@dataclass
class Images:
    """One registry's images, signed (or not) for each case; ``notation_dir`` is the notation
    directory trustd is given (trust store ``ca:trustd-test``, the module's trust policy)."""

    kind: str
    target: PushTarget
    oci: OciRegistry
    api: bool  # signatures listed by the referrers API (else by the tag schema)
    push: Callable[[str], PushedImage]  # a new image in a repository of its own
    push_as: Callable[[str, str], PushedImage]  # a new image as repository path:tag
    sign: Callable[..., None]
    notation_dir: Path
    signed: PushedImage
    unsigned: PushedImage
    untrusted: PushedImage
    for_other: PushedImage  # carries a copy of ``signed``'s signature, its subject changed
    moved: PushedImage  # signed; a test pushes another image over its tag
    tampered: PushedImage
    wrong_identity: PushedImage
    expired_strict: PushedImage
    expired_permissive: PushedImage
    plugin: PushedImage
    expiring_subject: str

    @property
    def host(self) -> str:
        return self.target.host


def _sign_expiring(
    signer: Notation, workdir: Path, sign: Callable[..., None], images: list[PushedImage]
) -> tuple[str, datetime]:
    """Sign ``images`` with a trusted certificate that expires soon after; its subject and end.
    notation refuses a certificate that is not valid when it signs, so a slow machine gets a
    longer-lived certificate and another try."""
    lifetime = EXPIRING_LIFETIME
    for attempt in range(3):
        name = f"trustd-expiring-{uuid.uuid4().hex[:6]}"
        key = short_lived_key(workdir / "expiring", name, lifetime)
        signer.add_local_key(name, key.key_file, key.certificate_file)
        try:
            for image in images:
                sign(image, key=name)
        except Exception:
            if attempt == 2:
                raise
            lifetime *= 3
            continue
        add_to_trust_store(signer.config_dir, TEST_STORE, key.certificate_file)
        subject = key.certificate.subject.rfc4514_string()
        return subject, key.certificate.not_valid_after_utc
    raise AssertionError("unreachable")


def _plugin_envelope(signer: Notation, image: PushedImage) -> bytes:
    """A JWS envelope by the trusted key whose critical headers require a verification plugin
    (notation cannot make one without the plugin itself)."""
    key = load_local_key(signer, TEST_STORE)
    chain = Chain([key.certificate], key.private_key, "rsa2048")
    payload = json.dumps({"targetArtifact": descriptor_of(image)}).encode()
    headers = Headers(
        signing_time=datetime.now(UTC) - timedelta(minutes=1),
        extra={PLUGIN: "com.example.trustd-test-verifier"},
        extra_crit=[PLUGIN],
    )
    return sign_jws(chain, payload, headers)


def _make_images(
    kind: str,
    target: PushTarget,
    signer: Notation,
    workdir: Path,
    push_image_to: PushImage,
) -> Images:
    api = kind == "referrers-api"
    oci = OciRegistry(target.host)
    envelope = "cose" if api else "jws"

    def push_as(path: str, tag: str) -> PushedImage:
        return push_image_to(target, path, tag, seed=uuid.uuid4().hex)

    def push(name: str) -> PushedImage:
        return push_as(unique(name), "1.0")

    def sign(image: PushedImage, key: str | None = None) -> None:
        signer.sign(image.by_digest, key=key, envelope=envelope, referrers_tag=not api)
        if api:
            # This registry sends no OCI-Subject header, so notation also wrote the tag
            # schema's index: removed, so that only the referrers API lists the signature.
            index = referrers_tag(image.digest)
            if oci.manifest(image.repository, index) is not None:
                oci.delete_manifest(image.repository, index)

    # First, while its certificate is valid: the signatures whose certificate expires next.
    expired_strict, expired_permissive = push("expired-strict"), push("expired-permissive")
    subject, expires = _sign_expiring(signer, workdir, sign, [expired_strict, expired_permissive])

    signed, unsigned = push("signed"), push("unsigned")
    sign(signed)
    untrusted = push("untrusted")
    sign(untrusted, key="trustd-untrusted")

    # Another image listed as signed by a copy of ``signed``'s signature manifest whose subject
    # names it: the envelope inside still signs ``signed``.
    for_other = push("for-other")
    [original] = oci.notation_signatures(signed.repository, signed.digest, api=api)
    oci.push_signature(
        for_other.repository,
        descriptor_of(for_other),
        original.envelope,
        original.envelope_type,
        tag_schema=not api,
    )

    moved = push("moved")
    sign(moved)

    # Signed, then the envelope changed and pushed in place of the signature.
    tampered_image = push("tampered")
    sign(tampered_image)
    [genuine] = oci.notation_signatures(tampered_image.repository, tampered_image.digest, api=api)
    replacement = oci.push_signature(
        tampered_image.repository,
        descriptor_of(tampered_image),
        tampered(genuine.envelope, genuine.envelope_type),
        genuine.envelope_type,
        tag_schema=False,
    )
    if api:
        oci.delete_manifest(tampered_image.repository, genuine.digest)
    else:
        oci.set_tag_index(tampered_image.repository, tampered_image.digest, [replacement])

    wrong_identity = push("wrong-identity")
    sign(wrong_identity)

    plugin = push("plugin")
    oci.push_signature(
        plugin.repository,
        descriptor_of(plugin),
        _plugin_envelope(signer, plugin),
        JWS,
        tag_schema=not api,
    )

    notation_dir = notation_config_dir(
        signer,
        workdir / "notation",
        [
            statement(
                "wrong-identity",
                [wrong_identity.repository],
                identities=["x509.subject: C=US, ST=WA, O=Notary, CN=someone-else"],
            ),
            statement("permissive", [expired_permissive.repository], level="permissive"),
            statement("everything-else", ["*"]),
        ],
    )

    # The expiring certificate must have expired before a test judges its signatures.
    deadline = time.monotonic() + EXPIRING_LIFETIME.total_seconds() * 9 + TIMEOUT
    while datetime.now(UTC) <= expires + timedelta(seconds=1):
        assert time.monotonic() < deadline, f"the clock never passed {expires}"
        time.sleep(0.2)

    return Images(
        kind=kind,
        target=target,
        oci=oci,
        api=api,
        push=push,
        push_as=push_as,
        sign=sign,
        notation_dir=notation_dir,
        signed=signed,
        unsigned=unsigned,
        untrusted=untrusted,
        for_other=for_other,
        moved=moved,
        tampered=tampered_image,
        wrong_identity=wrong_identity,
        expired_strict=expired_strict,
        expired_permissive=expired_permissive,
        plugin=plugin,
        expiring_subject=subject,
    )


# For a test that means something on one registry only: run there, rather than skip on the other.
TAG_SCHEMA_ONLY = pytest.mark.parametrize("images", ["tag-schema"], indirect=True)


@pytest.fixture(scope="module", params=["tag-schema", "referrers-api"])
def images(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    node: Node,
    signer: Notation,
    push_image_to: PushImage,
) -> Iterator[Images]:
    kind = request.param
    target: PushTarget
    if kind == "tag-schema":
        target = request.getfixturevalue("registry")
    else:
        target = request.getfixturevalue("referrers_registry")
        node.add_registry(target.host)
    made = _make_images(kind, target, signer, tmp_path_factory.mktemp(kind), push_image_to)
    yield made
    made.oci.close()


# --- trustd -----------------------------------------------------------------------------------


def config_text(
    node: Node,
    state_dir: Path,
    notation_dir: Path,
    policy: str,
    notary: Sequence[tuple[str, str, Path | None]] = (),
) -> str:
    """trustd reading registries through the module containerd's hosts.toml directory.

    Every question is verified anew (``freshness_window = 0``): the tests change signatures,
    tags and registries between pulls a moment apart, and must see each change at once.
    """
    fresh = {"freshness_window": 0}
    text = trustd_config_text(state_dir=state_dir, notary=notary, policy="", server=fresh)
    return (
        text
        + f"[registry]\nhosts_dirs = [{toml_value(str(node.containerd.hosts_dir))}]\n"
        + f"timeout = 10\n\n[notation]\nconfig_dir = {toml_value(str(notation_dir))}\n\n"
        + policy
    )


def notation_rule(host: str, extra: str = "") -> str:
    return f'[[policy]]\nmatch = "{host}/{PREFIX}/**"\nsignatures = "notation"\n{extra}'


@pytest.fixture(scope="module")
def shim(images: Images, node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shim]:
    state_dir = tmp_path_factory.mktemp(f"trustd-{images.kind}")
    text = config_text(node, state_dir, images.notation_dir, notation_rule(images.host))
    with running_shim(text, node.containerd.endpoint, state_dir) as running:
        yield running


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def refused(shim: Shim, image: str) -> str:
    """The reason a pull through trustd was refused with, after ``SignatureValidationFailed:
    trustd: ``; and nothing of it reached containerd."""
    error = rpc_error(lambda: shim.pull(image))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNKNOWN, details
    prefix = "SignatureValidationFailed: trustd: "
    assert details.startswith(prefix), details
    decision = last_pull(shim, image)
    assert (decision.verdict, decision.pull_ref) == (Verdict.DENY, None)
    return details.removeprefix(prefix)


def last_pull(shim: Shim, image: str) -> Decision:
    return [d for d in shim.decisions_for(image) if d.action == "pull"][-1]


def admitted(
    shim: Shim, image: PushedImage, reference: str | None = None, formats: str = "notation"
) -> Decision:
    """Pull ``reference`` (default: the tag) through trustd; it must be verified by
    ``formats``, pinned to the image's digest and land in containerd as exactly that manifest."""
    reference = reference or image.tagged
    shim.pull(reference)
    decision = last_pull(shim, reference)
    assert decision.verdict is Verdict.ALLOW, decision.reason
    assert decision.pull_ref == image.by_digest
    assert decision.signed is not None and decision.signed.format == formats
    assert shim.manifest_digest_of(image.by_digest) == image.digest
    return decision


# --- admitted ----------------------------------------------------------------------------------


def test_a_signed_tag_is_pulled_pinned_to_its_digest(images: Images, shim: Shim) -> None:
    decision = admitted(shim, images.signed)

    assert shim.manifest_digest_of(images.signed.tagged) == images.signed.digest
    assert decision.signed is not None
    assert decision.signed.signer == SIGNER
    assert decision.reason == f"notation signature by {SIGNER} for {images.signed.digest}"
    record = audit_record(decision)
    assert (record["format"], record["signer"], record["role"]) == ("notation", SIGNER, None)
    assert record["digest"] == images.signed.digest
    # A digest reference is verified as that digest.
    admitted(shim, images.signed, images.signed.by_digest)


# Tag-schema registry only: one container run is enough: the tag-schema registry's.
@TAG_SCHEMA_ONLY
def test_a_container_of_a_signed_image_runs(
    images: Images, node: Node, signer: Notation, tmp_path: Path
) -> None:
    message = f"notation-signed workload {uuid.uuid4().hex}"
    image = push_busybox_image(
        images.target,
        unique("workload"),
        "1.0",
        {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "/bin/busybox cat /etc/message"]},
        files={"etc/message": f"{message}\n".encode()},
        workdir=tmp_path / "images",
    )
    images.sign(image)
    state_dir = tmp_path / "trustd"
    text = config_text(node, state_dir, images.notation_dir, notation_rule(images.host))
    with running_shim(text, node.containerd.endpoint, state_dir) as shim:
        config = host_network_pod(f"notation-{uuid.uuid4().hex[:8]}", tmp_path / "pod-logs")
        sandbox_id = node.runtime.run_pod_sandbox(config)
        try:
            kubelet = Kubelet(shim.cri, node.runtime)
            container_id = kubelet.start_container(sandbox_id, config, "app", image.tagged)
            status = node.runtime.wait_until_exited(container_id)
            output = node.runtime.output(status, expected_lines=1)
        finally:
            node.runtime.remove_pod(sandbox_id)
    assert status.exit_code == 0, (status.reason, status.message)
    assert status.image_ref == image.by_digest
    assert output == [message]
    pulls = [d for d in shim.decisions_for(image.tagged) if d.action == "pull"]
    assert [(d.verdict, d.pull_ref) for d in pulls] == [(Verdict.ALLOW, image.by_digest)]


# --- refused, each with its reason -------------------------------------------------------------


def test_an_unsigned_image_is_refused(images: Images, shim: Shim) -> None:
    reason = refused(shim, images.unsigned.tagged)
    assert reason.startswith(
        f"no Notation signature of {images.unsigned.repository}@{images.unsigned.digest} was "
        "found in "
    ), reason
    assert not shim.direct_status(images.unsigned.tagged).HasField("image")


def none_verified(reason: str, image: PushedImage) -> str:
    """What follows "no Notation signature of IMAGE verified (1 signature tried): signature
    manifest sha256:…: ", the reason the one signature failed."""
    head = f"no Notation signature of {image.by_digest} verified (1 signature tried): "
    assert reason.startswith(head + "signature manifest sha256:"), reason
    return reason.removeprefix(head).split(": ", 1)[1]


def test_a_signature_by_an_untrusted_certificate_is_refused(images: Images, shim: Shim) -> None:
    why = none_verified(refused(shim, images.untrusted.tagged), images.untrusted)
    assert why == (
        "no certificate of the signature's chain ('CN=trustd-untrusted,O=Notary,L=Seattle,ST=WA,"
        f"C=US') is in the trust stores ca:{TEST_STORE} (trust policy 'everything-else', level "
        "strict: authenticity is enforced)"
    )


def test_a_signature_of_another_digest_is_refused(images: Images, shim: Shim) -> None:
    why = none_verified(refused(shim, images.for_other.tagged), images.for_other)
    envelope = "COSE" if images.api else "JWS"
    manifest = "application/vnd.oci.image.manifest.v1+json"
    assert why == (
        f"the {envelope} signature is for {manifest} {images.signed.digest} "
        f"({images.signed.size} bytes), not for {manifest} {images.for_other.digest} "
        f"({images.for_other.size} bytes)"
    )


# Tag-schema registry only: the referrers API lists a manifest by its own subject.
@TAG_SCHEMA_ONLY
def test_a_signature_listed_for_another_image_is_not_used(images: Images, shim: Shim) -> None:
    """The tag schema's index is an unauthenticated hint: a signature manifest of one image
    listed in another's index is not that image's signature."""
    image = images.push("listed-for-other")
    [signature] = images.oci.notation_signatures(
        images.signed.repository, images.signed.digest, api=False
    )
    # The signature manifest and its blobs, unchanged, into the image's repository and index.
    images.oci.push_blob(image.repository, b"{}")
    images.oci.push_blob(image.repository, signature.envelope)
    data = json.dumps(signature.manifest).encode()
    digest = images.oci.push_manifest(image.repository, None, data, OCI_MANIFEST)
    listed = dict(signature.descriptor, digest=digest, size=len(data))
    images.oci.set_tag_index(image.repository, image.digest, [listed])

    reason = refused(shim, image.tagged)
    assert reason.startswith(f"no Notation signature of {image.by_digest} was found in "), reason
    assert reason.endswith(
        f"(signature manifest {digest} is listed for {image.digest} but signs "
        f"{images.signed.digest})"
    ), reason


def test_a_tag_moved_after_signing_is_refused_and_the_signed_digest_still_pulls(
    images: Images, shim: Shim
) -> None:
    moved = images.moved
    admitted(shim, moved)
    other = images.push_as(path_of(moved), moved.tag)
    assert other.digest != moved.digest

    reason = refused(shim, moved.tagged)
    # The tag now names the other image, which no one signed; the signed digest still pulls.
    assert reason.startswith(f"no Notation signature of {moved.repository}@{other.digest}"), reason
    admitted(shim, moved, moved.by_digest)


def test_a_tampered_envelope_is_refused(images: Images, shim: Shim) -> None:
    why = none_verified(refused(shim, images.tampered.tagged), images.tampered)
    envelope = "COSE" if images.api else "JWS"
    assert why == (
        f"{envelope} signature: the PS256 signature does not verify with the signing "
        "certificate 'CN=trustd-test,O=Notary,L=Seattle,ST=WA,C=US' (tampered or corrupted)"
    )


def test_a_signer_that_is_not_a_trusted_identity_is_refused(images: Images, shim: Shim) -> None:
    why = none_verified(refused(shim, images.wrong_identity.tagged), images.wrong_identity)
    assert why == (
        f"the signing certificate's subject {SIGNER!r} is none of the trusted identities "
        "'x509.subject: C=US, ST=WA, O=Notary, CN=someone-else' (trust policy 'wrong-identity', "
        "level strict: authenticity is enforced)"
    )


def test_an_expired_signing_certificate_is_refused_under_strict(images: Images, shim: Shim) -> None:
    why = none_verified(refused(shim, images.expired_strict.tagged), images.expired_strict)
    assert why.startswith(f"certificate {images.expiring_subject!r} expired at "), why
    assert why.endswith(
        "; without a verified timestamp every chain certificate must be valid at the time of "
        "verification (trust policy 'everything-else', level strict: authenticTimestamp is "
        "enforced)"
    ), why


def test_an_expired_signing_certificate_is_admitted_and_audited_under_permissive(
    images: Images, shim: Shim
) -> None:
    decision = admitted(shim, images.expired_permissive)
    assert decision.signed is not None
    assert decision.signed.signer == images.expiring_subject
    notes = decision.signed.notes
    assert notes[0] == "level permissive", notes
    assert any(note.startswith("authenticTimestamp: logged: ") for note in notes), notes
    record = audit_record(decision)
    assert "level permissive" in record["reason"]
    assert "authenticTimestamp: logged: " in record["reason"]
    assert record["verdict"] == "allow"


def test_a_signature_that_needs_a_verification_plugin_is_refused(
    images: Images, shim: Shim
) -> None:
    why = none_verified(refused(shim, images.plugin.tagged), images.plugin)
    assert why == (
        "JWS signature requires the Notation verification plugin "
        "'com.example.trustd-test-verifier' (header 'io.cncf.notary.verificationPlugin'); "
        "trustd does not run verification plugins, so it cannot verify this signature"
    )


# --- rules naming both formats -----------------------------------------------------------------


# Tag-schema registry only: Notary v1 signs for the docker-registry (the stack's notary-server).
@TAG_SCHEMA_ONLY
def test_any_of_admits_either_format_and_all_of_needs_both(
    images: Images,
    node: Node,
    stack: Stack,
    notary_server: NotaryServer,
    tmp_path: Path,
) -> None:

    def notary_signed(name: str) -> PushedImage:
        image = images.push(name)
        stack.sign(image)
        return image

    any_notary = notary_signed("any-notary")
    any_notation = images.push("any-notation")
    images.sign(any_notation)
    all_both = notary_signed("all-both")
    images.sign(all_both)
    all_notation = images.push("all-notation")
    images.sign(all_notation)

    host = images.host
    policy = (
        f'[[policy]]\nmatch = "{host}/{PREFIX}/any-*"\n'
        'signatures = { any_of = ["notary-v1", "notation"] }\n\n'
        f'[[policy]]\nmatch = "{host}/{PREFIX}/all-*"\n'
        'signatures = { all_of = ["notary-v1", "notation"] }\n'
    )
    notary = [(host, notary_server.url, notary_server.ca_file)]
    state_dir = tmp_path / "trustd"
    text = config_text(node, state_dir, images.notation_dir, policy, notary=notary)
    metrics = Metrics()
    with running_shim(text, node.containerd.endpoint, state_dir) as shim:
        shim.policy.add_observer(metrics.observe)
        by_notary = admitted(shim, any_notary, formats="notary-v1")
        by_notation = admitted(shim, any_notation)
        by_both = admitted(shim, all_both, formats="notary-v1+notation")
        reason = refused(shim, all_notation.tagged)

    assert by_notary.reason == f"signed by targets as {any_notary.digest}"
    # Notary v1 is asked first and has nothing: Notation's signature admits.
    assert by_notation.reason == f"notation signature by {SIGNER} for {any_notation.digest}"
    assert by_both.signed is not None
    assert by_both.signed.signer == f"notary-v1: targets; notation: {SIGNER}"
    assert reason.startswith(f"notary-v1: no trust data for {all_notation.repository}"), reason
    # The decision counter names the format that verified, or what the rule required.
    pulls = {"action": "pull", "mode": "enforce"}
    for verdict, label in (
        ("allow", "notary-v1"),
        ("allow", "notation"),
        ("allow", "notary-v1+notation"),
        ("deny", "notary-v1+notation"),
    ):
        counted = metric(metrics, "trustd_decisions_total", **pulls, verdict=verdict, format=label)
        assert counted == 1, (verdict, label)


# --- registry outage and credentials -----------------------------------------------------------


@pytest.fixture
def own_registry(tmp_path: Path, node: Node) -> Iterator[Callable[..., Registry]]:
    """``own_registry(credentials=None)``: a docker-registry of this test's own, which it may
    stop and start; the module's containerd (and so trustd) reaches it."""
    started: list[Registry] = []

    def start(credentials: tuple[str, str] | None = None) -> Registry:
        require_programs("docker-registry")
        registry = Registry.start(tmp_path / f"registry-{len(started)}", credentials=credentials)
        started.append(registry)
        node.add_registry(registry.host)
        return registry

    yield start
    for registry in started:
        registry.stop()


# Tag-schema registry only: one outage is enough: a docker-registry's.
@TAG_SCHEMA_ONLY
def test_a_verified_digest_stays_usable_while_the_registry_is_down(
    images: Images,
    node: Node,
    signer: Notation,
    own_registry: Callable[..., Registry],
    push_image_to: PushImage,
    tmp_path: Path,
) -> None:
    registry = own_registry()
    cached = push_image_to(registry, f"{PREFIX}/cached", "1.0", seed=uuid.uuid4().hex)
    denied = push_image_to(registry, f"{PREFIX}/deny", "1.0", seed=uuid.uuid4().hex)
    for image in (cached, denied):
        signer.sign(image.by_digest)
    policy = (
        f'[[policy]]\nmatch = "{denied.repository}"\nsignatures = "notation"\n'
        'offline = "deny"\n\n' + notation_rule(registry.host)
    )
    state_dir = tmp_path / "trustd"
    text = config_text(node, state_dir, images.notation_dir, policy)
    metrics = Metrics()
    with running_shim(text, node.containerd.endpoint, state_dir) as shim:
        shim.policy.add_observer(metrics.observe)
        admitted(shim, cached)
        admitted(shim, denied)

        registry.process.stop()
        # kubelet's ImageStatus before a container restart: the image is there, and the
        # signatures this node verified stand for the registry it cannot ask.
        assert shim.status(cached.tagged).HasField("image")
        [status] = [d for d in shim.decisions_for(cached.tagged) if d.action == "status"]
        assert (status.verdict, status.pull_ref) == (Verdict.ALLOW, cached.by_digest)
        assert status.cached_age is not None
        assert status.reason.startswith(
            f"notation signature by {SIGNER} for {cached.digest} (judged from signatures "
            "verified cached on this node, confirmed "
        ), status.reason
        record = audit_record(status)
        assert (record["from_cache"], record["format"], record["signer"]) == (
            True,
            "notation",
            SIGNER,
        )
        assert metric(metrics, "trustd_cached_trust_decisions_total", verdict="allow") == 1.0
        statuses = {"action": "status", "mode": "enforce", "format": "notation"}
        assert metric(metrics, "trustd_decisions_total", **statuses, verdict="allow") == 1.0

        # offline = "deny": absent for kubelet, and its pull fails as an outage.
        assert not shim.status(denied.tagged).HasField("image")
        error = rpc_error(lambda: shim.pull(denied.tagged))
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert (error.details() or "").startswith("RegistryUnavailable: trustd: "), error
        assert f"registry {registry.host}" in (error.details() or "")
        assert metric(metrics, "trustd_cached_trust_decisions_total", verdict="allow") == 1.0

        # Back: verified at the registry again, nothing from the cache.
        registry.process.start()
        registry.process.wait_until(registry.healthy, TIMEOUT, "docker-registry restarted")
        assert admitted(shim, cached).cached_age is None


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


RIGHT = ("notation-puller", "the-right-password")
WRONG = ("notation-puller", "a-revoked-password")


def auth(credentials: tuple[str, str]) -> api_pb2.AuthConfig:
    return api_pb2.AuthConfig(username=credentials[0], password=credentials[1])


# Tag-schema registry only: the referrers-API registry has no authentication.
@TAG_SCHEMA_ONLY
def test_a_private_registry_is_read_with_the_pulls_credentials(
    images: Images,
    node: Node,
    signer: Notation,
    own_registry: Callable[..., Registry],
    push_image_to: PushImage,
    tmp_path: Path,
) -> None:
    registry = own_registry(credentials=RIGHT)
    image = push_image_to(registry, f"{PREFIX}/private", "1.0", seed=uuid.uuid4().hex)
    signer.sign(image.by_digest, credentials=RIGHT)
    state_dir = tmp_path / "trustd"
    text = config_text(node, state_dir, images.notation_dir, notation_rule(registry.host))
    with running_shim(text, node.containerd.endpoint, state_dir) as shim:
        refusals = []
        for offered in (auth(WRONG), None):

            def pull(offered: api_pb2.AuthConfig | None = offered) -> str:
                return shim.pull(image.tagged, offered)

            error = rpc_error(pull)
            assert error.code() == grpc.StatusCode.UNKNOWN
            refusals.append(error.details() or "")
        shim.pull(image.tagged, auth(RIGHT))
        decision = last_pull(shim, image.tagged)
        # ImageStatus carries no credentials: the registry refuses it, and what the pull
        # verified answers for it.
        present = shim.status(image.tagged).HasField("image")
        status = [d for d in shim.decisions_for(image.tagged) if d.action == "status"][-1]

    wrong, missing = refusals
    assert wrong.startswith(
        f"RegistryUnavailable: trustd: registry {registry.host} at http://{registry.host} "
        f"refused access to {PREFIX}/private (HTTP 401)"
    ), wrong
    assert missing.startswith(
        f"RegistryUnavailable: trustd: registry {registry.host} requires a username and "
        f"password (HTTP Basic) for {PREFIX}/private and the pull carries none; "
    ), missing
    for details in refusals:
        assert details.endswith(
            f"; this node never verified notation signatures of {image.tagged}"
        ), details
        assert RIGHT[1] not in details and WRONG[1] not in details
    assert (decision.verdict, decision.pull_ref) == (Verdict.ALLOW, image.by_digest)
    assert decision.cached_age is None
    assert present
    assert (status.verdict, status.cached_age is not None) == (Verdict.ALLOW, True)
    assert status.reason.endswith(
        "requires a username and password (HTTP Basic) and the pull carries none)"
    )


# --- containerd 2.x with trustd as its image verifier ------------------------------------------

CONTAINERD2 = REPO_ROOT.parent / "shared" / "bin" / "containerd2"
CTR2 = REPO_ROOT.parent / "shared" / "bin" / "ctr2"


@dataclass
class Verifying:
    """containerd 2.x whose image verifier is trustd, judging Notation signatures."""

    containerd: Containerd
    audit: Path

    def audited(self, name: str) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        lines = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [line for line in lines if line["image"] == name and line["action"] == "verify"]

    def ctr_pull(self, image: str) -> subprocess.CompletedProcess[str]:
        """``ctr image pull`` of ctr 2.x, which pulls through containerd's transfer service (so
        the image verifiers judge it)."""
        command = [str(CTR2), "--address", str(self.containerd.socket), "-n", "default"]
        command += ["image", "pull", "--hosts-dir", str(self.containerd.hosts_dir), image]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    def cri_pull(self, image: str) -> str | None:
        """A CRI pull straight to containerd: None if it worked, else the error's details."""
        with grpc.insecure_channel(self.containerd.endpoint) as channel:
            stub = api_pb2_grpc.ImageServiceStub(channel)
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
            try:
                stub.PullImage(request, timeout=TIMEOUT)
            except grpc.RpcError as error:
                return error.details() or ""
        return None


@pytest.fixture(scope="module")
def verifying(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, signer: Notation
) -> Iterator[Verifying]:
    if not CONTAINERD2.is_file() or not CTR2.is_file():
        pytest.skip(
            f"no containerd 2.x and ctr 2.x at {CONTAINERD2.parent} (Debian bookworm ships 1.6)"
        )
    workdir = tmp_path_factory.mktemp("containerd2-notation")
    containerd_dir = workdir / "containerd"
    notation_dir = notation_config_dir(signer, workdir / "notation", [statement("all", ["*"])])
    audit = workdir / "audit.log"
    text = trustd_config_text(state_dir=workdir / "state", notary=[], audit_file=audit)
    # Containerd.launch keeps its hosts.toml directory here; trustd reads the same one.
    hosts_dir = containerd_dir.resolve() / "certs.d"
    text += (
        f"[registry]\nhosts_dirs = [{toml_value(str(hosts_dir))}]\n\n"
        f"[notation]\nconfig_dir = {toml_value(str(notation_dir))}\n\n"
        + notation_rule(registry.host)
    )
    config = workdir / "trustd.toml"
    config.write_text(text)
    verifier = install_verifier(workdir / "bin", config)
    containerd = Containerd.launch(
        containerd_dir,
        [registry.host],
        program=str(CONTAINERD2),
        verifier_bin_dir=verifier.parent,
    )
    assert containerd.hosts_dir == hosts_dir
    try:
        yield Verifying(containerd, audit)
    finally:
        containerd.stop()


def test_containerd2_verifier_admits_a_notation_signed_pull_and_blocks_an_unsigned_one(
    verifying: Verifying, signer: Notation, registry: Registry, push_image_to: PushImage
) -> None:
    signed = push_image_to(registry, unique("c2-signed"), "1.0", seed=uuid.uuid4().hex)
    signer.sign(signed.by_digest)
    unsigned = push_image_to(registry, unique("c2-unsigned"), "1.0", seed=uuid.uuid4().hex)
    signed_cri = push_image_to(registry, unique("c2-cri"), "1.0", seed=uuid.uuid4().hex)
    signer.sign(signed_cri.by_digest)

    allowed = verifying.ctr_pull(signed.tagged)
    blocked = verifying.ctr_pull(unsigned.tagged)
    cri_allowed = verifying.cri_pull(signed_cri.tagged)
    cri_blocked = verifying.cri_pull(unsigned.tagged)

    assert allowed.returncode == 0, allowed.stderr
    [record] = verifying.audited(signed.tagged)
    assert (record["verdict"], record["format"], record["signer"], record["digest"]) == (
        "allow",
        "notation",
        SIGNER,
        signed.digest,
    )
    assert cri_allowed is None, cri_allowed
    assert [r["verdict"] for r in verifying.audited(signed_cri.tagged)] == ["allow"]

    expected = (
        f"verifier trustd rejected image (exit code 1): SignatureValidationFailed: trustd: no "
        f"Notation signature of {unsigned.by_digest} was found in registry {registry.host}"
    )
    assert blocked.returncode != 0
    assert expected in blocked.stderr, blocked.stderr
    assert cri_blocked is not None and expected in cri_blocked, cri_blocked
    assert [r["verdict"] for r in verifying.audited(unsigned.tagged)] == ["deny", "deny"]


# --- trustctl explain and inspect --------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def rows(self) -> dict[str, str]:
        """explain's text output as label -> value (labels keep their indentation)."""
        found = {}
        for line in self.stdout.splitlines():
            label, _, value = line.partition("   ")
            found[label.rstrip()] = value.strip()
        return found


@pytest.fixture
def trustctl(
    images: Images, node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Ran]:
    """``trustctl(*args, policy=None)``: trustctl in this process, on a config whose rule for
    the images is ``policy`` (default: Notation only)."""

    def run(*args: str, policy: str | None = None, notary: Sequence[Any] = ()) -> Ran:
        config = tmp_path / f"trustd-{uuid.uuid4().hex[:6]}.toml"
        rule = notation_rule(images.host) if policy is None else policy
        text = config_text(node, tmp_path / "state", images.notation_dir, rule, notary=notary)
        config.write_text(text)
        capsys.readouterr()
        status = trustctl_main([*args, "-c", str(config)])
        out = capsys.readouterr()
        return Ran(status, out.out, out.err)

    return run


def test_explain_shows_the_formats_required_and_which_applied(
    images: Images, trustctl: Callable[..., Ran]
) -> None:
    signed = trustctl("explain", images.signed.tagged, "--json")
    assert (signed.status, signed.stderr) == (0, "")
    explained = signed.json()
    assert explained["signatures"] == "notation"
    assert explained["answers"] == [
        {
            "format": "notation",
            "verified": True,
            "digest": images.signed.digest,
            "signer": SIGNER,
            "notes": [],
            "from_cache": False,
            "error": None,
            "reason": f"signed by {SIGNER} as {images.signed.digest}",
        }
    ]
    assert explained["notation"] == {
        "config_dir": str(images.notation_dir),
        "trust_policy": str(images.notation_dir / "trustpolicy.json"),
        "statement": "everything-else",
        "level": "strict",
        "trust_stores": [f"ca:{TEST_STORE}"],
        "trusted_identities": ["*"],
        "error": None,
    }
    assert (explained["applied"], explained["verdict"]) == ("notation", "allow")
    assert explained["pull_ref"] == images.signed.by_digest

    text = trustctl("explain", images.signed.tagged).rows()
    assert text["signatures"] == "notation"
    assert text["  notation"] == f"verified: signed by {SIGNER} as {images.signed.digest}"
    assert text["notation policy"].startswith(
        f"'everything-else', level strict, trust stores ca:{TEST_STORE}, identities *"
    )
    assert text["if unreachable"] == (
        'judged from this node\'s own verification, of any age (offline = "cached")'
    )
    assert text["applied"] == "notation"
    assert "notary" not in text and "roles" not in text
    assert text["would pull"] == images.signed.by_digest

    refused = trustctl("explain", images.wrong_identity.tagged, "--json")
    assert refused.status == 1
    explained = refused.json()
    [answer] = explained["answers"]
    assert (answer["verified"], answer["error"]) == (False, "NoVerifiedSignature")
    assert "is none of the trusted identities" in answer["reason"]
    assert explained["notation"]["statement"] == "wrong-identity"
    assert (explained["applied"], explained["verdict"]) == (None, "deny")


# Tag-schema registry only: Notary v1 signs for the docker-registry (the stack's notary-server).
@TAG_SCHEMA_ONLY
def test_explain_during_a_migration_shows_each_formats_answer(
    images: Images, stack: Stack, notary_server: NotaryServer, trustctl: Callable[..., Ran]
) -> None:
    """Under any_of, explain asks every format, so an operator sees the Notation signature
    verify before switching the rule to Notation only."""
    both = images.push("migrating")
    stack.sign(both)
    images.sign(both)
    any_of = (
        f'[[policy]]\nmatch = "{images.host}/{PREFIX}/**"\n'
        'signatures = { any_of = ["notary-v1", "notation"] }\n'
    )
    notary = [(images.host, notary_server.url, notary_server.ca_file)]

    ran = trustctl("explain", both.tagged, "--json", policy=any_of, notary=notary)
    assert ran.status == 0, ran.stderr
    explained = ran.json()
    assert explained["signatures"] == "any of notary-v1, notation"
    answers = {a["format"]: a for a in explained["answers"]}
    assert answers["notary-v1"]["verified"] and answers["notary-v1"]["signer"] == "targets"
    assert answers["notation"]["verified"] and answers["notation"]["signer"] == SIGNER
    assert answers["notary-v1"]["digest"] == answers["notation"]["digest"] == both.digest
    assert explained["applied"] == "notary-v1"  # the first that verified decides
    assert explained["notary"]["url"] == notary_server.url

    rows = trustctl("explain", both.tagged, policy=any_of, notary=notary).rows()
    assert rows["signatures"] == "any of notary-v1, notation"
    assert rows["  notary-v1"] == f"verified: signed by targets as {both.digest}"
    assert rows["  notation"] == f"verified: signed by {SIGNER} as {both.digest}"
    assert rows["roles"] == "targets/releases, targets (first that signs the tag)"

    # Before the rule names Notation at all (step 2 of the migration), inspect shows the
    # Notation signature beside Notary v1's signed tags.
    notary_only = f'[[policy]]\nmatch = "{images.host}/{PREFIX}/**"\n'
    ran = trustctl("inspect", both.tagged, "--json", policy=notary_only, notary=notary)
    assert ran.status == 0, ran.stderr
    [inspected] = ran.json()
    assert [signed["SignedTag"] for signed in inspected["SignedTags"]] == [both.tag]
    [signature] = inspected["notation"]["signatures"]
    assert (signature["verified"], signature["signer"]) == (True, SIGNER)

    # Notation only signs this one: Notary v1 says why it does not, Notation admits.
    only = trustctl("explain", images.signed.tagged, "--json", policy=any_of, notary=notary)
    answers = {a["format"]: a for a in only.json()["answers"]}
    assert (answers["notary-v1"]["verified"], answers["notation"]["verified"]) == (False, True)
    assert only.json()["applied"] == "notation"


def test_inspect_lists_a_digests_notation_signatures(
    images: Images, trustctl: Callable[..., Ran]
) -> None:
    ran = trustctl("inspect", images.signed.tagged, "--json")
    assert (ran.status, ran.stderr) == (0, "")
    [shown] = ran.json()
    assert shown["Name"] == images.signed.repository
    assert "SignedTags" not in shown  # a Notation-only rule: Notary v1 is not read
    notation = shown["notation"]
    assert (notation["reference"], notation["digest"]) == (
        images.signed.tagged,
        images.signed.digest,
    )
    assert (notation["trust_policy"], notation["level"], notation["problems"]) == (
        "everything-else",
        "strict",
        [],
    )
    [signature] = notation["signatures"]
    envelope = "application/cose" if images.api else "application/jose+json"
    assert signature["envelope"] == envelope
    assert (signature["signer"], signature["issuer"]) == (SIGNER, SIGNER)  # self-signed
    assert signature["signing_scheme"] == "notary.x509"
    assert (signature["verified"], signature["level"], signature["problem"]) == (
        True,
        "strict",
        None,
    )
    assert signature["expiry"] is None  # notation sets no io.cncf.notary.expiry by default
    signed_at = datetime.strptime(signature["signing_time"], "%Y-%m-%dT%H:%M:%SZ")
    certificate_end = datetime.strptime(signature["certificate_expires"], "%Y-%m-%dT%H:%M:%SZ")
    assert signed_at < certificate_end

    # By digest, and a signature that verifies only at a level that logs what failed.
    permissive = trustctl("inspect", images.expired_permissive.by_digest, "--json").json()[0]
    [signature] = permissive["notation"]["signatures"]
    assert (signature["verified"], signature["level"]) == (True, "permissive")
    assert signature["signer"] == images.expiring_subject
    assert [note.split(":", 1)[0] for note in signature["logged"]] == ["authenticTimestamp"]

    # A signature that does not verify is listed with what it claims and why it failed.
    untrusted = trustctl("inspect", images.untrusted.tagged, "--json").json()[0]
    [signature] = untrusted["notation"]["signatures"]
    assert signature["signer"] == "CN=trustd-untrusted,O=Notary,L=Seattle,ST=WA,C=US"
    assert signature["verified"] is False
    assert "is in the trust stores ca:trustd-test" in signature["problem"]

    text = trustctl("inspect", images.signed.tagged).stdout
    assert text.startswith(
        f"Notation signatures of {images.signed.tagged} ({images.signed.digest}), trust policy "
        "'everything-else' (level strict)\n"
    ), text
    assert f"    signer:      {SIGNER}\n" in text
    assert "    expires:     never (none set)\n" in text
    assert text.rstrip().endswith("    verified:    yes, level strict"), text

    unsigned = trustctl("inspect", images.unsigned.tagged).stdout
    assert "No Notation signatures." in unsigned
