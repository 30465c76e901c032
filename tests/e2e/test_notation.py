"""Notation signatures end to end: the real notation CLI signs, trustd's CRI shim judges, the real
containerd pulls.

The signer is the ``notation`` peer (notation 1.3.2, built from the Go module proxy; the tests
skip only where it could not be built). Images live in two registries: Debian's docker-registry
2.8, which has no referrers API (notation writes the referrers tag schema's ``sha256-<hex>``
index, with JWS envelopes here), and go-containerregistry's registry with the referrers API
(signed with ``--force-referrers-tag=false``, COSE envelopes, and the fallback index notation
writes anyway removed, so only the API lists the signatures). trustd reaches both as containerd
does: its ``[registry] hosts_dirs`` is the hosts.toml directory of the module's containerd.

Every image a test judges is signed once per module (``images``); each test starts the shim it
needs in front of the module's containerd 1.6, whose pod sandboxes run on a busybox pause image.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.cri_helpers import Shim, running_shim
from tests.e2e.pod_helpers import Kubelet, RuntimeClient, host_network_pod
from tests.peers import require_peer
from tests.stack import Containerd, PushedImage, Registry, require_programs
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
from trustd.service.audit import audit_record

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
    notary: list[tuple[str, str, Path | None]] | None = None,
) -> str:
    """trustd reading registries through the module containerd's hosts.toml directory."""
    text = trustd_config_text(state_dir=state_dir, notary=notary or [], policy="")
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


def admitted(shim: Shim, image: PushedImage, reference: str | None = None) -> Decision:
    """Pull ``reference`` (default: the tag) through trustd; it must be pinned to the image's
    digest and land in containerd as exactly that manifest."""
    reference = reference or image.tagged
    shim.pull(reference)
    decision = last_pull(shim, reference)
    assert decision.verdict is Verdict.ALLOW, decision.reason
    assert decision.pull_ref == image.by_digest
    assert decision.signed is not None and decision.signed.format == "notation"
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


def test_a_container_of_a_signed_image_runs(
    images: Images, node: Node, signer: Notation, tmp_path: Path
) -> None:
    if images.api:
        pytest.skip("one container run is enough: the tag-schema registry's")
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


def test_a_signature_listed_for_another_image_is_not_used(images: Images, shim: Shim) -> None:
    """The tag schema's index is an unauthenticated hint: a signature manifest of one image
    listed in another's index is not that image's signature."""
    if images.api:
        pytest.skip("the referrers API lists a manifest by its own subject")
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
