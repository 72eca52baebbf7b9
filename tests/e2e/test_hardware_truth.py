"""The budget holds on the GPUs, end to end: the real operator and agents, a simulated kubelet that binds,
allocates devices, then starts containers (each step later than the last), and fake H100s whose limits are
read from their state files every 50 ms while the fleet moves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpupower_agent.cluster import PodKey
from tests.e2e.agentkit import annotate
from tests.e2e.budgetkit import budget, condition, expected_plan, get_budget, live_pods, target, wait_ready
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess, clean_namespace, running_operator
from tests.e2e.sampling import Sampling
from tests.envtest import ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers]

ENFORCEMENT_TIMEOUT_SECONDS = 5
# The agent caps a new replica's GPU within this long of the kubelet allocating it (issue target: 0.5 s).
CAP_AFTER_ALLOCATION_SECONDS = 0.5


@dataclass
class Rig:
    control_plane: ControlPlane
    fleet: SimulatedFleet
    operator: OperatorProcess
    pools: dict[str, str]  # node name -> its pool label value


@pytest.fixture(scope="module")
def rig(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cp = crd_installed
    if not cp.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    names = [unique_name("truth-node") for _ in range(2)]
    pools = {name: unique_name("pool") for name in names}
    fleet = SimulatedFleet(
        cp,
        tmp_path_factory.mktemp("truth-fleet"),
        names,
        gpus=8,
        admit_seconds=0.4,
        start_seconds=1.0,
        labels={name: {"gpupower.test/pool": pool} for name, pool in pools.items()},
    ).start()
    try:
        with running_operator(
            cp,
            tmp_path_factory.mktemp("truth-operator"),
            extra_args=("--enforcement-timeout-seconds", str(ENFORCEMENT_TIMEOUT_SECONDS)),
        ) as operator:
            yield Rig(cp, fleet, operator, pools)
    finally:
        fleet.stop()
        print(fleet.logs())


@pytest.fixture
def ns(rig: Rig, namespace: str) -> Iterator[str]:
    yield namespace
    clean_namespace(rig.control_plane, namespace)


@dataclass
class Sampler(Sampling):
    """What the fake GPUs hold, every 50 ms, in a background thread."""

    fleet: SimulatedFleet
    namespace: str
    interval_seconds: float = 0.05
    # Per pod, the highest limit any of its GPUs held once CAP_AFTER_ALLOCATION_SECONDS past allocation.
    settled_max: dict[PodKey, int] = field(default_factory=dict)
    fleet_watts: list[int] = field(default_factory=list)

    def sample(self) -> None:
        now = time.monotonic()
        for node in self.fleet.nodes.values():
            limits = node.agent.limits()
            for pod, allocation in node.simulator.allocations().items():
                if pod.namespace != self.namespace:
                    continue
                if now - allocation.allocated_at >= CAP_AFTER_ALLOCATION_SECONDS:
                    held = max(limits.get(uuid, 0) for uuid in allocation.gpu_uuids)
                    self.settled_max[pod] = max(self.settled_max.get(pod, 0), held)
        self.fleet_watts.append(self.fleet.running_watts(self.namespace))


def pinned(rig: Rig, name: str, ns: str, replicas: int, pool: str | None = None) -> dict[str, Any]:
    """A GPU Deployment whose pods land on the rig's nodes (or on one node's pool)."""
    selector = {"gpupower.test/pool": pool} if pool else rig.fleet.node_selector
    return gpu_deployment(name, ns, replicas, node_selector=selector)


def settle(cp: ControlPlane, ns: str, app: str) -> None:
    """Wait until every pod of ``app`` runs (its containers start well after its GPUs were allocated)."""
    wait_for(
        lambda: all(p["status"].get("phase") == "Running" for p in live_pods(cp, ns, app)),
        timeout=30,
        what=f"every {app} pod Running",
    )
    time.sleep(0.2)


def status_target(cp: ControlPlane, ns: str, name: str, target_name: str) -> dict[str, Any]:
    targets = (get_budget(cp, ns, name).get("status") or {}).get("targets") or []
    return next(t for t in targets if t["name"] == target_name)


def test_scaling_up_caps_every_new_replica_before_it_draws_and_the_fleet_never_passes_its_budget(
    rig: Rig, ns: str
) -> None:
    cp, fleet = rig.control_plane, rig.fleet
    cp.apply(pinned(rig, "decode", ns, 2))
    small = budget("llm", ns, 1200, [target("decode", "decode", demand=20, max_replicas=8)])
    cp.apply(small)
    wait_ready(cp, ns, "llm", timeout=60)
    before = {PodKey(ns, p["metadata"]["name"]) for p in live_pods(cp, ns, "decode")}

    large = budget("llm", ns, 2800, [target("decode", "decode", demand=70, max_replicas=8)])
    grown = expected_plan(large).target("decode")
    assert grown.replicas > len(before), "the test must add replicas"
    with Sampler(fleet, ns) as up:
        cp.apply(large)
        wait_ready(cp, ns, "llm", timeout=60)
        settle(cp, ns, "decode")
    new_pods = {pod: held for pod, held in up.settled_max.items() if pod not in before}
    assert len(new_pods) >= grown.replicas - len(before), up.settled_max
    above = {pod: held for pod, held in new_pods.items() if held > grown.cap_watts}
    assert not above, f"new replicas above their planned {grown.cap_watts} W 0.5 s after allocation: {above}"
    assert max(up.fleet_watts) <= 2800

    # Down again: fewer replicas at a higher cap; the raise waits for the removed replicas to be gone.
    tight = budget("llm", ns, 900, [target("decode", "decode", demand=70, max_replicas=8)])
    shrunk = expected_plan(tight).target("decode")
    planned_before = grown.replicas * grown.cap_watts
    with Sampler(fleet, ns) as down:
        cp.apply(tight)
        wait_ready(cp, ns, "llm", timeout=60)
        settle(cp, ns, "decode")
    assert max(down.fleet_watts) <= max(planned_before, 900), down.fleet_watts
    assert down.fleet_watts[-1] <= 900
    held = fleet.held_by_pods(ns)
    assert len(held) == shrunk.replicas
    assert all(set(limits) == {shrunk.cap_watts} for limits in held.values()), held
    body = get_budget(cp, ns, "llm")
    assert body["status"]["enforcedWatts"] == pytest.approx(shrunk.replicas * shrunk.cap_watts)
    assert body["status"]["targets"][0]["podsEnforced"] == shrunk.replicas


def test_a_pod_that_edits_its_annotations_never_holds_more_than_its_grant(rig: Rig, ns: str) -> None:
    cp, fleet = rig.control_plane, rig.fleet
    cp.apply(pinned(rig, "decode", ns, 1))
    doc = budget("llm", ns, 1200, [target("decode", "decode", demand=20, max_replicas=1)])
    cp.apply(doc)
    preview = budget("preview", ns, 5000, [target("decode", "decode", demand=20, max_replicas=1)], "Advisory")
    preview["spec"]["safeDefaultWatts"] = 400
    cp.apply(preview)
    wait_ready(cp, ns, "llm", timeout=60)
    grant = status_target(cp, ns, "llm", "decode")["capWatts"]
    pod = live_pods(cp, ns, "decode")[0]["metadata"]["name"]
    with Sampler(fleet, ns) as sampler:
        for edit in (
            {"gpupower.dev/power-limit-watts": "700"},
            {"gpupower.dev/budget": "preview", "gpupower.dev/power-limit-watts": "400"},
            {"gpupower.dev/budget": "no-such-budget", "gpupower.dev/power-limit-watts": "700"},
        ):
            annotate(cp, ns, pod, **edit)
            time.sleep(1.5)
    held = sampler.settled_max[PodKey(ns, pod)]
    assert held <= grant, f"pod {pod} held {held} W with a grant of {grant} W"
    wait_ready(cp, ns, "llm", timeout=30)  # the operator wrote the right annotations back


def test_a_node_whose_agent_stopped_holds_back_the_raise_on_the_other_node_until_it_returns(
    rig: Rig, ns: str
) -> None:
    cp, fleet = rig.control_plane, rig.fleet
    first, second = fleet.node_names
    cp.apply(
        [
            pinned(rig, "a", ns, 4, rig.pools[first]),
            pinned(rig, "b", ns, 1, rig.pools[second]),
        ]
    )
    high = budget("llm", ns, 2000, [target("a", "a", demand=40, max_replicas=6), target("b", "b", 10, 1, 6)])
    cp.apply(high)
    wait_ready(cp, ns, "llm", timeout=60)
    low = budget("llm", ns, 1600, [target("a", "a", demand=20, max_replicas=6), target("b", "b", 40, 1, 6)])
    low_plan = expected_plan(low)
    assert low_plan.target("b").replicas > expected_plan(high).target("b").replicas, "b must be raised"

    agent = fleet.nodes[first].agent
    agent.stop()  # SIGTERM: it gives its GPUs their default limit back and says so on its pods
    try:
        cp.apply(low)

        def stalled() -> dict[str, Any] | None:
            found = condition(get_budget(cp, ns, "llm"), "EnforcementStalled")
            return found if found and found["status"] == "True" else None

        found = wait_for(stalled, timeout=ENFORCEMENT_TIMEOUT_SECONDS + 20, what="EnforcementStalled=True")
        assert found["reason"] == "PodsUnconfirmed"
        assert first in found["message"] and second not in found["message"], found["message"]
        ready = condition(get_budget(cp, ns, "llm"), "Ready")
        assert ready is not None and ready["status"] == "False" and "raise(s) held" in ready["message"]
        # The raise of b on the other node waits: its Deployment is not scaled up.
        assert cp.get_json("deployment", "b", "-n", ns)["spec"]["replicas"] == 1
        events = cp.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=llm")["items"]
        assert any(e["reason"] == "EnforcementStalled" and e["type"] == "Warning" for e in events)
    finally:
        agent.start()
    wait_ready(cp, ns, "llm", timeout=60)
    assert condition(get_budget(cp, ns, "llm"), "EnforcementStalled")["status"] == "False"  # type: ignore[index]
    held = fleet.held_by_pods(ns)
    for target_plan in low_plan.targets:
        pods = [pod for pod in held if pod.name.startswith(target_plan.name + "-")]
        assert len(pods) == target_plan.replicas, held
        assert all(set(held[pod]) == {target_plan.cap_watts} for pod in pods), held


def test_a_gated_replica_turns_ready_only_once_its_cap_holds(rig: Rig, ns: str, tmp_path: Path) -> None:
    cp = rig.control_plane
    deployment = pinned(rig, "gated", ns, 1)
    deployment["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": "gpupower.dev/PowerCapped"}]
    cp.apply(deployment)
    cp.apply(budget("llm", ns, 1200, [target("gated", "gated", demand=20, max_replicas=1)]))

    def pod_conditions() -> dict[str, str] | None:
        pods = live_pods(cp, ns, "gated")
        if not pods:
            return None
        return {c["type"]: c["status"] for c in pods[0]["status"].get("conditions") or []}

    seen: list[dict[str, str]] = []

    def ready() -> bool:
        found = pod_conditions()
        if found:
            seen.append(found)
        return bool(found) and found.get("Ready") == "True"

    wait_for(ready, timeout=60, interval=0.05, what="the gated pod Ready")
    assert all(c.get("gpupower.dev/PowerCapped") == "True" for c in seen if c.get("Ready") == "True")
    assert seen[-1]["ContainersReady"] == "True"
    capped = json.dumps(seen[-1])
    assert "gpupower.dev/PowerCapped" in capped
