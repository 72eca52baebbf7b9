"""Shared and partitioned GPUs, and what GPUs draw, end to end: the real agent process, the real API
server, the device ids a kubelet with the NVIDIA device plugin reports over a real gRPC PodResources
server, and GPUs that are either the fake NVML or the real NVML adapter on the stand-in library.

Time-sliced replicas and MIG devices of one GPU put several pods on that GPU: their caps meet in
the agent's multi-pod policy and the limit is set on the physical GPU. What each GPU holds is read
from the fake's or the stand-in's file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpupower_agent.cluster import PodKey
from gpupower_agent.podresources import FakePodResourcesServer
from tests.e2e.agentkit import (
    NVML_BACKENDS,
    AgentProcess,
    agent_on_new_node,
    annotate,
    bind_pod,
    cap_annotations,
    delete_pods,
    granting_budget,
    stop_node,
    wait_seconds,
)
from tests.envtest import ControlPlane, wait_for

pytestmark = pytest.mark.envtest

H100_DEFAULT_WATTS = 700
H100_IDLE_WATTS = 70
BUDGET_SAFE_DEFAULT_WATTS = 300
LABELS = {"app": "decode"}

Node = tuple[AgentProcess, FakePodResourcesServer]


@pytest.fixture(scope="module", params=NVML_BACKENDS)
def node(
    request: pytest.FixtureRequest, crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    workdir = tmp_path_factory.mktemp(f"shared-gpus-{request.param}")
    agent, server = agent_on_new_node(crd_installed, workdir, nvml=request.param)
    agent.start()
    yield agent, server
    stop_node(agent, server)


@pytest.fixture
def budget(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A budget in the test's namespace granting 600 W to ``app=decode``; its pods go afterwards."""
    yield granting_budget(control_plane, namespace, 600, BUDGET_SAFE_DEFAULT_WATTS)
    delete_pods(control_plane, namespace)


def _release_all(
    control_plane: ControlPlane, server: FakePodResourcesServer, namespace: str, *pods: str
) -> None:
    for pod in pods:
        control_plane.kubectl("delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force")
        server.release(PodKey(namespace, pod))


def test_time_sliced_replicas_of_one_gpu_put_their_pods_through_the_multi_pod_policy(
    control_plane: ControlPlane, node: Node, namespace: str, budget: str
) -> None:
    agent, server = node
    gpu = agent.uuid(0)
    bind_pod(
        control_plane, server, agent, namespace, "a", [f"{gpu}::0"], LABELS, cap_annotations(budget, 420)
    )
    bind_pod(
        control_plane,
        server,
        agent,
        namespace,
        "b",
        [f"{gpu}::1", f"{gpu}::5"],  # two replicas of the same GPU: still one pod on it
        LABELS,
        cap_annotations(budget, 420),
        resource="nvidia.com/gpu.shared",
    )
    agent.wait_limit(0, 420)
    annotate(control_plane, namespace, "b", **{"gpupower.dev/power-limit-watts": "480"})
    agent.wait_limit(0, BUDGET_SAFE_DEFAULT_WATTS)  # they disagree: the budget's safe default
    assert f"event=cap_conflict uuid={gpu} pods={namespace}/a=420,{namespace}/b=480" in agent.log()
    annotate(control_plane, namespace, "a", **{"gpupower.dev/power-limit-watts": "480"})
    agent.wait_limit(0, 480)
    _release_all(control_plane, server, namespace, "a", "b")
    agent.wait_limit(0, H100_DEFAULT_WATTS)


def test_mig_devices_of_one_gpu_cap_their_parent_with_both_mig_strategies(
    control_plane: ControlPlane, node: Node, namespace: str, budget: str
) -> None:
    agent, server = node
    agent.edit_gpu(1, migDevices=["3g.40gb", "3g.40gb"])  # an administrator partitions GPU 1
    single, mixed = agent.mig_uuid(1, 0), agent.mig_uuid(1, 1)
    bind_pod(control_plane, server, agent, namespace, "m0", [single], LABELS, cap_annotations(budget, 450))
    bind_pod(
        control_plane,
        server,
        agent,
        namespace,
        "m1",
        [f"{mixed}::0"],
        LABELS,
        cap_annotations(budget, 450),
        resource="nvidia.com/mig-3g.40gb",
    )
    agent.wait_limit(1, 450)
    annotate(control_plane, namespace, "m1", **{"gpupower.dev/power-limit-watts": "500"})
    agent.wait_limit(1, BUDGET_SAFE_DEFAULT_WATTS)
    assert agent.limit(2) == H100_DEFAULT_WATTS  # nothing else moved
    assert (
        agent.metric_value("gpupower_agent_gpu_pod_info", uuid=agent.uuid(1), namespace=namespace, pod="m1")
        == 1
    )
    _release_all(control_plane, server, namespace, "m0", "m1")
    agent.wait_limit(1, H100_DEFAULT_WATTS)


def test_a_device_on_no_gpu_of_the_node_is_logged_once_and_counted_until_it_is_placed(
    control_plane: ControlPlane, node: Node, namespace: str, budget: str
) -> None:
    agent, server = node
    resource = "nvidia.com/mig-1g.10gb"
    before = agent.metric_value("gpupower_agent_unmapped_devices_total", resource=resource) or 0
    mig = agent.mig_uuid(3, 0)  # GPU 3 is not partitioned (yet)
    bind_pod(
        control_plane,
        server,
        agent,
        namespace,
        "early",
        [mig],
        LABELS,
        cap_annotations(budget, 410),
        resource,
    )
    wait_for(
        lambda: agent.metric_value("gpupower_agent_unmapped_devices_total", resource=resource) == before + 1,
        timeout=10,
        what=f"the unplaced MIG device counted\n{agent.log()[-3000:]}",
    )
    wait_seconds(1.5)  # several passes: counted and said once
    assert agent.metric_value("gpupower_agent_unmapped_devices_total", resource=resource) == before + 1
    assert agent.log().count(f"event=device_unmapped pod={namespace}/early container=main") == 1
    assert agent.limit(3) == H100_DEFAULT_WATTS
    agent.edit_gpu(3, migDevices=["1g.10gb"])  # the MIG device appears: the pod is placed, its GPU capped
    agent.wait_limit(3, 410, timeout=15)
    _release_all(control_plane, server, namespace, "early")
    agent.wait_limit(3, H100_DEFAULT_WATTS)


def test_power_usage_follows_what_the_workload_would_draw_held_to_the_limit(
    control_plane: ControlPlane, node: Node, namespace: str, budget: str
) -> None:
    agent, server = node
    uuid = agent.uuid(4)

    def usage_is(watts: float) -> bool:
        return agent.metric_value("gpupower_agent_gpu_power_usage_watts", uuid=uuid, index="4") == watts

    wait_for(lambda: usage_is(H100_IDLE_WATTS), timeout=10, what="an idle GPU")
    agent.set_load(4, 655)
    wait_for(lambda: usage_is(655), timeout=15, what=f"the GPU drawing its load\n{agent.log()[-2000:]}")
    bind_pod(control_plane, server, agent, namespace, "busy", [uuid], LABELS, cap_annotations(budget, 400))
    agent.wait_limit(4, 400)
    wait_for(lambda: usage_is(400), timeout=15, what="the draw held to the cap")
    agent.set_load(4, None)
    wait_for(lambda: usage_is(H100_IDLE_WATTS), timeout=15, what="the GPU idle again")
    _release_all(control_plane, server, namespace, "busy")
    agent.wait_limit(4, H100_DEFAULT_WATTS)
