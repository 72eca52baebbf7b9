"""A node in a power domain, end to end: the real agent process under its own ServiceAccount's RBAC,
the real API server with the GpuPowerDomain CRD, a simulated kubelet (bind, allocate the fake GPUs,
start the containers, each a step apart) and fake GPUs whose limits are read from their state file.

What the GPUs hold is checked on the hardware (the state file), never only on the API: idle GPUs sit
at the domain's parked limit, an unmanaged pod's GPU at its unmanagedGpuWatts, a budget's new replica
stays parked until its cap is annotated; the Node's gpupower.dev/gpu-power-held annotation carries the
sums and is not patched again while nothing changes; out of the domain, the defaults come back and the
annotation goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpupower_agent.cluster import PodKey
from gpupower_api.contract import (
    GPU_POWER_HELD_ANNOTATION,
    POWER_CAPPED_CONDITION,
    HeldGroup,
    HeldWatts,
    NodeHeld,
    held_watts_from_message,
    parse_held_report,
)
from tests.e2e.agentkit import (
    annotate,
    cap_annotations,
    delete_pods,
    granting_budget,
    install_agent_rbac,
    pod_manifest,
    wait_seconds,
)
from tests.e2e.fleetkit import SimulatedFleet, SimulatedNode
from tests.envtest import ControlPlane, unique_name, wait_for

pytestmark = pytest.mark.envtest

GPUS = 8
DEFAULT_WATTS = 700  # h100-sxm: 200-700 W, default 700
IDLE_WATTS = 250  # the domain parks idle GPUs here ...
UNMANAGED_WATTS = 300  # ... and caps unmanaged pods' GPUs here
GRANT_WATTS, SAFE_DEFAULT_WATTS = 500, 320  # a new replica would otherwise hold min(500, 320) = 320 W
CAP_WATTS = 450
RACK_LABEL = "topology.gpupower.dev/rack"


@dataclass
class Rig:
    control_plane: ControlPlane
    fleet: SimulatedFleet
    node: SimulatedNode
    rack: str


@pytest.fixture
def rig(crd_installed: ControlPlane, tmp_path: Path) -> Iterator[Rig]:
    rack = unique_name("rack")
    name = unique_name("gpu-node")
    fleet = SimulatedFleet(
        crd_installed, tmp_path / "fleet", [name], gpus=GPUS, labels={name: {RACK_LABEL: rack}}
    )
    try:
        fleet.start()
        yield Rig(crd_installed, fleet, fleet.nodes[name], rack)
    finally:
        fleet.stop()
        print(fleet.logs())


def domain(name: str, rack: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": name},
        "spec": {
            "totalWatts": 20_000,
            "nodeSelector": {"matchLabels": {RACK_LABEL: rack}},
            "idleGpuWatts": IDLE_WATTS,
            "unmanagedGpuWatts": UNMANAGED_WATTS,
        },
    }


def held_on_node(cp: ControlPlane, node: str) -> NodeHeld | None:
    annotations = cp.get_json("node", node)["metadata"].get("annotations") or {}
    text = annotations.get(GPU_POWER_HELD_ANNOTATION)
    return None if text is None else parse_held_report(text)


def power_capped(cp: ControlPlane, namespace: str, pod: str) -> dict[str, Any] | None:
    conditions = (cp.get_json("pod", pod, "-n", namespace).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == POWER_CAPPED_CONDITION), None)


def gpus_of(node: SimulatedNode, namespace: str, pod: str) -> tuple[str, ...]:
    allocation = node.simulator.allocations().get(PodKey(namespace, pod))
    return allocation.gpu_uuids if allocation else ()


@dataclass
class LimitWatch:
    """The highest limit each GPU held, read from the fake GPUs' state file every 20 ms."""

    node: SimulatedNode
    highest: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LimitWatch:
        def sample() -> None:
            while not self._stop.wait(0.02):
                for uuid, watts in self.node.agent.limits().items():
                    self.highest[uuid] = max(self.highest.get(uuid, 0.0), watts)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=5)


