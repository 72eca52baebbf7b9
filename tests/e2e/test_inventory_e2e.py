"""The node GPU power inventory end to end on the real control plane.

Two simulated GPU nodes, one with fake A100 PCIe GPUs (150-250 W) and one with
fake H100 SXM GPUs (200-700 W), each with the real agent process under its own
ServiceAccount's RBAC: the agents publish their nodes' limits as labels; the
real operator plans each target within the limits of the nodes its pods run on,
and the caps the fake GPUs end up with add up to the planned watts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpupower_agent.cluster import PodKey
from gpupower_agent.podresources import FakePodResourcesServer
from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_DEFAULT_LABEL,
    GPU_POWER_MAX_LABEL,
    GPU_POWER_MIN_LABEL,
)
from tests.e2e.agentkit import AgentProcess, agent_kubeconfig, wait_seconds
from tests.envtest import ControlPlane, unique_name, wait_for

pytestmark = pytest.mark.envtest

GPUS_PER_NODE = 4
POOL_LABEL = "pool.gpupower.dev/test"


@dataclass
class GpuNode:
    name: str
    pool: str
    agent: AgentProcess
    server: FakePodResourcesServer


@dataclass
class Fleet:
    a100: GpuNode
    h100: GpuNode


def _node(control_plane: ControlPlane, kubeconfig: Path, workdir: Path, model: str) -> GpuNode:
    name = unique_name(f"{model}-node")
    pool = unique_name(model)
    control_plane.add_node(name, gpus=GPUS_PER_NODE, labels={POOL_LABEL: pool})
    server = FakePodResourcesServer(workdir / "kubelet.sock").start()
    agent = AgentProcess(
        node_name=name,
        kubeconfig=kubeconfig,
        workdir=workdir,
        socket_path=server.socket_path,
        gpus=GPUS_PER_NODE,
        model=model,
        safe_default_watts=150,
    )
    return GpuNode(name, pool, agent.start(), server)


@pytest.fixture(scope="module")
def fleet(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    kubeconfig = agent_kubeconfig(crd_installed, tmp_path_factory.mktemp("inventory-sa"))
    nodes: list[GpuNode] = []
    try:
        for model in ("a100-pcie", "h100-sxm"):
            nodes.append(_node(crd_installed, kubeconfig, tmp_path_factory.mktemp(model), model))
        yield Fleet(*nodes)
    finally:
        for node in nodes:
            if node.agent.running():
                node.agent.stop()
            node.server.stop()
            # Labelled nodes must not attract other modules' pods (the scheduler would bind them here).
            crd_installed.kubectl("delete", "node", node.name, "--wait=false", check=False)


def _labels(control_plane: ControlPlane, node: str) -> dict[str, str]:
    return dict(control_plane.get_json("node", node)["metadata"].get("labels") or {})


def _wait_labels(
    control_plane: ControlPlane, node: GpuNode, expected: tuple[str, str, str]
) -> dict[str, str]:
    keys = (GPU_POWER_MIN_LABEL, GPU_POWER_MAX_LABEL, GPU_POWER_DEFAULT_LABEL)
    return wait_for(
        lambda: (
            (labels := _labels(control_plane, node.name))
            and tuple(labels.get(k) for k in keys) == expected
            and labels
        ),
        timeout=20,
        what=f"{node.name} labelled {expected}\n{node.agent.log()[-3000:]}",
    )


def _publications(node: GpuNode) -> int:
    return node.agent.logs_all_runs().count("event=node_inventory_published")


# ---------------------------------------------------------------------------
# The agents publish


def test_each_agent_labels_its_own_node_with_its_gpus_limits(
    crd_installed: ControlPlane, fleet: Fleet
) -> None:
    _wait_labels(crd_installed, fleet.a100, ("150", "250", "250"))
    _wait_labels(crd_installed, fleet.h100, ("200", "700", "700"))
    node = crd_installed.get_json("node", fleet.a100.name)
    detail = json.loads(node["metadata"]["annotations"][GPU_POWER_ANNOTATION])
    assert [gpu["index"] for gpu in detail] == list(range(GPUS_PER_NODE))
    assert {(gpu["product"], gpu["minWatts"], gpu["maxWatts"], gpu["defaultWatts"]) for gpu in detail} == {
        ("a100-pcie", 150, 250, 250)
    }
    assert detail[0]["uuid"] == fleet.a100.agent.uuid(0)

    # What an administrator types.
    shown = crd_installed.kubectl("get", "nodes", "-L", GPU_POWER_MAX_LABEL, "-L", GPU_POWER_MIN_LABEL).stdout
    rows = {line.split()[0]: line.split() for line in shown.splitlines()[1:]}
    assert rows[fleet.a100.name][-2:] == ["250", "150"]
    assert rows[fleet.h100.name][-2:] == ["700", "200"]


def test_a_replaced_gpu_changes_the_labels_once_and_a_steady_node_is_not_patched_again(
    crd_installed: ControlPlane, fleet: Fleet
) -> None:
    node = fleet.h100
    _wait_labels(crd_installed, node, ("200", "700", "700"))
    before = _publications(node)
    node.agent.edit_gpu(3, model="a100-pcie")  # an A100 PCIe in slot 3: the node now takes 200-250 W
    _wait_labels(crd_installed, node, ("200", "250", "250"))
    detail = json.loads(
        crd_installed.get_json("node", node.name)["metadata"]["annotations"][GPU_POWER_ANNOTATION]
    )
    assert detail[3]["product"] == "a100-pcie"
    node.agent.edit_gpu(3, model="h100-sxm")
    _wait_labels(crd_installed, node, ("200", "700", "700"))
    wait_seconds(6)  # more than one resync of the agent (5 s): nothing changed, nothing patched
    assert _publications(node) == before + 2


def test_labels_stay_when_the_agent_exits(crd_installed: ControlPlane, fleet: Fleet) -> None:
    node = fleet.a100
    _wait_labels(crd_installed, node, ("150", "250", "250"))
    node.agent.stop()
    labels = _labels(crd_installed, node.name)
    assert (labels[GPU_POWER_MIN_LABEL], labels[GPU_POWER_MAX_LABEL]) == ("150", "250")
    node.agent.start()
    wait_for(lambda: "event=node_inventory_current" in node.agent.log(), timeout=10, what="inventory checked")
    assert "event=node_inventory_published" not in node.agent.log()  # already right: no patch


def _allocate_bound_pods(control_plane: ControlPlane, namespace: str, node: GpuNode, app: str) -> list[str]:
    """Play the kubelet: give each pod of ``app`` bound to ``node`` its own GPU."""
    pods = control_plane.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    bound = sorted(p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == node.name)
    uuids = []
    for index, name in enumerate(bound):
        uuid = node.agent.uuid(index)
        node.server.allocate(PodKey(namespace, name), [uuid])
        uuids.append(uuid)
    return uuids
