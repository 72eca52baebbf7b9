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
from typing import Any

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
from tests.e2e.operator_harness import OperatorProcess
from tests.envtest import REPO, ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

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


def _node(control_plane: ControlPlane, workdir: Path, model: str) -> GpuNode:
    name = unique_name(f"{model}-node")
    pool = unique_name(model)
    control_plane.add_node(name, gpus=GPUS_PER_NODE, labels={POOL_LABEL: pool})
    server = FakePodResourcesServer(workdir / "kubelet.sock").start()
    agent = AgentProcess(
        node_name=name,
        kubeconfig=agent_kubeconfig(control_plane, workdir, name),
        workdir=workdir,
        socket_path=server.socket_path,
        gpus=GPUS_PER_NODE,
        model=model,
        safe_default_watts=150,
    )
    return GpuNode(name, pool, agent.start(), server)


@pytest.fixture(scope="module")
def fleet(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nodes: list[GpuNode] = []
    try:
        for model in ("a100-pcie", "h100-sxm"):
            nodes.append(_node(crd_installed, tmp_path_factory.mktemp(model), model))
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


# ---------------------------------------------------------------------------
# The operator plans within them


@pytest.fixture(scope="module")
def operator(
    fleet: Fleet, crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    if not crd_installed.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    crd_installed.kubectl("apply", "-f", str(REPO / "manifests" / "operator" / "rbac.yaml"))
    directory = tmp_path_factory.mktemp("inventory-operator")
    kubeconfig = crd_installed.service_account_kubeconfig("gpupower-system", "gpupower-operator", directory)
    # A long resync: every re-plan below must come from a watch event (pods, budgets, node labels).
    process = OperatorProcess(kubeconfig, directory / "operator.log", resync_seconds=60.0).start()
    yield process
    process.stop()
    print(f"operator log: {process.log_path}\n{process.log_tail(40)}")


@pytest.fixture
def ns(crd_installed: ControlPlane, namespace: str, fleet: Fleet) -> Iterator[str]:
    yield namespace
    kubectl = crd_installed.kubectl
    kubectl("delete", "gpb", "--all", "-n", namespace, "--timeout=30s", check=False)
    kubectl("delete", "deployment", "--all", "-n", namespace, "--wait=false", check=False)
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)
    for node in (fleet.a100, fleet.h100):
        node.server.set_allocations({})


def _budget(
    namespace: str,
    replicas: int,
    cap_watts: dict[str, int] | None,
    points: list[tuple[int, float]],
    demand: float,
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "name": "decode",
        "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "decode"},
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "profile": {"points": [{"watts": w, "throughput": t} for w, t in points]},
        "demand": demand,
    }
    if cap_watts is not None:
        target["capWatts"] = cap_watts
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {"totalWatts": 2000, "mode": "Enforce", "safeDefaultWatts": 150, "targets": [target]},
    }


def _status(control_plane: ControlPlane, namespace: str) -> dict[str, Any]:
    return dict(control_plane.get_json("gpb", "llm", "-n", namespace).get("status") or {})


def _run_on(control_plane: ControlPlane, namespace: str, node: GpuNode, replicas: int) -> list[str]:
    """Wait until the scheduler bound the replicas to ``node``, then hand each its GPU as a kubelet would."""
    wait_for(
        lambda: (
            len(
                [
                    p
                    for p in control_plane.get_json("pods", "-n", namespace, "-l", "app=decode")["items"]
                    if p["spec"].get("nodeName") == node.name
                ]
            )
            == replicas
        ),
        timeout=30,
        what=f"{replicas} pod(s) bound to {node.name}",
    )
    return _allocate_bound_pods(control_plane, namespace, node, "decode")


def _applied_watts(node: GpuNode, uuids: list[str], expected_watts: float) -> int:
    def total() -> int | None:
        limits = node.agent.limits()
        watts = sum(limits[uuid] for uuid in uuids)
        return watts if watts == expected_watts else None

    return int(
        wait_for(
            total, timeout=20, what=f"GPUs holding {expected_watts} W in all\n{node.agent.log()[-3000:]}"
        )
    )


