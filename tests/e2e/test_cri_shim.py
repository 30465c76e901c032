"""trustd's CRI ImageService end to end: real containerd, docker-registry, notary-server and CLI.

Each test pushes its own repositories (``unique_repo``) and starts its own in-process trustd shim
(``tests/e2e/cri_helpers.py``) in front of the session's containerd, then talks CRI to the shim's
socket exactly as kubelet and crictl do.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from cri_shim.gen.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from cri_shim.server import credentials_from
from tests.e2e.cri_helpers import (
    TIMEOUT,
    Shim,
    running_shim,
    unique_repo,
)
from tests.stack import (
    Containerd,
    NotaryPublisher,
    NotaryServer,
    PushedImage,
    Registry,
    Stack,
    free_port,
)
from tests.stack.trustd_config import trustd_config_text
from trustd.config.load import parse_config
from trustd.net.credentials import Credentials
from trustd.policy.engine import Verdict
from trustd.service.audit import audit_record
from trustd.service.metrics import Metrics

PushImage = Callable[..., PushedImage]
MakeShim = Callable[..., Shim]


@pytest.fixture
def make_shim(
    tmp_path: Path, registry: Registry, notary_server: NotaryServer, containerd: Containerd
) -> Iterator[MakeShim]:
    """``make_shim(policy="", notary=None)``: a trustd shim; by default every repo is enforced."""
    with ExitStack() as stack:
        counter = iter(range(1000))

        def make(
            policy: str = "", notary: list[tuple[str, str, Path | None]] | None = None
        ) -> Shim:
            if notary is None:
                notary = [(registry.host, notary_server.url, notary_server.ca_file)]
            state_dir = tmp_path / f"trustd-{next(counter)}"
            text = trustd_config_text(state_dir=state_dir, notary=notary, policy=policy)
            return stack.enter_context(running_shim(text, containerd.endpoint, state_dir))

        yield make


@pytest.fixture
def shim(make_shim: MakeShim) -> Shim:
    return make_shim()


def signed_image(stack: Stack, push_image: PushImage, prefix: str, tag: str = "1.0") -> PushedImage:
    image = push_image(unique_repo(prefix), tag, seed=uuid.uuid4().hex)
    stack.sign(image)
    return image


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def in_containerd(shim: Shim, repository: str, digest: str) -> bool:
    """Whether containerd holds the manifest ``digest`` under any name of ``repository``."""
    listed = shim.direct.ListImages(api_pb2.ListImagesRequest(), timeout=TIMEOUT)
    return any(f"{repository}@{digest}" in image.repo_digests for image in listed.images) or (
        shim.manifest_digest_of(f"{repository}@{digest}") is not None
    )


# -- admitted pulls --------------------------------------------------------------------------------


def test_signed_tag_is_pulled_as_the_signed_digest_and_tagged(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    image = signed_image(stack, push_image, "signed")

    image_ref = shim.pull(image.tagged)

    assert image_ref.startswith("sha256:")
    # The tag containerd holds points at exactly the signed manifest.
    assert shim.manifest_digest_of(image.tagged) == image.digest
    assert shim.manifest_digest_of(image.by_digest) == image.digest
    shim.await_cri_tag(image.tagged)  # the CRI plugin learns of the tag from an event
    status = shim.status(image.tagged)
    assert status.HasField("image")
    assert status.image.id == image_ref
    assert image.tagged in status.image.repo_tags  # what `crictl images` shows
    assert image.by_digest in status.image.repo_digests
    # containerd itself (crictl straight at containerd) sees the same tag.
    assert image.tagged in shim.direct_status(image.tagged).image.repo_tags
    [decision] = [d for d in shim.decisions_for(image.tagged) if d.action == "pull"]
    assert decision.verdict is Verdict.ALLOW
    assert decision.pull_ref == image.by_digest


def test_a_tag_just_written_is_found_before_the_cri_plugin_shows_it(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    """The pull does not wait for containerd's CRI plugin to learn of the tag (an event it
    handles a moment later); kubelet's ImageStatus right after the pull must find the image."""
    image = signed_image(stack, push_image, "lagging")
    image_ref = shim.pull(image.tagged)
    shim.await_cri_tag(image.tagged)
    # What a lagging plugin looks like: the tag record gone from the CRI plugin's view.
    images = images_pb2_grpc.ImagesStub(shim.direct_channel)
    images.Delete(
        images_pb2.DeleteImageRequest(name=image.tagged, sync=True),
        metadata=[("containerd-namespace", "k8s.io")],
        timeout=TIMEOUT,
    )
    deadline = time.monotonic() + TIMEOUT
    while shim.direct_status(image.tagged).HasField("image"):
        assert time.monotonic() < deadline, "the CRI plugin kept showing the deleted tag"
        time.sleep(0.01)

    status = shim.status(image.tagged)
    assert status.HasField("image")
    assert status.image.id == image_ref
    assert image.by_digest in status.image.repo_digests

    # Only for a tag the shim wrote moments ago: later, an absent tag is absent.
    shim.server.service.recent_tags.seconds = 0.0
    shim.pull(image.tagged)
    shim.await_cri_tag(image.tagged)
    images.Delete(
        images_pb2.DeleteImageRequest(name=image.tagged, sync=True),
        metadata=[("containerd-namespace", "k8s.io")],
        timeout=TIMEOUT,
    )
    while shim.direct_status(image.tagged).HasField("image"):
        assert time.monotonic() < deadline, "the CRI plugin kept showing the deleted tag"
        time.sleep(0.01)
    assert not shim.status(image.tagged).HasField("image")


