"""Pod UIDs from /proc/<pid>/cgroup in every format the kubelet and runtimes produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupower_agent.cgroups import CgroupMapping, pod_uid_from_cgroup
from gpupower_agent.mapping import PodRef
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SYSTEMD_UID = UID.replace("-", "_")
CID = "4d9c1f0b8e7a6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c"
STATIC_UID = "6c8d4fdd1f7a2b3c4d5e6f708192a3b4"


@pytest.mark.parametrize(
    ("case", "content", "uid"),
    [
        # cgroup v2, systemd driver, each QoS class and runtime
        (
            "v2 systemd containerd burstable",
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (
            "v2 systemd containerd besteffort",
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (
            "v2 systemd containerd guaranteed",
            f"0::/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (
            "v2 systemd cri-o",
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice/crio-{CID}.scope\n",
            UID,
        ),
        (
            "v2 systemd docker",
            f"0::/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/docker-{CID}.scope\n",
            UID,
        ),
        # cgroup v2, cgroupfs driver
        ("v2 cgroupfs burstable", f"0::/kubepods/burstable/pod{UID}/{CID}\n", UID),
        ("v2 cgroupfs besteffort", f"0::/kubepods/besteffort/pod{UID}/{CID}\n", UID),
        ("v2 cgroupfs guaranteed", f"0::/kubepods/pod{UID}/{CID}\n", UID),
        # cgroup v1, several controllers
        (
            "v1 cgroupfs docker",
            f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
            "1:name=systemd:/\n",
            UID,
        ),
        (
            "v1 systemd containerd",
            f"12:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice/"
            f"cri-containerd-{CID}.scope\n11:devices:/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (
            "v1 systemd cri-o guaranteed",
            f"8:pids:/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/crio-{CID}.scope\n",
            UID,
        ),
        # containerd's systemd cgroup path form, nested under a prefix (kind, rootless)
        (
            "containerd slice:runtime:id",
            f"0::/system.slice/containerd.service/kubepods-burstable-pod{SYSTEMD_UID}.slice:cri-containerd:{CID}\n",
            UID,
        ),
        (
            "nested kind node",
            f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
            f"kubelet-kubepods-burstable-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (
            "static pod uid without dashes",
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/crio-{CID}.scope\n",
            STATIC_UID,
        ),
        ("uppercase hex is normalised", f"0::/kubepods/pod{UID.upper()}/{CID}\n", UID),
        # not a pod
        ("host process", "0::/system.slice/sshd.service\n", None),
        ("user session", "0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("pod slice without a uid", "0::/kubepods.slice/kubepods-burstable.slice\n", None),
        ("empty", "", None),
        ("garbage", "not a cgroup file\n\x00\x01", None),
    ],
)
def test_pod_uid_from_cgroup(case: str, content: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup(content) == uid, case


async def test_cgroup_mapping_maps_nvml_processes_to_pods(tmp_path: Path) -> None:
    for pid, content in {
        101: f"0::/kubepods/burstable/pod{UID}/{CID}\n",
        102: f"0::/kubepods/burstable/pod{UID}/{CID}\n",  # a second process of the same pod
        103: "0::/system.slice/nvidia-persistenced.service\n",
    }.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(content)
    nvml = FakeNvml("node", FakeGpuSpec(2, GPU_MODELS["a100-pcie"]))
    gpu0, gpu1 = (gpu.uuid for gpu in nvml.gpus())
    nvml.set_running_pids(gpu0, [101, 102, 103, 999])  # 999 exited meanwhile
    assignments = await CgroupMapping(nvml, tmp_path).assignments()
    assert assignments == {gpu0: [PodRef(uid=UID)], gpu1: []}