def test_a_node_in_a_domain_parks_idle_gpus_caps_unmanaged_ones_and_reports_what_they_hold(
    rig: Rig, namespace: str
) -> None:
    cp, node, agent = rig.control_plane, rig.node, rig.node.agent
    name = unique_name("rack-domain")
    cp.apply(domain(name, rig.rack))
    try:
        # Idle GPUs are parked, on the hardware.
        wait_for(
            lambda: set(agent.limits().values()) == {IDLE_WATTS} and len(agent.limits()) == GPUS,
            timeout=20,
            what=f"every GPU parked at {IDLE_WATTS} W\n{agent.log()[-3000:]}",
        )
        wait_for(
            lambda: held_on_node(cp, node.name) == NodeHeld(idle=HeldGroup(GPUS, GPUS * IDLE_WATTS)),
            timeout=10,
            what=f"the held report of {GPUS} parked GPUs",
        )
        assert agent.metric_value("gpupower_agent_parked_gpus") == GPUS
        assert agent.metric_value("gpupower_agent_domain_info", domain=name) == 1

        # A pod no budget manages: its GPU is capped at unmanagedGpuWatts, and the pod is told.
        cp.apply(pod_manifest("notebook", namespace, node.name, {"app": "notebook"}))
        wait_for(lambda: gpus_of(node, namespace, "notebook"), timeout=10, what="the notebook's GPU")
        (notebook_gpu,) = gpus_of(node, namespace, "notebook")
        wait_for(
            lambda: agent.limits().get(notebook_gpu) == UNMANAGED_WATTS, timeout=10, what="unmanaged cap"
        )
        told = wait_for(lambda: power_capped(cp, namespace, "notebook"), timeout=10, what="notebook told")
        assert (told["status"], told["reason"]) == ("False", "Unmanaged")
        assert held_watts_from_message(told["message"]) == HeldWatts(1, UNMANAGED_WATTS)

        # A budget's new replica lands on a parked GPU: it stays parked until its cap is annotated.
        budget = granting_budget(cp, namespace, GRANT_WATTS, SAFE_DEFAULT_WATTS)
        with LimitWatch(node) as watch:
            cp.apply(pod_manifest("decode-0", namespace, node.name, {"app": "decode"}))
            wait_for(lambda: gpus_of(node, namespace, "decode-0"), timeout=10, what="decode-0's GPU")
            (decode_gpu,) = gpus_of(node, namespace, "decode-0")
            awaiting = wait_for(
                lambda: (c := power_capped(cp, namespace, "decode-0")) and c["reason"] == "AwaitingCap" and c,
                timeout=10,
                what="decode-0 AwaitingCap",
            )
            # Let the simulated kubelet start its container: still parked.
            wait_for(
                lambda: cp.get_json("pod", "decode-0", "-n", namespace)["status"].get("phase") == "Running",
                timeout=10,
                what="decode-0 Running",
            )
            wait_seconds(1.0)
        assert held_watts_from_message(awaiting["message"]) == HeldWatts(1, IDLE_WATTS)
        assert watch.highest[decode_gpu] == IDLE_WATTS, "the new replica's GPU left its parked limit"
        assert agent.limits()[decode_gpu] == IDLE_WATTS
        annotate(cp, namespace, "decode-0", **cap_annotations(budget, CAP_WATTS))
        agent_gpu_index = next(i for i in range(GPUS) if agent.uuid(i) == decode_gpu)
        agent.wait_limit(agent_gpu_index, CAP_WATTS)

        # The Node says what the GPUs hold, summed from the hardware ...
        expected = NodeHeld(
            idle=HeldGroup(GPUS - 2, (GPUS - 2) * IDLE_WATTS),
            unmanaged=HeldGroup(1, UNMANAGED_WATTS),
            budgets={f"{namespace}/{budget}": HeldGroup(1, CAP_WATTS)},
        )
        wait_for(lambda: held_on_node(cp, node.name) == expected, timeout=10, what=f"held report {expected}")
        limits = agent.limits()
        assert sum(limits.values()) == expected.watts
        # ... and is not patched again while nothing changes (resyncs every 5 s included).
        patches = agent.metric_value("gpupower_agent_held_report_patches_total", result="set")
        version = cp.get_json("node", node.name)["metadata"]["resourceVersion"]
        wait_seconds(6.0)
        assert agent.metric_value("gpupower_agent_held_report_patches_total", result="set") == patches
        assert cp.get_json("node", node.name)["metadata"]["resourceVersion"] == version
        assert agent.metric_value("gpupower_agent_held_watts", kind="idle") == expected.idle.watts

        # Out of the domain: idle and unmanaged GPUs get their default back, the annotation goes.
        cp.kubectl("label", "node", node.name, f"{RACK_LABEL}-")
        others = [uuid for uuid in limits if uuid != decode_gpu]
        wait_for(
            lambda: all(agent.limits().get(uuid) == DEFAULT_WATTS for uuid in others),
            timeout=10,
            what=f"defaults back out of the domain\n{agent.log()[-3000:]}",
        )
        assert agent.limits()[decode_gpu] == CAP_WATTS
        wait_for(lambda: held_on_node(cp, node.name) is None, timeout=10, what="the held report removed")
        assert agent.metric_value("gpupower_agent_domain_info", domain=name) is None

        # Back in, then the agent stops: it restores the defaults and the report says so.
        cp.kubectl("label", "node", node.name, f"{RACK_LABEL}={rig.rack}")
        idle = next(uuid for uuid in others if uuid != notebook_gpu)
        wait_for(lambda: agent.limits().get(idle) == IDLE_WATTS, timeout=10, what="parked again")
        wait_for(lambda: held_on_node(cp, node.name) is not None, timeout=10, what="the held report back")
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 10
        assert set(agent.limits().values()) == {DEFAULT_WATTS}
        after = held_on_node(cp, node.name)
        assert after is not None and after.watts == GPUS * DEFAULT_WATTS, after
    finally:
        cp.kubectl("delete", "gpupowerdomain", name, "--wait=false", check=False)
        cp.kubectl(
            "delete",
            "pods",
            "--all",
            "-n",
            namespace,
            "--grace-period=0",
            "--force",
            "--wait=false",
            check=False,
        )