def test_a_moved_tag_is_found_before_the_cri_plugin_shows_the_move(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    """After a re-signed tag is pulled, the CRI plugin may still show the image the tag pointed
    at before for a moment; ImageStatus right after the pull must report the signed one."""
    before = signed_image(stack, push_image, "moving")
    shim.pull(before.tagged)
    after = push_image(before.repository.split("/", 1)[1], before.tag, seed=uuid.uuid4().hex)
    stack.sign(after)
    shim.trust.updater.forget_recent()  # the re-sign is seen now, not a freshness window later
    image_ref = shim.pull(after.tagged)
    shim.await_cri_tag(after.tagged, repo_digest=after.by_digest)
    # What a lagging plugin looks like: the tag still showing the image it pointed at before.
    shim.containerd.tag_image(before.tagged, before.by_digest, TIMEOUT)
    shim.await_cri_tag(before.tagged, repo_digest=before.by_digest)

    status = shim.status(after.tagged)
    assert status.HasField("image")
    assert status.image.id == image_ref
    assert after.by_digest in status.image.repo_digests


def test_image_status_of_an_absent_image_looks_it_up_behind_the_answer(
    stack: Stack, push_image: PushImage, registry: Registry, shim: Shim
) -> None:
    """Absent is absent whatever Notary says: containerd is asked first, and the verified
    lookup kubelet's pull needs next is made behind the answer, audited as the status decision."""
    signed = signed_image(stack, push_image, "ahead")
    unsigned = push_image(unique_repo("ahead-unsigned"), "1.0", seed=uuid.uuid4().hex)

    assert not shim.status(signed.tagged).HasField("image")
    assert not shim.status(unsigned.tagged).HasField("image")
    shim.server.service.lookahead.drain()
    [ahead] = shim.decisions_for(signed.tagged)
    assert (ahead.action, ahead.verdict) == ("status", Verdict.ALLOW)
    assert ahead.pull_ref == signed.by_digest
    [refused] = shim.decisions_for(unsigned.tagged)
    assert (refused.action, refused.verdict) == ("status", Verdict.DENY)
    assert "no trust data" in refused.reason

    shim.pull(signed.tagged)
    assert shim.status(signed.tagged).HasField("image")
    assert [d.action for d in shim.decisions_for(signed.tagged)] == ["status", "pull", "status"]


def test_image_status_of_a_signed_digest_reference(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    image = signed_image(stack, push_image, "bydigest")
    assert not shim.status(image.by_digest).HasField("image")

    shim.pull(image.by_digest)

    status = shim.status(image.by_digest)
    assert status.HasField("image")
    assert image.by_digest in status.image.repo_digests
    # A digest pull adds no tag: nothing was asked for by tag.
    assert shim.manifest_digest_of(image.tagged) is None


def test_short_name_finds_the_normalised_tag(
    stack: Stack,
    push_image: PushImage,
    notary: NotaryPublisher,
    notary_server: NotaryServer,
    registry: Registry,
    make_shim: MakeShim,
) -> None:
    """kubelet sends ``name:tag`` as written in the pod; containerd stores docker.io/library/…"""
    # No Docker Hub here: docker.io's Notary is the test server, and the docker.io names are
    # made in containerd from an image pulled from the test registry.
    shim = make_shim(
        notary=[
            (registry.host, notary_server.url, notary_server.ca_file),
            ("docker.io", notary_server.url, notary_server.ca_file),
        ]
    )
    name = f"trustd-short-{uuid.uuid4().hex[:8]}"
    gun = f"docker.io/library/{name}"
    image = push_image(unique_repo("short"), "1.0", seed=uuid.uuid4().hex)
    notary.ensure_initialised(gun)
    notary.add(gun, "1.0", image.manifest)
    notary.publish(gun)
    shim.direct_pull(image.by_digest)

    assert not shim.status(f"{name}:1.0").HasField("image")
    shim.containerd.tag_image(f"{gun}@{image.digest}", image.by_digest, TIMEOUT)
    shim.containerd.tag_image(f"{gun}:1.0", image.by_digest, TIMEOUT)
    shim.await_cri_tag(f"{gun}:1.0")

    for asked in (f"{name}:1.0", f"library/{name}:1.0", f"{gun}:1.0"):
        status = shim.status(asked)
        assert status.HasField("image"), asked
        assert f"{gun}:1.0" in status.image.repo_tags


def test_audit_mode_admits_an_unsigned_image_and_records_audit_fail(
    push_image: PushImage, registry: Registry, make_shim: MakeShim
) -> None:
    shim = make_shim(f'[[policy]]\nmatch = "{registry.host}/trustd-cri/audit-*"\nmode = "audit"\n')
    image = push_image(unique_repo("audit"), "1.0", seed=uuid.uuid4().hex)

    shim.pull(image.tagged)

    assert shim.manifest_digest_of(image.tagged) == image.digest
    assert shim.status(image.tagged).HasField("image")
    decisions = shim.decisions_for(image.tagged)
    assert {d.verdict for d in decisions} == {Verdict.AUDIT_FAIL}
    assert all(d.mode == "audit" for d in decisions)
    assert any("no trust data" in d.reason for d in decisions)


def test_audit_mode_records_an_image_pushed_over_a_signed_tag(
    stack: Stack, push_image: PushImage, registry: Registry, make_shim: MakeShim
) -> None:
    """Audit mode pulls what was asked; an image that is not the signed one is an audit failure."""
    shim = make_shim(f'[[policy]]\nmatch = "{registry.host}/trustd-cri/audit-*"\nmode = "audit"\n')
    signed = signed_image(stack, push_image, "audit-overwritten")
    attacker = push_image(signed.repository.split("/", 1)[1], signed.tag, seed=uuid.uuid4().hex)

    shim.pull(signed.tagged)

    assert shim.manifest_digest_of(signed.tagged) == attacker.digest  # pulled as asked
    verdicts = [(d.verdict, d.reason) for d in shim.decisions_for(signed.tagged)]
    assert verdicts[0][0] is Verdict.ALLOW  # the tag itself is signed
    assert verdicts[1] == (
        Verdict.AUDIT_FAIL,
        f"pulled {attacker.by_digest}, but tag {signed.tag} of {signed.repository} is signed as "
        f"{signed.digest}",
    )


def test_off_mode_passes_through_without_verification(
    push_image: PushImage, registry: Registry, make_shim: MakeShim
) -> None:
    shim = make_shim(f'[[policy]]\nmatch = "{registry.host}/trustd-cri/off-*"\nmode = "off"\n')
    image = push_image(unique_repo("off"), "1.0", seed=uuid.uuid4().hex)

    shim.pull(image.tagged)

    assert shim.manifest_digest_of(image.tagged) == image.digest
    assert shim.status(image.tagged).HasField("image")
    decisions = shim.decisions_for(image.tagged)
    assert decisions and all(d.verdict is Verdict.ALLOW and d.mode == "off" for d in decisions)


# -- denials ---------------------------------------------------------------------------------------


def test_unsigned_repository_is_denied(push_image: PushImage, shim: Shim) -> None:
    image = push_image(unique_repo("unsigned"), "1.0", seed=uuid.uuid4().hex)

    error = rpc_error(lambda: shim.pull(image.tagged))

    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith("SignatureValidationFailed: trustd: ")
    assert image.repository in error.details()
    assert not in_containerd(shim, image.repository, image.digest)
    assert not shim.status(image.tagged).HasField("image")


def test_unsigned_tag_of_a_signed_repository_is_denied(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    signed = signed_image(stack, push_image, "tags")
    unsigned = push_image(signed.repository.split("/", 1)[1], "1.1", seed=uuid.uuid4().hex)

    error = rpc_error(lambda: shim.pull(unsigned.tagged))

    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith(
        f"SignatureValidationFailed: trustd: tag 1.1 is not signed in {signed.repository}"
    )
    assert not in_containerd(shim, unsigned.repository, unsigned.digest)


def test_seed_attack_tag_overwritten_in_the_registry(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    """An attacker with registry credentials pushes other bytes over a signed tag."""
    signed = signed_image(stack, push_image, "seed")
    attacker = push_image(signed.repository.split("/", 1)[1], signed.tag, seed=uuid.uuid4().hex)
    assert attacker.digest != signed.digest
    assert attacker.tagged == signed.tagged

    # The tag pull is not denied: it is pinned, so the attacker's manifest is never fetched.
    shim.pull(signed.tagged)
    assert shim.manifest_digest_of(signed.tagged) == signed.digest
    assert signed.by_digest in shim.status(signed.tagged).image.repo_digests
    assert not in_containerd(shim, attacker.repository, attacker.digest)

    # Asking for the attacker's manifest by digest, or by tag and digest, is denied.
    for reference in (attacker.by_digest, f"{attacker.tagged}@{attacker.digest}"):
        error = rpc_error(lambda reference=reference: shim.pull(reference))
        assert error.code() == grpc.StatusCode.UNKNOWN, reference
        assert error.details().startswith("SignatureValidationFailed: trustd: "), reference
        assert attacker.repository in error.details()
    assert not in_containerd(shim, attacker.repository, attacker.digest)


def test_digest_reference_of_an_unsigned_manifest_is_denied(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    signed = signed_image(stack, push_image, "digests")
    unsigned = push_image(signed.repository.split("/", 1)[1], "extra", seed=uuid.uuid4().hex)

    error = rpc_error(lambda: shim.pull(unsigned.by_digest))

    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == (
        "SignatureValidationFailed: trustd: "
        f"{unsigned.digest} is not a signed target of {unsigned.repository}"
        + error.details().split(unsigned.repository, 1)[1]
    )
    assert not in_containerd(shim, unsigned.repository, unsigned.digest)


def test_side_loaded_unsigned_images_are_reported_absent(
    stack: Stack, push_image: PushImage, shim: Shim
) -> None:
    """Images put into containerd behind trustd's back never look present through trustd."""
    signed = signed_image(stack, push_image, "sideload")
    repo = signed.repository.split("/", 1)[1]
    unsigned_tag = push_image(repo, "2.0", seed=uuid.uuid4().hex)
    attacker = push_image(repo, signed.tag, seed=uuid.uuid4().hex)

    # Pulled straight from containerd, by tag: the registry now serves the attacker's bytes.
    shim.direct_pull(unsigned_tag.tagged)
    shim.direct_pull(attacker.tagged)

    for image in (unsigned_tag, attacker):
        direct = shim.direct_status(image.tagged)
        assert direct.HasField("image")
        assert image.by_digest in direct.image.repo_digests
        assert not shim.status(image.tagged).HasField("image"), image.tagged
        assert not shim.status(image.by_digest).HasField("image"), image.by_digest

    # A trustd pull re-pins the tag to the signed bytes, and then it is reported.
    shim.pull(signed.tagged)
    assert shim.manifest_digest_of(signed.tagged) == signed.digest
    assert signed.by_digest in shim.status(signed.tagged).image.repo_digests


def test_malformed_reference_is_invalid_argument(registry: Registry, shim: Shim) -> None:
    for reference in (f"{registry.host}/UPPER/case:1", "", "repo:bad tag"):
        error = rpc_error(lambda reference=reference: shim.pull(reference))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, reference
        assert error.details().startswith("trustd: invalid image reference"), reference


def _with_notary(shim: Shim, registry: Registry, url: str, ca: Path | None, policy: str) -> None:
    """Point a running shim at another Notary URL (and policy); its cache stays."""
    text = trustd_config_text(
        state_dir=shim.config.server.state_dir, notary=[(registry.host, url, ca)], policy=policy
    )
    shim.policy.reconfigure(parse_config(text, "reconfigured.toml"))


def test_notary_outage_is_answered_from_cached_trust_data(
    stack: Stack,
    push_image: PushImage,
    registry: Registry,
    make_shim: MakeShim,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = signed_image(stack, push_image, "outage")
    never_seen = signed_image(stack, push_image, "outage-new")
    shim = make_shim()
    metrics = Metrics()
    shim.policy.add_observer(metrics.observe)
    shim.pull(image.tagged)  # verified while Notary answers

    # Notary goes away: nothing listens at the configured address any more.
    dead = f"https://127.0.0.1:{free_port()}"
    _with_notary(shim, registry, dead, stack.notary_server.ca_file, "")
    caplog.set_level(logging.WARNING, logger="trustd.formats.notary.engine")

    # kubelet's restart of a container: ImageStatus finds the image, a pull would work too.
    assert shim.status(image.tagged).HasField("image")
    shim.pull(image.tagged)
    assert shim.manifest_digest_of(image.tagged) == image.digest
    from_cache = [d for d in shim.decisions_for(image.tagged) if d.cached_age is not None]
    assert [d.action for d in from_cache] == ["status", "pull"]
    assert all(d.verdict is Verdict.ALLOW for d in from_cache)
    assert "judged from trust data cached on this node" in from_cache[-1].reason
    assert f"cannot reach notary at {dead}" in from_cache[-1].reason
    assert audit_record(from_cache[-1])["from_cache"] is True
    assert 'trustd_cached_trust_decisions_total{verdict="allow"} 2.0' in metrics.render().decode()
    warnings = [r for r in caplog.records if "cached on this node" in r.getMessage()]
    assert len(warnings) == 1  # once per repository per outage, not per call

    # Cached data is still judged: an unsigned tag stays a signature failure.
    unsigned = rpc_error(lambda: shim.pull(f"{image.repository}:9.9"))
    assert unsigned.details().startswith("SignatureValidationFailed: trustd: tag 9.9")
    # A repository this node never verified fails closed.
    error = rpc_error(lambda: shim.pull(never_seen.tagged))
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith("RegistryUnavailable: trustd: cannot reach notary")
    assert "no trust data of" in error.details()


def test_notary_outage_policy_deny_and_max_offline_age(
    stack: Stack, push_image: PushImage, registry: Registry, make_shim: MakeShim
) -> None:
    image = signed_image(stack, push_image, "outage-strict")
    shim = make_shim()
    shim.pull(image.tagged)
    dead = f"https://127.0.0.1:{free_port()}"
    ca = stack.notary_server.ca_file

    strict = f'[[policy]]\nmatch = "{image.repository}"\noffline = "deny"\n'
    _with_notary(shim, registry, dead, ca, strict)
    assert not shim.status(image.tagged).HasField("image")  # fail closed: kubelet pulls
    error = rpc_error(lambda: shim.pull(image.tagged))
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith(f"RegistryUnavailable: trustd: cannot reach notary at {dead}")

    aged = f'[[policy]]\nmatch = "{image.repository}"\nmax_offline_age = 1\n'
    _with_notary(shim, registry, dead, ca, aged)
    deadline = time.monotonic() + 30
    while shim.status(image.tagged).HasField("image"):  # until the data is over a second old
        assert time.monotonic() < deadline, "cached trust data never got older than 1s"
        time.sleep(0.2)
    error = rpc_error(lambda: shim.pull(image.tagged))
    assert error.details().startswith("RegistryUnavailable: trustd: ")
    assert "more than max_offline_age (1s)" in error.details()

    # Notary back: verified against the server again, nothing cached about it.
    _with_notary(shim, registry, stack.notary_server.url, ca, aged)
    shim.pull(image.tagged)
    assert shim.decisions_for(image.tagged)[-1].cached_age is None


def test_unreachable_notary_server_is_unavailable(
    stack: Stack, push_image: PushImage, registry: Registry, make_shim: MakeShim
) -> None:
    image = signed_image(stack, push_image, "notarydown")
    dead = f"https://127.0.0.1:{free_port()}"
    shim = make_shim(notary=[(registry.host, dead, stack.notary_server.ca_file)])

    error = rpc_error(lambda: shim.pull(image.tagged))

    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith(f"RegistryUnavailable: trustd: cannot reach notary at {dead}")
    assert not in_containerd(shim, image.repository, image.digest)
    # Fail closed: without trust data even a present image is not reported.
    shim.direct_pull(image.by_digest)
    assert not shim.status(image.by_digest).HasField("image")


# -- passthrough -----------------------------------------------------------------------------------


def _sorted_images(response: api_pb2.ListImagesResponse) -> list[bytes]:
    # containerd lists in map order; the set of images is what must be equal.
    return sorted(image.SerializeToString(deterministic=True) for image in response.images)


def test_list_images_equals_containerd(stack: Stack, push_image: PushImage, shim: Shim) -> None:
    shim.pull(signed_image(stack, push_image, "list").tagged)
    request = api_pb2.ListImagesRequest()
    before = _sorted_images(shim.direct.ListImages(request, timeout=TIMEOUT))
    through = _sorted_images(shim.cri.ListImages(request, timeout=TIMEOUT))
    after = _sorted_images(shim.direct.ListImages(request, timeout=TIMEOUT))
    assert through in (before, after)
    assert through

    filtered = api_pb2.ListImagesRequest(
        filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="sha256:" + "0" * 64))
    )
    before = _sorted_images(shim.direct.ListImages(filtered, timeout=TIMEOUT))
    through = _sorted_images(shim.cri.ListImages(filtered, timeout=TIMEOUT))
    after = _sorted_images(shim.direct.ListImages(filtered, timeout=TIMEOUT))
    assert through in (before, after)


def _without_timestamps(response: api_pb2.ImageFsInfoResponse) -> api_pb2.ImageFsInfoResponse:
    # The usage sample's timestamp is containerd's, refreshed on its own schedule.
    copy = api_pb2.ImageFsInfoResponse()
    copy.CopyFrom(response)
    for usage in (*copy.image_filesystems, *copy.container_filesystems):
        usage.timestamp = 0
    return copy


def test_image_fs_info_equals_containerd(shim: Shim) -> None:
    request = api_pb2.ImageFsInfoRequest()
    before = _without_timestamps(shim.direct.ImageFsInfo(request, timeout=TIMEOUT))
    through = _without_timestamps(shim.cri.ImageFsInfo(request, timeout=TIMEOUT))
    after = _without_timestamps(shim.direct.ImageFsInfo(request, timeout=TIMEOUT))
    assert through in (before, after)
    assert through.image_filesystems


def test_remove_image_equals_containerd(push_image: PushImage, shim: Shim) -> None:
    first = push_image(unique_repo("remove"), "1.0", seed=uuid.uuid4().hex)
    second = push_image(unique_repo("remove"), "1.0", seed=uuid.uuid4().hex)
    for image in (first, second):
        shim.direct_pull(image.tagged)

    def remove_request(image: str) -> api_pb2.RemoveImageRequest:
        return api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))

    through = shim.cri.RemoveImage(remove_request(first.tagged), timeout=TIMEOUT)
    direct = shim.direct.RemoveImage(remove_request(second.tagged), timeout=TIMEOUT)

    assert through == direct
    for image in (first, second):
        assert not shim.direct_status(image.tagged).HasField("image")
        assert not shim.direct_status(image.by_digest).HasField("image")
    # Removing what is not there, through trustd, answers as containerd answers.
    assert shim.cri.RemoveImage(
        remove_request(first.tagged), timeout=TIMEOUT
    ) == shim.direct.RemoveImage(remove_request(first.tagged), timeout=TIMEOUT)


def test_errors_and_unknown_methods_pass_through_unchanged(shim: Shim) -> None:
    empty = api_pb2.RemoveImageRequest()
    calls = {
        "RemoveImage without an image": lambda stub: stub.RemoveImage(empty, timeout=TIMEOUT),
    }
    for what, call in calls.items():
        direct = rpc_error(lambda call=call: call(shim.direct))
        through = rpc_error(lambda call=call: call(shim.cri))
        assert (through.code(), through.details()) == (direct.code(), direct.details()), what

    # Methods this containerd does not implement, unary and server-streaming.
    for method, make in (
        ("/runtime.v1.ImageService/NoSuchMethod", "unary_unary"),
        ("/runtime.v1.ImageService/StreamImages", "unary_stream"),
    ):
        answers = []
        for channel in (shim.direct_channel, shim.channel):
            call = getattr(channel, make)(method)

            def invoke(call: Callable[..., object] = call, make: str = make) -> object:
                result = call(b"", timeout=TIMEOUT)
                return list(result) if make == "unary_stream" else result  # type: ignore[call-overload]

            error = rpc_error(invoke)
            answers.append(error.code())
        assert answers[0] == answers[1], method


def test_only_the_image_service_is_served(shim: Shim) -> None:
    """trustd's socket is no way around containerd's: other services are not relayed."""
    version = api_pb2.VersionRequest(version="v1")
    direct = api_pb2_grpc.RuntimeServiceStub(shim.direct_channel).Version(version, timeout=TIMEOUT)
    assert direct.runtime_name == "containerd"
    through = rpc_error(
        lambda: api_pb2_grpc.RuntimeServiceStub(shim.channel).Version(version, timeout=TIMEOUT)
    )
    assert through.code() == grpc.StatusCode.UNIMPLEMENTED
    # containerd's own API (here: list every image record in every namespace) neither.
    list_images = shim.channel.unary_unary("/containerd.services.images.v1.Images/List")
    assert rpc_error(lambda: list_images(b"", timeout=TIMEOUT)).code() == (
        grpc.StatusCode.UNIMPLEMENTED
    )


# -- concurrency, restarts, life -------------------------------------------------------------------


def test_sixteen_parallel_pulls_are_each_the_signed_digest(
    notary: NotaryPublisher, push_image: PushImage, shim: Shim
) -> None:
    images: list[PushedImage] = []
    for _ in range(4):  # four repositories, four tags each: same-GUN and cross-GUN concurrency
        repo = unique_repo("parallel")
        pushed = [push_image(repo, f"v{n}", seed=uuid.uuid4().hex) for n in range(4)]
        gun = pushed[0].repository
        notary.ensure_initialised(gun)
        for image in pushed:
            notary.add(gun, image.tag, image.manifest)
        notary.publish(gun)
        images += pushed
    assert len({image.digest for image in images}) == 16

    with ThreadPoolExecutor(max_workers=16) as pool:
        refs = list(pool.map(lambda image: shim.pull(image.tagged), images))

    assert all(ref.startswith("sha256:") for ref in refs)
    for image in images:
        assert shim.manifest_digest_of(image.tagged) == image.digest
        status = shim.status(image.tagged)
        assert image.by_digest in status.image.repo_digests


def test_containerd_restart_fails_cleanly_then_recovers(
    stack: Stack, push_image: PushImage, containerd: Containerd, shim: Shim
) -> None:
    before = signed_image(stack, push_image, "restart")
    during = signed_image(stack, push_image, "restart")
    shim.pull(before.tagged)

    containerd.stop()
    try:
        error = rpc_error(lambda: shim.pull(during.tagged))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        listed = rpc_error(
            lambda: shim.cri.ListImages(api_pb2.ListImagesRequest(), timeout=TIMEOUT)
        )
        assert listed.code() == grpc.StatusCode.UNAVAILABLE
        # A tag write (they run behind the pull's answer) that meets containerd down waits
        # for it to come back rather than being lost.
        shim.server.service.tag_writer.submit(f"{before.repository}:later", before.by_digest)
    finally:
        containerd.start()

    # Same shim, same containerd client: the next calls succeed.
    shim.pull(during.tagged)
    assert shim.manifest_digest_of(during.tagged) == during.digest
    assert shim.manifest_digest_of(f"{before.repository}:later") == before.digest
    shim.await_cri_tag(before.tagged)
    assert before.by_digest in shim.status(before.tagged).image.repo_digests


def test_stopping_the_shim_leaves_no_threads_behind(
    stack: Stack, push_image: PushImage, tmp_path: Path, containerd: Containerd, registry: Registry
) -> None:
    image = signed_image(stack, push_image, "threads")
    server = stack.notary_server
    text = trustd_config_text(
        state_dir=tmp_path / "state", notary=[(registry.host, server.url, server.ca_file)]
    )
    before = set(threading.enumerate())
    with running_shim(text, containerd.endpoint, tmp_path / "state") as shim:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: shim.status(image.tagged), range(8)))
        shim.pull(image.tagged)
        shim.cri.ListImages(api_pb2.ListImagesRequest(), timeout=TIMEOUT)
    leaked = [
        thread for thread in set(threading.enumerate()) - before if thread.name.startswith("cri")
    ]
    assert leaked == []