def test_capwatts_beyond_what_a100s_accept_is_planned_within_150_to_250_and_applied_as_planned(
    crd_installed: ControlPlane, fleet: Fleet, operator: OperatorProcess, ns: str
) -> None:
    node = fleet.a100
    _wait_labels(crd_installed, node, ("150", "250", "250"))
    crd_installed.apply(gpu_deployment("decode", ns, 2, node_selector={POOL_LABEL: node.pool}))
    uuids = _run_on(crd_installed, ns, node, 2)
    # Little demand: without the node limits the plan would be 2 x 100 W, which A100s clamp up to 150 W.
    crd_installed.apply(_budget(ns, 2, {"min": 100, "max": 700}, [(100, 1.0), (700, 5.0)], demand=2))

    def planned() -> dict[str, Any] | None:
        status = _status(crd_installed, ns)
        targets = status.get("targets") or []
        return status if targets and targets[0].get("capRangeSource") == "CapWattsAndNodes" else None

    status = wait_for(planned, timeout=30, what=f"a plan within the nodes' range\n{operator.log_tail()}")
    target = status["targets"][0]
    assert (target["capRangeMinWatts"], target["capRangeMaxWatts"]) == (150, 250)
    assert 150 <= target["capWatts"] <= 250
    assert target["capWatts"] == 150  # the least power serving the demand that the GPUs can apply
    adjusted = next(c for c in status["conditions"] if c["type"] == "CapRangeAdjusted")
    assert adjusted["status"] == "True" and adjusted["reason"] == "NarrowedByNodes"
    assert node.name in adjusted["message"] and "100-700 W" in adjusted["message"]
    assert "150-250 W" in adjusted["message"]

    applied = _applied_watts(node, uuids, status["plannedWatts"])
    assert applied == status["plannedWatts"] == 2 * 150

    # The node's labels change (as after a GPU swap): the budget is re-planned at once, no resync needed.
    crd_installed.kubectl("label", "node", node.name, "--overwrite", f"{GPU_POWER_MIN_LABEL}=200")
    try:
        status = wait_for(
            lambda: (s := _status(crd_installed, ns))["targets"][0]["capRangeMinWatts"] == 200 and s,
            timeout=15,
            what=f"a re-plan after the node's labels changed\n{operator.log_tail()}",
        )
        assert status["targets"][0]["capWatts"] == 200
        assert _applied_watts(node, uuids, status["plannedWatts"]) == status["plannedWatts"] == 2 * 200
    finally:
        crd_installed.kubectl("label", "node", node.name, "--overwrite", f"{GPU_POWER_MIN_LABEL}=150")


def test_a_budget_without_capwatts_takes_its_range_from_the_h100_node(
    crd_installed: ControlPlane, fleet: Fleet, operator: OperatorProcess, ns: str
) -> None:
    node = fleet.h100
    _wait_labels(crd_installed, node, ("200", "700", "700"))
    crd_installed.apply(gpu_deployment("decode", ns, 1, node_selector={POOL_LABEL: node.pool}))
    uuids = _run_on(crd_installed, ns, node, 1)
    # The profile starts at 300 W; the H100 accepts 200 W, where the profile holds its first throughput.
    crd_installed.apply(_budget(ns, 1, None, [(300, 10.0), (600, 20.0)], demand=5))

    def planned() -> dict[str, Any] | None:
        status = _status(crd_installed, ns)
        targets = status.get("targets") or []
        return status if targets and targets[0].get("capRangeSource") == "Nodes" else None

    status = wait_for(planned, timeout=30, what=f"a plan within the node's range\n{operator.log_tail()}")
    target = status["targets"][0]
    assert (target["capRangeMinWatts"], target["capRangeMaxWatts"], target["capWatts"]) == (200, 700, 200)
    known = next(c for c in status["conditions"] if c["type"] == "NodeLimitsKnown")
    assert known["status"] == "True"
    assert _applied_watts(node, uuids, status["plannedWatts"]) == status["plannedWatts"] == 200
