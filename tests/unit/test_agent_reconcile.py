"""The agent's shell with the fake GPUs and a real PodResources server: errors, backoff, state, metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpupower_agent.agent import Agent
from gpupower_agent.cluster import BudgetView, Grant, PodKey, PodView
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml, NvmlErrorKind
from gpupower_agent.podresources import FakePodResourcesServer, PodResourcesMapping
from gpupower_agent.state import load_state
from gpupower_api.contract import HeldWatts, PowerCappedReason, held_watts_from_message
from gpupower_api.models import Oversubscription
from gpupower_api.selectors import parse_selector

BUDGET = BudgetView("ns", "llm", 300, (Grant("decode", parse_selector("app=decode"), 500),))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def capped_pod(name: str, watts: int) -> PodView:
    return PodView(PodKey("ns", name), f"uid-{name}", {"app": "decode"}, "llm", str(watts), finished=False)


class Node:
    def __init__(self, tmp_path: Path, server: FakePodResourcesServer) -> None:
        self.nvml = FakeNvml("node", FakeGpuSpec(4, GPU_MODELS["h100-sxm"]), tmp_path / "gpus.json")
        self.uuids = [g.uuid for g in self.nvml.gpus()]
        self.server = server
        self.mapping = PodResourcesMapping(server.socket_path)
        self.metrics = AgentMetrics()
        self.clock = Clock()
        self.state_file = tmp_path / "state.json"
        self.agent = self.new_agent()

    def new_agent(self) -> Agent:
        return Agent("node", self.nvml, self.mapping, self.metrics, 250, self.state_file, clock=self.clock)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0

    def limits(self) -> list[int]:
        return [self.nvml.power_limit_watts(u) for u in self.uuids]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    with FakePodResourcesServer(tmp_path / "kubelet.sock") as server:
        node = Node(tmp_path, server)
        yield node
        await node.mapping.close()


async def test_nvml_errors_are_counted_and_retried_with_backoff(node: Node) -> None:
    node.server.allocate(PodKey("ns", "a"), [node.uuids[0]])
    node.nvml.inject_error("set", NvmlErrorKind.NO_PERMISSION, uuid=node.uuids[0], times=2)
    pods = [capped_pod("a", 450)]

    await node.agent.reconcile(pods, [BUDGET])
    assert node.limits()[0] == 700
    assert node.metric("gpupower_agent_nvml_errors_total", {"operation": "set", "kind": "no_permission"}) == 1
    # still inside the backoff: no new attempt
    await node.agent.reconcile(pods, [BUDGET])
    assert node.metric("gpupower_agent_nvml_errors_total", {"operation": "set", "kind": "no_permission"}) == 1
    retry_at = node.agent.next_retry_at()
    assert retry_at is not None and retry_at == pytest.approx(node.clock.now + 0.5)

    node.clock.now += 0.6
    await node.agent.reconcile(pods, [BUDGET])  # second failure, the delay doubles
    assert node.agent.next_retry_at() == pytest.approx(node.clock.now + 1.0)
    node.clock.now += 1.1
    await node.agent.reconcile(pods, [BUDGET])
    assert node.limits()[0] == 450
    assert node.agent.next_retry_at() is None
    # a GPU that is lost while reading is counted too, and the others carry on
    node.nvml.inject_error("get", NvmlErrorKind.GPU_LOST, uuid=node.uuids[3], times=1)
    await node.agent.reconcile(pods, [BUDGET])
    assert node.metric("gpupower_agent_nvml_errors_total", {"operation": "get", "kind": "gpu_lost"}) == 1


async def test_an_unreadable_mapping_keeps_the_last_one(node: Node) -> None:
    node.server.allocate(PodKey("ns", "a"), [node.uuids[1]])
    pods = [capped_pod("a", 450)]
    await node.agent.reconcile(pods, [BUDGET])
    assert node.limits()[1] == 450

    node.server.stop()
    node.mapping = PodResourcesMapping(node.server.socket_path, timeout_seconds=0.3)
    node.agent.mapping = node.mapping
    await node.agent.reconcile(pods, [BUDGET])
    assert node.limits()[1] == 450  # not restored: the mapping is unknown, not empty
    assert node.metric("gpupower_agent_mapping_errors_total", {"source": "pod-resources"}) == 1


async def test_without_any_mapping_yet_the_agent_touches_nothing(node: Node) -> None:
    node.nvml.set_power_limit_watts(node.uuids[2], 333)
    node.state_file.write_text(json.dumps({"version": 1, "nodeName": "node", "managedGpus": [node.uuids[2]]}))
    node.server.stop()
    agent = node.new_agent()
    agent.load_state()
    assert await agent.reconcile([], [BUDGET]) is None
    assert node.limits()[2] == 333


async def test_state_file_tracks_capped_gpus_and_restore_all_gives_defaults_back(node: Node) -> None:
    node.server.allocate(PodKey("ns", "a"), [node.uuids[0], node.uuids[1]])
    await node.agent.reconcile([capped_pod("a", 450)], [BUDGET])
    saved = load_state(node.state_file)
    assert saved is not None and saved.managed_gpu_uuids == {node.uuids[0], node.uuids[1]}
    assert node.metric("gpupower_agent_limit_changes_total", {"action": "cap"}) == 2

    node.agent.restore_all()
    assert node.limits() == [700, 700, 700, 700]
    saved = load_state(node.state_file)
    assert saved is not None and saved.managed_gpu_uuids == frozenset()


async def test_orphans_from_a_previous_run_are_restored_and_others_left_alone(node: Node) -> None:
    node.nvml.set_power_limit_watts(node.uuids[0], 400)  # capped by the previous run, pod gone
    node.nvml.set_power_limit_watts(node.uuids[1], 410)  # capped by the previous run, pod still there
    node.nvml.set_power_limit_watts(node.uuids[2], 333)  # set by someone else
    node.state_file.write_text(
        json.dumps({"version": 1, "nodeName": "node", "managedGpus": [node.uuids[0], node.uuids[1]]})
    )
    node.server.allocate(PodKey("ns", "b"), [node.uuids[1]])
    agent = node.new_agent()
    agent.load_state()
    await agent.reconcile([capped_pod("b", 410)], [BUDGET])
    assert node.limits() == [700, 410, 333, 700]
    assert agent.managed == {node.uuids[1]}


async def test_warnings_and_counters_fire_once_per_change_not_per_reconcile(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.server.allocate(PodKey("ns", "greedy"), [node.uuids[0]])
    node.server.allocate(PodKey("ns", "x"), [node.uuids[1]])
    node.server.allocate(PodKey("ns", "y"), [node.uuids[1]])
    pods = [capped_pod("greedy", 650), capped_pod("x", 400), capped_pod("y", 450)]
    for _ in range(3):
        await node.agent.reconcile(pods, [BUDGET])
    assert node.limits()[:2] == [300, 300]
    assert node.metric("gpupower_agent_untrusted_caps_total", {"reason": "above_grant"}) == 1
    assert node.metric("gpupower_agent_cap_conflicts_total") == 1
    assert node.metric("gpupower_agent_safe_default_fallbacks_total", {"reason": "conflict"}) == 1
    assert caplog.text.count("event=cap_untrusted") == 1
    assert caplog.text.count("event=cap_conflict") == 1
    assert (
        node.metric("gpupower_agent_gpu_pod_info", {"uuid": node.uuids[1], "namespace": "ns", "pod": "y"})
        == 1
    )
    assert node.metric("gpupower_agent_gpu_power_limit_watts", {"uuid": node.uuids[0], "index": "0"}) == 300
    assert node.metric("gpupower_agent_reconcile_duration_seconds_count") == 3


async def test_a_cap_the_gpu_cannot_take_is_clamped_and_counted(node: Node) -> None:
    node.server.allocate(PodKey("ns", "low"), [node.uuids[0]])
    budget = BudgetView("ns", "llm", 300, (Grant("decode", parse_selector("app=decode"), 500),))
    await node.agent.reconcile([capped_pod("low", 120)], [budget])
    assert node.limits()[0] == 200
    assert node.metric("gpupower_agent_clamps_total") == 1


async def test_every_gpu_has_a_limit_series_before_the_first_reconcile(node: Node) -> None:
    for index, uuid in enumerate(node.uuids):
        assert node.metric("gpupower_agent_gpu_power_limit_watts", {"uuid": uuid, "index": str(index)}) == 700


def new_replica(name: str) -> PodView:
    """A pod the budget selects, before the operator annotated it, that asks for a GPU."""
    return PodView(
        PodKey("ns", name), f"uid-{name}", {"app": "decode"}, None, None, False, requests_gpus=True
    )


async def test_a_pod_awaiting_its_gpus_is_looked_for_until_the_kubelet_allocates_them(node: Node) -> None:
    pods = [new_replica("fresh")]
    result = await node.agent.reconcile(pods, [BUDGET])
    assert result is not None and result.awaiting_devices == {PodKey("ns", "fresh")}
    assert result.conditions[PodKey("ns", "fresh")].reason is PowerCappedReason.AWAITING_DEVICES
    assert node.agent.looking_for_devices()
    assert node.metric("gpupower_agent_pods_awaiting_devices") == 1

    node.server.allocate(PodKey("ns", "fresh"), [node.uuids[2]])
    result = await node.agent.reconcile(pods, [BUDGET])
    assert result is not None and result.awaiting_devices == frozenset()
    assert not node.agent.looking_for_devices()
    # The lower of the grant (500 W) and the budget's safe default (300 W), at once.
    assert node.limits()[2] == 300
    condition = result.conditions[PodKey("ns", "fresh")]
    assert (condition.status, condition.reason) == (False, PowerCappedReason.AWAITING_CAP)
    assert held_watts_from_message(condition.message) == HeldWatts(1, 300)


async def test_a_pod_whose_gpus_never_come_is_looked_for_only_within_the_bound(node: Node) -> None:
    pods = [new_replica("stuck")]
    await node.agent.reconcile(pods, [BUDGET])
    assert node.agent.looking_for_devices()
    node.clock.now += node.agent.device_wait_seconds + 1
    await node.agent.reconcile(pods, [BUDGET])
    assert not node.agent.looking_for_devices()


async def test_the_condition_says_what_nvml_reads_back(node: Node) -> None:
    node.server.allocate(PodKey("ns", "a"), [node.uuids[0]])
    node.nvml.inject_error("set", NvmlErrorKind.NO_PERMISSION, uuid=node.uuids[0], times=1)
    result = await node.agent.reconcile([capped_pod("a", 450)], [BUDGET])
    assert result is not None
    failed = result.conditions[PodKey("ns", "a")]
    assert (failed.status, failed.reason) == (False, PowerCappedReason.NVML_ERROR)
    assert held_watts_from_message(failed.message) == HeldWatts(1, 700)
    node.clock.now += 1
    result = await node.agent.reconcile([capped_pod("a", 450)], [BUDGET])
    assert result is not None
    capped = result.conditions[PodKey("ns", "a")]
    assert (capped.status, capped.reason) == (True, PowerCappedReason.CAPPED)
    assert held_watts_from_message(capped.message) == HeldWatts(1, 450)


OVERSUBSCRIBED = BudgetView(
    "ns",
    "llm",
    300,
    (Grant("decode", parse_selector("app=decode"), 500, gpu_draw_watts=250.0),),
    oversubscription=Oversubscription(max_ratio=2.0),
)


async def test_the_draw_guard_engages_on_a_surge_and_releases_in_steps(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    nvml = FakeNvml("node", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]), tmp_path / "gpus.json", load_path=load)
    uuids = [g.uuid for g in nvml.gpus()]
    clock = Clock()
    metrics = AgentMetrics()
    with FakePodResourcesServer(tmp_path / "kubelet.sock") as server:
        mapping = PodResourcesMapping(server.socket_path)
        agent = Agent("node", nvml, mapping, metrics, 250, tmp_path / "state.json", clock=clock)
        agent._guard_read_once = True  # running for a while already: budgets do not start guarded
        for index, uuid in enumerate(uuids):
            server.allocate(PodKey("ns", f"p{index}"), [uuid])
        pods = [capped_pod(f"p{index}", 500) for index in range(2)]

        async def reading(watts: float) -> None:
            load.write_text(json.dumps({uuid: watts for uuid in uuids}))
            clock.now += 1
            await agent.reconcile(pods, [OVERSUBSCRIBED], guard_reading=True)

        def labelled(name: str) -> float:
            return metrics.registry.get_sample_value(name, {"budget_namespace": "ns", "budget": "llm"}) or 0.0

        await reading(200)  # below the 2 x 250 W share: caps hold
        assert [nvml.power_limit_watts(u) for u in uuids] == [500, 500]
        await reading(480)  # one reading above: not yet
        assert [nvml.power_limit_watts(u) for u in uuids] == [500, 500]
        await reading(480)
        assert [nvml.power_limit_watts(u) for u in uuids] == [225, 225]  # 0.9 x 250 W
        assert labelled("gpupower_agent_guard_engaged") == 1
        assert labelled("gpupower_agent_guard_engagements_total") == 1
        result = await agent.reconcile(pods, [OVERSUBSCRIBED])
        assert result is not None
        guarded_pod = result.conditions[PodKey("ns", "p0")]
        assert (guarded_pod.status, guarded_pod.reason) == (True, PowerCappedReason.GUARDED)
        assert held_watts_from_message(guarded_pod.message) == HeldWatts(1, 225)
        # The load falls under 0.8 x the share: a 25 % step every 10 s, back to the caps.
        limits = []
        for _ in range(45):
            await reading(100)
            limits.append(nvml.power_limit_watts(uuids[0]))
        assert sorted(set(limits)) == [225, 300, 375, 450, 500]
        assert labelled("gpupower_agent_guard_engaged") == 0
        await mapping.close()
