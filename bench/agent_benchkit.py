"""What the agent benchmarks share: a real control plane, the CRD and RBAC, a node with pods and budgets.

Not a benchmark itself; ``agent_latency.py`` and ``agent_rss.py`` import it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in ("api", "agent", ""):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from gpupower_agent.cluster import PodKey  # noqa: E402
from gpupower_agent.podresources import FakePodResourcesServer  # noqa: E402
from tests.e2e.agentkit import (  # noqa: E402
    AgentProcess,
    agent_kubeconfig,
    budget_manifest,
    cap_annotations,
    grant_status,
    pod_manifest,
)
from tests.envtest import ControlPlane, start_control_plane  # noqa: E402

NAMESPACE = "bench"
BUDGET = "llm"
SELECTOR = "app=llm"


@contextmanager
def control_plane_with_crd() -> Iterator[ControlPlane]:
    """A real control plane (the envtest kit) with the CRD applied, stopped on exit."""
    plane = start_control_plane()
    try:
        cp = next(plane)
    except StopIteration:
        raise SystemExit("the envtest control-plane kit is missing (see ../shared/envtest)") from None
    try:
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "gpupowerbudgets.yaml"))
        cp.wait_established("gpupowerbudgets.gpupower.dev")
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield cp
    finally:
        plane.close()


def budget_with_grant(cp: ControlPlane, name: str = BUDGET, grant_watts: int = 700) -> None:
    """A budget whose status grants pods labelled ``app=llm`` up to ``grant_watts`` (the operator's part)."""
    doc: dict[str, Any] = budget_manifest(name, NAMESPACE, 300)
    cp.apply(doc)
    cp.kubectl(
        "patch",
        "gpb",
        name,
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(grant_status({"decode": (SELECTOR, grant_watts)})),
    )


def start_node_agent(
    cp: ControlPlane, workdir: Path, node: str, extra_args: list[str] | None = None, nvml: str = "fake"
) -> AgentProcess:
    """The real agent for ``node`` under its own ServiceAccount, with H100s (not started).

    ``nvml="fake"``: the fake NVML; ``"stub"``: the real NVML adapter on the stand-in library.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cp.add_node(node, gpus=8)
    return AgentProcess(
        node_name=node,
        kubeconfig=agent_kubeconfig(cp, workdir, node),
        workdir=workdir,
        socket_path=workdir / "kubelet.sock",
        extra_args=extra_args or [],
        nvml=nvml,
    )


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` of the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def populate_node(
    cp: ControlPlane,
    server: FakePodResourcesServer,
    agent: AgentProcess,
    pods: int,
    gpu_pods: int,
    cap_watts: int,
) -> list[str]:
    """``pods`` pods on the agent's node; the first ``gpu_pods`` share its 8 GPUs and carry a cap."""
    names: list[str] = []
    docs: list[dict[str, Any]] = []
    for index in range(pods):
        name = f"{agent.node_name}-pod-{index}"
        if index < gpu_pods:
            server.allocate(PodKey(NAMESPACE, name), [agent.uuid(index % agent.gpus)])
            labels, annotations = {"app": "llm"}, cap_annotations(BUDGET, cap_watts)
        else:
            labels, annotations = {"app": "web"}, {}
        docs.append(
            pod_manifest(name, NAMESPACE, agent.node_name, labels, annotations, gpus=int(index < gpu_pods))
        )
        names.append(name)
    cp.apply(docs)
    return names