# -- credentials -----------------------------------------------------------------------------------


def test_credentials_from_auth_config() -> None:
    encoded = base64.b64encode(b"alice:s3cr:et").decode()
    assert credentials_from(api_pb2.AuthConfig(auth=encoded)) == Credentials("alice", "s3cr:et")
    assert credentials_from(api_pb2.AuthConfig(username="bob", password="pw")) == Credentials(
        "bob", "pw"
    )
    # Explicit username and password win over the encoded pair, as in docker's AuthConfig.
    both = api_pb2.AuthConfig(username="bob", password="pw", auth=encoded)
    assert credentials_from(both) == Credentials("bob", "pw")
    assert credentials_from(api_pb2.AuthConfig(identity_token="tok")) == Credentials(
        identity_token="tok"
    )
    assert credentials_from(api_pb2.AuthConfig(registry_token="rt")) == Credentials(
        registry_token="rt"
    )
    assert credentials_from(api_pb2.AuthConfig()) is None
    assert credentials_from(api_pb2.AuthConfig(auth="%%% not base64")) is None


def test_pull_credentials_reach_the_policy(stack: Stack, push_image: PushImage, shim: Shim) -> None:
    image = signed_image(stack, push_image, "creds")
    auth = api_pb2.AuthConfig(auth=base64.b64encode(b"alice:secret").decode())

    shim.pull(image.tagged, auth=auth)

    assert Credentials("alice", "secret") in shim.admission.credentials
    # ImageStatus carries no credentials in the CRI.
    shim.status(image.tagged)
    assert shim.admission.credentials[-1] is None
