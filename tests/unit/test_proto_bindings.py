"""The generated bindings are current and speak the same wire format as kubelet and containerd.

Expected names and field numbers were read from the upstream definitions: kubernetes cri-api
``pkg/apis/runtime/v1/api.proto`` and containerd ``api/services/images/v1/images.proto`` and
``api/types/descriptor.proto``. A renumbered field would still compile and round-trip against
itself, so only a comparison with upstream's numbers catches it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor

from cri_shim.gen.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from cri_shim.gen.containerd.types import descriptor_pb2
from cri_shim.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]


def field_numbers(message: type) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}


def test_generated_bindings_match_proto_sources() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_service_methods_and_paths() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert service.full_name == "runtime.v1.ImageService"
    methods = {method.name: method for method in service.methods}
    assert set(methods) == {
        "ListImages",
        "StreamImages",
        "ImageStatus",
        "PullImage",
        "RemoveImage",
        "ImageFsInfo",
    }
    assert methods["PullImage"].input_type.full_name == "runtime.v1.PullImageRequest"
    assert methods["PullImage"].output_type.full_name == "runtime.v1.PullImageResponse"
    assert methods["StreamImages"].server_streaming
    assert not any(m.server_streaming for name, m in methods.items() if name != "StreamImages")
    assert not any(m.client_streaming for m in methods.values())
    assert hasattr(api_pb2_grpc, "ImageServiceStub")


def test_runtime_service_is_the_pod_start_subset() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    assert service.full_name == "runtime.v1.RuntimeService"
    methods = {method.name: method for method in service.methods}
    assert set(methods) == {
        "Version",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "ListPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ListContainers",
        "ContainerStatus",
    }
    for name, method in methods.items():
        assert not method.client_streaming and not method.server_streaming, name
        assert method.input_type.full_name == f"runtime.v1.{name}Request"
        assert method.output_type.full_name == f"runtime.v1.{name}Response"
    assert hasattr(api_pb2_grpc, "RuntimeServiceStub")


def test_images_service_methods_and_paths() -> None:
    service = images_pb2.DESCRIPTOR.services_by_name["Images"]
    assert service.full_name == "containerd.services.images.v1.Images"
    assert [m.name for m in service.methods] == ["Get", "List", "Create", "Update", "Delete"]
    assert service.methods_by_name["Delete"].output_type.full_name == "google.protobuf.Empty"
    assert hasattr(images_pb2_grpc, "ImagesStub")


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        (api_pb2.DESCRIPTOR.services_by_name["ImageService"], "PullImage",
         "/runtime.v1.ImageService/PullImage"),
        (api_pb2.DESCRIPTOR.services_by_name["ImageService"], "ListImages",
         "/runtime.v1.ImageService/ListImages"),
        (images_pb2.DESCRIPTOR.services_by_name["Images"], "Create",
         "/containerd.services.images.v1.Images/Create"),
    ],
)  # fmt: skip
def test_wire_method_path(service: descriptor.ServiceDescriptor, method: str, path: str) -> None:
    assert f"/{service.full_name}/{service.methods_by_name[method].name}" == path


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (api_pb2.PullImageRequest, {"image": 1, "auth": 2, "sandbox_config": 3}),
        (api_pb2.PullImageResponse, {"image_ref": 1}),
        (api_pb2.ImageSpec, {"image": 1, "annotations": 2, "user_specified_image": 18,
                             "runtime_handler": 19, "image_ref": 20}),
        (api_pb2.AuthConfig, {"username": 1, "password": 2, "auth": 3, "server_address": 4,
                              "identity_token": 5, "registry_token": 6}),
        (api_pb2.Image, {"id": 1, "repo_tags": 2, "repo_digests": 3, "size": 4, "uid": 5,
                         "username": 6, "spec": 7, "pinned": 8}),
        (api_pb2.ImageStatusRequest, {"image": 1, "verbose": 2}),
        (api_pb2.ImageStatusResponse, {"image": 1, "info": 2}),
        (api_pb2.ListImagesRequest, {"filter": 1}),
        (api_pb2.ImageFsInfoResponse, {"image_filesystems": 1, "container_filesystems": 2}),
        (api_pb2.FilesystemUsage, {"timestamp": 1, "fs_id": 2, "used_bytes": 3,
                                   "inodes_used": 4}),
        (api_pb2.PodSandboxConfig, {"metadata": 1, "hostname": 2, "log_directory": 3,
                                    "dns_config": 4, "port_mappings": 5, "labels": 6,
                                    "annotations": 7, "linux": 8, "windows": 9}),
        (api_pb2.PodSandboxMetadata, {"name": 1, "uid": 2, "namespace": 3, "attempt": 4}),
        (api_pb2.LinuxSandboxSecurityContext, {
            "namespace_options": 1, "selinux_options": 2, "run_as_user": 3,
            "readonly_rootfs": 4, "supplemental_groups": 5, "privileged": 6,
            "seccomp_profile_path": 7, "run_as_group": 8, "seccomp": 9, "apparmor": 10,
            "supplemental_groups_policy": 11}),
        (api_pb2.NamespaceOption, {"network": 1, "pid": 2, "ipc": 3, "target_id": 4,
                                   "userns_options": 5}),
        (api_pb2.LinuxContainerResources, {
            "cpu_period": 1, "cpu_quota": 2, "cpu_shares": 3, "memory_limit_in_bytes": 4,
            "oom_score_adj": 5, "cpuset_cpus": 6, "cpuset_mems": 7, "hugepage_limits": 8,
            "unified": 9, "memory_swap_limit_in_bytes": 10}),
        (api_pb2.WindowsSandboxSecurityContext, {"run_as_username": 1, "credential_spec": 2,
                                                 "host_process": 3, "namespace_options": 4}),
        (api_pb2.VersionResponse, {"version": 1, "runtime_name": 2, "runtime_version": 3,
                                   "runtime_api_version": 4}),
        (api_pb2.RunPodSandboxRequest, {"config": 1, "runtime_handler": 2}),
        (api_pb2.RunPodSandboxResponse, {"pod_sandbox_id": 1}),
        (api_pb2.StopPodSandboxRequest, {"pod_sandbox_id": 1}),
        (api_pb2.RemovePodSandboxRequest, {"pod_sandbox_id": 1}),
        (api_pb2.PodSandboxStatusRequest, {"pod_sandbox_id": 1, "verbose": 2}),
        (api_pb2.PodSandboxStatus, {"id": 1, "metadata": 2, "state": 3, "created_at": 4,
                                    "network": 5, "linux": 6, "labels": 7, "annotations": 8,
                                    "runtime_handler": 9}),
        (api_pb2.PodSandboxStatusResponse, {"status": 1, "info": 2, "containers_statuses": 3,
                                            "timestamp": 4}),
        (api_pb2.PodSandboxNetworkStatus, {"ip": 1, "additional_ips": 2}),
        (api_pb2.Namespace, {"options": 2}),
        (api_pb2.PodSandboxFilter, {"id": 1, "state": 2, "label_selector": 3}),
        (api_pb2.PodSandbox, {"id": 1, "metadata": 2, "state": 3, "created_at": 4, "labels": 5,
                              "annotations": 6, "runtime_handler": 7}),
        (api_pb2.ListPodSandboxResponse, {"items": 1}),
        (api_pb2.Mount, {"container_path": 1, "host_path": 2, "readonly": 3,
                         "selinux_relabel": 4, "propagation": 5, "uidMappings": 6,
                         "gidMappings": 7, "recursive_read_only": 8, "image": 9,
                         "image_sub_path": 10}),
        (api_pb2.Capability, {"add_capabilities": 1, "drop_capabilities": 2,
                              "add_ambient_capabilities": 3}),
        (api_pb2.LinuxContainerSecurityContext, {
            "capabilities": 1, "privileged": 2, "namespace_options": 3, "selinux_options": 4,
            "run_as_user": 5, "run_as_username": 6, "readonly_rootfs": 7,
            "supplemental_groups": 8, "apparmor_profile": 9, "seccomp_profile_path": 10,
            "no_new_privs": 11, "run_as_group": 12, "masked_paths": 13, "readonly_paths": 14,
            "seccomp": 15, "apparmor": 16, "supplemental_groups_policy": 17}),
        (api_pb2.LinuxContainerConfig, {"resources": 1, "security_context": 2}),
        (api_pb2.ContainerMetadata, {"name": 1, "attempt": 2}),
        (api_pb2.ContainerConfig, {"metadata": 1, "image": 2, "command": 3, "args": 4,
                                   "working_dir": 5, "envs": 6, "mounts": 7, "devices": 8,
                                   "labels": 9, "annotations": 10, "log_path": 11, "stdin": 12,
                                   "stdin_once": 13, "tty": 14, "linux": 15}),
        (api_pb2.CreateContainerRequest, {"pod_sandbox_id": 1, "config": 2,
                                          "sandbox_config": 3}),
        (api_pb2.CreateContainerResponse, {"container_id": 1}),
        (api_pb2.StartContainerRequest, {"container_id": 1}),
        (api_pb2.StopContainerRequest, {"container_id": 1, "timeout": 2}),
        (api_pb2.RemoveContainerRequest, {"container_id": 1}),
        (api_pb2.ContainerFilter, {"id": 1, "state": 2, "pod_sandbox_id": 3,
                                   "label_selector": 4}),
        (api_pb2.Container, {"id": 1, "pod_sandbox_id": 2, "metadata": 3, "image": 4,
                             "image_ref": 5, "state": 6, "created_at": 7, "labels": 8,
                             "annotations": 9, "image_id": 10}),
        (api_pb2.ContainerStatusRequest, {"container_id": 1, "verbose": 2}),
        (api_pb2.ContainerStatus, {"id": 1, "metadata": 2, "state": 3, "created_at": 4,
                                   "started_at": 5, "finished_at": 6, "exit_code": 7,
                                   "image": 8, "image_ref": 9, "reason": 10, "message": 11,
                                   "labels": 12, "annotations": 13, "mounts": 14,
                                   "log_path": 15, "resources": 16, "image_id": 17,
                                   "user": 18}),
        (api_pb2.ContainerStatusResponse, {"status": 1, "info": 2}),
        (api_pb2.LinuxContainerUser, {"uid": 1, "gid": 2, "supplemental_groups": 3}),
        (images_pb2.Image, {"name": 1, "labels": 2, "target": 3, "created_at": 7,
                            "updated_at": 8}),
        (images_pb2.UpdateImageRequest, {"image": 1, "update_mask": 2, "source_date_epoch": 3}),
        (images_pb2.DeleteImageRequest, {"name": 1, "sync": 2, "target": 3}),
        (descriptor_pb2.Descriptor, {"media_type": 1, "digest": 2, "size": 3, "annotations": 5}),
    ],
)  # fmt: skip
def test_field_numbers_match_upstream(message: type, expected: dict[str, int]) -> None:
    assert field_numbers(message) == expected


def test_full_names_match_upstream_packages() -> None:
    assert api_pb2.PullImageRequest.DESCRIPTOR.full_name == "runtime.v1.PullImageRequest"
    assert descriptor_pb2.Descriptor.DESCRIPTOR.full_name == "containerd.types.Descriptor"
    target = images_pb2.Image.DESCRIPTOR.fields_by_name["target"]
    assert target.message_type.full_name == "containerd.types.Descriptor"


def test_enum_values_match_upstream() -> None:
    assert api_pb2.NamespaceMode.Value("POD") == 0
    assert api_pb2.NamespaceMode.Value("TARGET") == 3
    assert api_pb2.Protocol.Value("SCTP") == 2
    assert api_pb2.SupplementalGroupsPolicy.Value("Strict") == 1
    assert api_pb2.SecurityProfile.ProfileType.Value("Localhost") == 2
    assert api_pb2.PodSandboxState.Value("SANDBOX_NOTREADY") == 1
    assert api_pb2.ContainerState.Value("CONTAINER_EXITED") == 2
    assert api_pb2.ContainerState.Value("CONTAINER_UNKNOWN") == 3
    assert api_pb2.MountPropagation.Value("PROPAGATION_BIDIRECTIONAL") == 2


def test_known_wire_bytes_decode() -> None:
    # Hand-encoded: field 1 (ImageSpec){field 1 "a"}, field 2 (AuthConfig){field 1 "u"}.
    wire = b"\x0a\x03\x0a\x01a" + b"\x12\x03\x0a\x01u"
    request = api_pb2.PullImageRequest.FromString(wire)
    assert request.image.image == "a"
    assert request.auth.username == "u"
    assert request.SerializeToString() == wire


def test_unknown_fields_from_newer_kubelets_survive_a_round_trip() -> None:
    # Field 99 of ImageSpec does not exist here; the shim re-serialises what kubelet sent.
    wire = b"\x0a\x07" + b"\x0a\x01a" + b"\x9a\x06\x01z"
    request = api_pb2.PullImageRequest.FromString(wire)
    request.image.image = "b"
    assert b"\x9a\x06\x01z" in request.SerializeToString()


def test_secret_fields_carry_upstreams_debug_redact_option() -> None:
    # Python's text format does not honour the option (checked): never log AuthConfig.
    auth = api_pb2.AuthConfig
    assert auth.DESCRIPTOR.fields_by_name["password"].GetOptions().debug_redact
    assert auth.DESCRIPTOR.fields_by_name["registry_token"].GetOptions().debug_redact
    assert not auth.DESCRIPTOR.fields_by_name["username"].GetOptions().debug_redact