def test_an_agent_that_may_not_read_domains_runs_as_outside_any_and_parks_once_allowed(
    rig: Rig, namespace: str
) -> None:
    """The shipped agent role without its domains binding (gpupower-agent-domains), on the real API
    server: the agent says so once, is healthy, caps its budget's pods and parks nothing; once the
    binding is back, its retries find the domain and the idle GPUs are parked."""
    cp, node, agent = rig.control_plane, rig.node, rig.node.agent
    name = unique_name("rack-domain")
    cp.apply(domain(name, rig.rack))
    binding = "clusterrolebinding/gpupower-agent-domains"
    try:
        wait_for(lambda: set(agent.limits().values()) == {IDLE_WATTS}, timeout=20, what="GPUs parked")
        cp.kubectl("delete", binding)
        assert agent.stop() == 0  # a restart, so that no watch opened under the binding lives on
        agent.start()
        budget = granting_budget(cp, namespace, GRANT_WATTS, SAFE_DEFAULT_WATTS)
        cp.apply(
            pod_manifest(
                "decode-0", namespace, node.name, {"app": "decode"}, cap_annotations(budget, CAP_WATTS)
            )
        )
        wait_for(lambda: gpus_of(node, namespace, "decode-0"), timeout=10, what="decode-0's GPU")
        (decode_gpu,) = gpus_of(node, namespace, "decode-0")
        wait_for(
            lambda: agent.limits().get(decode_gpu) == CAP_WATTS,
            timeout=10,
            what=f"decode-0 capped at {CAP_WATTS} W without domains\n{agent.log()[-3000:]}",
        )
        wait_seconds(3.0)  # a few of the refused list's retries
        others = {uuid: watts for uuid, watts in agent.limits().items() if uuid != decode_gpu}
        assert set(others.values()) == {DEFAULT_WATTS}, "a GPU was parked by a domain the agent may not read"
        refused = [
            line
            for line in agent.log().splitlines()
            if "event=resource_unavailable" in line and "gpupowerdomains" in line
        ]
        assert len(refused) == 1 and "status=403" in refused[0], refused
        assert agent.healthz_status() == 200
        assert agent.metric_value("gpupower_agent_domain_info", domain=name) is None
        assert held_on_node(cp, node.name) is None  # nothing to report outside a domain

        install_agent_rbac(cp)  # the binding is back: the retries (at most a minute apart) find the domain
        wait_for(
            lambda: all(agent.limits().get(uuid) == IDLE_WATTS for uuid in others),
            timeout=90,
            what=f"the idle GPUs parked once the agent may read domains\n{agent.log()[-3000:]}",
        )
        assert agent.limits()[decode_gpu] == CAP_WATTS
    finally:
        install_agent_rbac(cp)
        cp.kubectl("delete", "gpupowerdomain", name, "--wait=false", check=False)
        delete_pods(cp, namespace)
