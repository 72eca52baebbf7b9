"""The agent's writes are held to its own node by the shipped ValidatingAdmissionPolicy (real API server).

The agent's token is bound to its pod on one node, as the token projected into a
DaemonSet pod is; with it, patches of its own Node's gpupower.dev/ labels and of
the PowerCapped condition of pods on its node pass, and everything else the
agent's RBAC would allow is refused with the policy's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupower_agent.apiclient import (
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    ApiClient,
    HttpError,
    kubeconfig_credentials,
)
from gpupower_api.contract import POWER_CAPPED_CONDITION
from tests.e2e.agentkit import (
    AGENT_ACCOUNT,
    AGENT_NAMESPACE,
    agent_kubeconfig,
    install_agent_rbac,
    pod_manifest,
)
from tests.envtest import ControlPlane, unique_name, wait_for

pytestmark = pytest.mark.envtest


def _patch(kubeconfig: Path, path: str, body: dict[str, object], content_type: str) -> tuple[int, str]:
    """PATCH as the agent does (its own client, no GET first); (0, "") or (HTTP status, message)."""
    client = ApiClient(kubeconfig_credentials(kubeconfig))
    try:
        asyncio.run(client.merge_patch(path, body, 10.0, content_type))
    except HttpError as error:
        return error.status, str(json.loads(error.body).get("message", error.body))
    return 0, ""


def _condition(status: str = "True", kind: str = POWER_CAPPED_CONDITION) -> str:
    return json.dumps(
        {"status": {"conditions": [{"type": kind, "status": status, "reason": "Capped", "message": "test"}]}}
    )


@pytest.fixture
def two_nodes(crd_installed: ControlPlane, namespace: str) -> Iterator[tuple[str, str]]:
    nodes = (unique_name("own-node"), unique_name("other-node"))
    for node in nodes:
        crd_installed.add_node(node, gpus=0)
    yield nodes
    crd_installed.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False
    )
    crd_installed.kubectl("delete", "node", *nodes, "--wait=false", check=False)


def test_the_agent_may_write_only_on_its_own_node(
    crd_installed: ControlPlane, namespace: str, two_nodes: tuple[str, str], tmp_path: Path
) -> None:
    cp = crd_installed
    own, other = two_nodes
    kubeconfig = agent_kubeconfig(cp, tmp_path, own)
    cp.apply(pod_manifest("on-own", namespace, own))
    cp.apply(pod_manifest("on-other", namespace, other))

    def patch_node(node: str, patch: dict[str, object], config: Path = kubeconfig) -> tuple[int, str]:
        return _patch(config, f"/api/v1/nodes/{node}", patch, MERGE_PATCH)

    def patch_pod_status(pod: str, patch: str, config: Path = kubeconfig) -> tuple[int, str]:
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/status"
        return _patch(config, path, json.loads(patch), STRATEGIC_MERGE_PATCH)

    other_label = {"metadata": {"labels": {"gpupower.dev/gpu-power-max-watts": "700"}}}
    # A new policy takes effect within a few seconds: wait until the other node's patch is refused.
    code, error = wait_for(
        lambda: (result := patch_node(other, other_label))[0] != 0 and result,
        timeout=30,
        interval=0.5,
        what="the admission policy to refuse a patch of another node",
    )
    assert f"gpupower-agent on node {own} may change only its own Node, not {other}" in error, error

    # Allowed: its own Node's inventory labels and annotations, and the condition of its node's pods.
    assert patch_node(own, other_label) == (0, "")
    assert (
        patch_node(own, {"metadata": {"annotations": {"gpupower.dev/gpu-power-constraints": "[]"}}})[0] == 0
    )
    result = patch_pod_status("on-own", _condition())
    assert result == (0, ""), result[1]
    stored = cp.get_json("pod", "on-own", "-n", namespace)["status"]["conditions"]
    assert [c["type"] for c in stored] == [POWER_CAPPED_CONDITION]

    # Refused, with the policy's message: other pods, other keys, other fields.
    code, error = patch_pod_status("on-other", _condition())
    assert code != 0 and f"may change only pods bound to its node; pod on-other is on {other}" in error, error
    code, error = patch_node(own, {"metadata": {"labels": {"team": "evil"}}})
    assert code != 0 and "only the gpupower.dev/ labels and annotations of its Node" in error, error
    code, error = patch_node(own, {"spec": {"unschedulable": True}})
    assert code != 0 and "only the gpupower.dev/ labels and annotations of its Node" in error, error
    code, error = patch_pod_status("on-own", _condition(kind="Ready"))
    assert code != 0 and "only the gpupower.dev/PowerCapped condition of a pod" in error, error
    code, error = patch_pod_status("on-own", json.dumps({"status": {"phase": "Failed"}}))
    assert code != 0 and "only the gpupower.dev/PowerCapped condition of a pod" in error, error

    # A token not bound to a pod names no node: every write is refused.
    unbound = cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_ACCOUNT, tmp_path)
    code, error = patch_node(own, other_label, config=unbound)
    assert code != 0 and "the token names no node" in error, error
    code, error = patch_pod_status("on-own", _condition("False"), config=unbound)
    assert code != 0 and "the token names no node" in error, error


def test_the_policy_leaves_everyone_else_alone(
    crd_installed: ControlPlane, namespace: str, two_nodes: tuple[str, str]
) -> None:
    install_agent_rbac(crd_installed)
    own, _ = two_nodes
    crd_installed.apply(pod_manifest("someone", namespace, own))
    # The admin (and the kubelet, the scheduler, ...) are not the agent: the policy does not match them.
    crd_installed.kubectl(
        "patch", "node", own, "--type", "merge", "-p", '{"metadata":{"labels":{"team":"a"}}}'
    )
    crd_installed.kubectl(
        "patch", "pod", "someone", "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", _condition(kind="Ready"),
    )  # fmt: skip
