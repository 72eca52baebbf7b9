"""The namespace-restricted install for real: the operator and an agent under the overlay's Roles serve one
namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess
from tests.envtest import REPO, ControlPlane, kubectl_binary, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = pytest.mark.envtest

OVERLAY = REPO / "manifests" / "overlays" / "namespace-restricted"
OVERLAY_NAMESPACE = "inference"


def overlay_rbac(namespace: str, program: str, account: str) -> list[dict[str, Any]]:
    """The overlay's RBAC for ``program`` (gpupower-operator or gpupower-agent), moved to ``namespace`` and
    given to ServiceAccount ``account``.

    The account has its own name so that no cluster-wide binding of another test grants it anything.
    """
    binary = kubectl_binary()
    assert binary is not None
    rendered = subprocess.run(
        [binary, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    documents = []
    for doc in yaml.safe_load_all(rendered):
        if not doc or program not in doc["metadata"]["name"]:
            continue
        if doc["kind"] not in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"}:
            continue
        doc["metadata"]["name"] = doc["metadata"]["name"].replace(program, account)
        if doc["metadata"].get("namespace") == OVERLAY_NAMESPACE:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            doc["roleRef"]["name"] = doc["roleRef"]["name"].replace(program, account)
            for subject in doc["subjects"]:
                subject["name"] = account
        documents.append(doc)
    assert {d["kind"] for d in documents} >= {"Role", "RoleBinding", "ServiceAccount"}
    assert not any(
        d["kind"] == "ClusterRole" and any("pods" in r["resources"] for r in d["rules"]) for d in documents
    ), "the overlay still grants pods cluster-wide"
    return documents


def budget(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "totalWatts": 1200,
            "safeDefaultWatts": 200,
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {
                        "points": [{"watts": 200, "throughput": 10}, {"watts": 400, "throughput": 16}]
                    },
                    "demand": 30,
                }
            ],
        },
    }


@pytest.fixture
def restricted(
    crd_installed: ControlPlane, requires_controllers: ControlPlane, tmp_path: Path
) -> Iterator[tuple[ControlPlane, str, str, OperatorProcess, dict[str, str]]]:
    cp = crd_installed
    watched, other = unique_name("only"), unique_name("other")
    for name in (watched, other):
        cp.kubectl("create", "namespace", name)
    cp.apply(yaml.safe_load((REPO / "manifests" / "base" / "namespace.yaml").read_text()))
    account = unique_name("gpupower-operator-ns")
    agent_account = unique_name("gpupower-agent-ns")
    rbac = overlay_rbac(watched, "gpupower-operator", account) + overlay_rbac(
        watched, "gpupower-agent", agent_account
    )
    cp.apply(rbac)

    def agent_kubeconfig(node: str, directory: Path) -> Path:
        pod = cp.daemon_pod("gpupower-system", f"{agent_account}-{node}", agent_account, node)
        return cp.service_account_kubeconfig("gpupower-system", agent_account, directory, bound_pod=pod)

    fleet = SimulatedFleet(
        cp,
        tmp_path / "fleet",
        [unique_name("gpu-node")],
        agent_args=["--namespace", watched],
        kubeconfig_for=agent_kubeconfig,
    )
    kubeconfig = cp.service_account_kubeconfig("gpupower-system", account, tmp_path)
    operator = OperatorProcess(
        kubeconfig, tmp_path / "operator.log", resync_seconds=2.0, extra_args=("--namespace", watched)
    )
    try:
        fleet.start()
        operator.start()
        yield cp, watched, other, operator, fleet.node_selector
    finally:
        # The budgets go while their operator still runs, so its finalizer is done before the
        # namespaces are deleted (a finalizer left behind would hold a namespace in Terminating).
        for name in (watched, other):
            cp.kubectl("delete", "gpb", "--all", "-n", name, "--timeout=30s", check=False)
        operator.stop()
        fleet.stop()
        print(f"operator log:\n{operator.log_tail(30)}\n{fleet.logs()}")
        for name in (watched, other):
            cp.kubectl("delete", "deployment", "--all", "-n", name, "--wait=false", check=False)
            cp.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False)
            cp.kubectl("delete", "namespace", name, "--wait=false", check=False)
        for doc in rbac:
            if doc["kind"].startswith("Cluster"):
                cp.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)


def test_the_operator_under_the_overlay_role_plans_its_namespace_and_nothing_else(
    restricted: tuple[ControlPlane, str, str, OperatorProcess, dict[str, str]],
) -> None:
    cp, watched, other, operator, on_fleet = restricted
    for namespace in (watched, other):
        cp.apply([gpu_deployment("decode", namespace, 1, node_selector=on_fleet), budget(namespace)])

    def planned() -> dict[str, Any] | None:
        status = cp.get_json("gpb", "llm", "-n", watched).get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        return status if ready and ready["status"] == "True" else None

    status = wait_for(planned, timeout=60, interval=0.3, what=f"budget in {watched} Ready")
    decode = status["targets"][0]
    pods = cp.get_json("pods", "-n", watched, "-l", "app=decode")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == decode["plannedReplicas"] == decode["podsEnforced"]
    for pod in live:
        annotations = pod["metadata"].get("annotations") or {}
        assert annotations.get("gpupower.dev/power-limit-watts") == str(decode["capWatts"])
        assert annotations.get("gpupower.dev/budget") == "llm"
        # The agent under the overlay's Role confirmed the cap on the pod itself.
        capped = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        assert capped.get("gpupower.dev/PowerCapped") == "True"
    # Outside its namespace it reads and writes nothing, and was never refused (no 403 in its log).
    assert "status" not in cp.get_json("gpb", "llm", "-n", other)
    assert "403" not in operator.log_tail(400)
