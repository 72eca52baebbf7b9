"""The namespace-restricted install for real: the operator under the overlay's Role plans one namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.operator_harness import OperatorProcess
from tests.envtest import REPO, ControlPlane, kubectl_binary, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = pytest.mark.envtest

OVERLAY = REPO / "manifests" / "overlays" / "namespace-restricted"
OVERLAY_NAMESPACE = "inference"


def overlay_operator_rbac(namespace: str, account: str) -> list[dict[str, Any]]:
    """The overlay's RBAC for the operator, moved to ``namespace`` and given to ServiceAccount ``account``.

    The account has its own name so that no cluster-wide binding of another test grants it anything.
    """
    binary = kubectl_binary()
    assert binary is not None
    rendered = subprocess.run(
        [binary, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    documents = []
    for doc in yaml.safe_load_all(rendered):
        if not doc or "gpupower-operator" not in doc["metadata"]["name"]:
            continue
        if doc["kind"] not in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"}:
            continue
        doc["metadata"]["name"] = doc["metadata"]["name"].replace("gpupower-operator", account)
        if doc["metadata"].get("namespace") == OVERLAY_NAMESPACE:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            doc["roleRef"]["name"] = doc["roleRef"]["name"].replace("gpupower-operator", account)
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
) -> Iterator[tuple[ControlPlane, str, str, OperatorProcess]]:
    cp = crd_installed
    watched, other = unique_name("only"), unique_name("other")
    for name in (watched, other):
        cp.kubectl("create", "namespace", name)
    cp.apply(yaml.safe_load((REPO / "manifests" / "base" / "namespace.yaml").read_text()))
    account = unique_name("gpupower-operator-ns")
    rbac = overlay_operator_rbac(watched, account)
    cp.apply(rbac)
    kubeconfig = cp.service_account_kubeconfig("gpupower-system", account, tmp_path)
    operator = OperatorProcess(
        kubeconfig, tmp_path / "operator.log", resync_seconds=2.0, extra_args=("--namespace", watched)
    )
    try:
        operator.start()
        yield cp, watched, other, operator
    finally:
        # The budgets go while their operator still runs, so its finalizer is done before the
        # namespaces are deleted (a finalizer left behind would hold a namespace in Terminating).
        for name in (watched, other):
            cp.kubectl("delete", "gpb", "--all", "-n", name, "--timeout=30s", check=False)
        operator.stop()
        print(f"operator log:\n{operator.log_tail(30)}")
        for name in (watched, other):
            cp.kubectl("delete", "deployment", "--all", "-n", name, "--wait=false", check=False)
            cp.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False)
            cp.kubectl("delete", "namespace", name, "--wait=false", check=False)
        for doc in rbac:
            if doc["kind"].startswith("Cluster"):
                cp.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], check=False)


def test_the_operator_under_the_overlay_role_plans_its_namespace_and_nothing_else(
    restricted: tuple[ControlPlane, str, str, OperatorProcess],
) -> None:
    cp, watched, other, operator = restricted
    for namespace in (watched, other):
        cp.apply([gpu_deployment("decode", namespace, 1), budget(namespace)])

    def planned() -> dict[str, Any] | None:
        status = cp.get_json("gpb", "llm", "-n", watched).get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        return status if ready and ready["status"] == "True" else None

    status = wait_for(planned, timeout=60, interval=0.3, what=f"budget in {watched} Ready")
    decode = status["targets"][0]
    pods = cp.get_json("pods", "-n", watched, "-l", "app=decode")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == decode["plannedReplicas"]
    for pod in live:
        annotations = pod["metadata"].get("annotations") or {}
        assert annotations.get("gpupower.dev/power-limit-watts") == str(decode["capWatts"])
        assert annotations.get("gpupower.dev/budget") == "llm"
    # Outside its namespace it reads and writes nothing, and was never refused (no 403 in its log).
    assert "status" not in cp.get_json("gpb", "llm", "-n", other)
    assert "403" not in operator.log_tail(400)
