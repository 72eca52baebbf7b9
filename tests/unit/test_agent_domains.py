"""The agent's shell on a node in a power domain, with the fake GPUs and a real PodResources server:
parked idle GPUs, capped unmanaged pods, new replicas that start parked, and the held report."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpupower_agent.agent import Agent
from gpupower_agent.cluster import (
    BudgetView,
    DomainView,
    Grant,
    NodeView,
    PodKey,
    PodView,
    ReportedCondition,
    domain_view,
)
from gpupower_agent.held import IDLE, UNMANAGED, HeldGpu, gpu_holder, node_held
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml, NvmlErrorKind
from gpupower_agent.placement import Placement
from gpupower_agent.podresources import FakePodResourcesServer, PodResourcesMapping
from gpupower_agent.policy import OtherHolders
from gpupower_agent.publisher import HeldReportPublisher
from gpupower_agent.trust import PodCap, Verdict
from gpupower_api.contract import (
    HeldGroup,
    HeldWatts,
    NodeHeld,
    PowerCappedReason,
    format_held_report,
    held_watts_from_message,
)
from gpupower_api.domains import NodePlace
from gpupower_api.selectors import parse_selector
from tests.unit.test_agent_apiclient import Scripted

BUDGET = BudgetView("ns", "llm", 300, (Grant("decode", parse_selector("app=decode"), 500),))
RACK = NodePlace(("rack",), (("rack",),), idle_gpu_watts=250, unmanaged_gpu_watts=300)
RACK_PARKED_AT_MIN = NodePlace(("rack",), (("rack",),))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod(name: str, labels: dict[str, str], budget: str | None = None, cap: str | None = None) -> PodView:
    return PodView(PodKey("ns", name), f"uid-{name}", labels, budget, cap, finished=False, requests_gpus=True)


class Node:
    """Four fake H100s (200-700 W) and the agent, on a kubelet PodResources server."""

    def __init__(self, tmp_path: Path, server: FakePodResourcesServer) -> None:
        self.nvml = FakeNvml("node", FakeGpuSpec(4, GPU_MODELS["h100-sxm"]), tmp_path / "gpus.json")
        self.uuids = [g.uuid for g in self.nvml.gpus()]
        self.server = server
        self.mapping = PodResourcesMapping(server.socket_path)
        self.metrics = AgentMetrics()
        self.clock = Clock()
        self.agent = Agent(
            "node", self.nvml, self.mapping, self.metrics, 250, tmp_path / "state.json", clock=self.clock
        )

    def limits(self) -> list[int]:
        return [self.nvml.power_limit_watts(u) for u in self.uuids]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    with FakePodResourcesServer(tmp_path / "kubelet.sock") as server:
        node = Node(tmp_path, server)
        yield node
        await node.mapping.close()


async def test_in_a_domain_idle_gpus_are_parked_and_unmanaged_ones_capped_and_both_are_reported(
    node: Node,
) -> None:
    node.server.allocate(PodKey("ns", "decode-0"), [node.uuids[0]])
    node.server.allocate(PodKey("ns", "notebook"), [node.uuids[1]])
    pods = [pod("decode-0", {"app": "decode"}, "llm", "450"), pod("notebook", {"app": "jupyter"})]

    result = await node.agent.reconcile(pods, [BUDGET], place=RACK)
    assert result is not None
    assert node.limits() == [450, 300, 250, 250]
    assert result.held == NodeHeld(
        idle=HeldGroup(2, 500), unmanaged=HeldGroup(1, 300), budgets={"ns/llm": HeldGroup(1, 450)}
    )
    notebook = result.conditions[PodKey("ns", "notebook")]
    assert (notebook.status, notebook.reason) == (False, PowerCappedReason.UNMANAGED)
    assert held_watts_from_message(notebook.message) == HeldWatts(1, 300)
    assert "power domain caps its GPUs at 300 W" in notebook.message
    assert node.metric("gpupower_agent_parked_gpus") == 2
    assert node.metric("gpupower_agent_held_watts", {"kind": "idle"}) == 500
    assert node.metric("gpupower_agent_held_gpus", {"kind": "budgets"}) == 1

    # The node leaves the domain: parked and unmanaged GPUs get their default back, the pod is told.
    told_before = ReportedCondition("False", notebook.reason.value, notebook.message, None)
    pods[1] = replace(pods[1], power_capped=told_before)
    result = await node.agent.reconcile(pods, [BUDGET], place=NodePlace())
    assert result is not None and result.held is None
    assert node.limits() == [450, 700, 700, 700]
    told = result.conditions[PodKey("ns", "notebook")]
    assert (told.reason, told.message) == (
        PowerCappedReason.UNMANAGED,
        "no Enforce budget manages this pod: its GPUs are not capped for it",
    )
    assert node.metric("gpupower_agent_held_watts", {"kind": "idle"}) is None
    assert node.agent.managed == {node.uuids[0]}


async def test_without_idle_watts_a_gpu_is_parked_at_its_minimum_and_unmanaged_pods_are_left_alone(
    node: Node,
) -> None:
    node.server.allocate(PodKey("ns", "notebook"), [node.uuids[1]])
    node.nvml.set_power_limit_watts(node.uuids[1], 650)
    result = await node.agent.reconcile([pod("notebook", {})], [], place=RACK_PARKED_AT_MIN)
    assert result is not None
    assert node.limits() == [200, 650, 200, 200]
    assert result.held == NodeHeld(idle=HeldGroup(3, 600), unmanaged=HeldGroup(1, 650))
    assert PodKey("ns", "notebook") not in result.conditions  # not capped: nothing to tell it


async def test_a_new_replica_on_a_parked_gpu_stays_parked_until_its_cap_is_trusted(node: Node) -> None:
    await node.agent.reconcile([], [BUDGET], place=RACK)
    assert node.limits() == [250] * 4

    node.server.allocate(PodKey("ns", "decode-1"), [node.uuids[2]])
    fresh = pod("decode-1", {"app": "decode"})
    result = await node.agent.reconcile([fresh], [BUDGET], place=RACK)
    assert result is not None and node.limits()[2] == 250  # not the 300 W of grant and safe default
    condition = result.conditions[fresh.key]
    assert (condition.status, condition.reason) == (False, PowerCappedReason.AWAITING_CAP)
    assert held_watts_from_message(condition.message) == HeldWatts(1, 250)
    assert "parked" in condition.message
    assert result.held is not None and result.held.budgets == {"ns/llm": HeldGroup(1, 250)}

    annotated = pod("decode-1", {"app": "decode"}, "llm", "450")
    result = await node.agent.reconcile([annotated], [BUDGET], place=RACK)
    assert result is not None and node.limits()[2] == 450
    assert result.conditions[fresh.key].reason is PowerCappedReason.CAPPED


async def test_a_gpu_held_by_a_pod_the_agent_cannot_see_is_unmanaged_and_never_raised(node: Node) -> None:
    await node.agent.reconcile([], [], place=RACK_PARKED_AT_MIN)
    node.server.allocate(PodKey("elsewhere", "job"), [node.uuids[3]])
    result = await node.agent.reconcile([], [], place=RACK_PARKED_AT_MIN)
    assert result is not None and node.limits()[3] == 200  # kept where it was, not restored to 700 W
    assert result.held is not None and result.held.unmanaged == HeldGroup(1, 200)
    result = await node.agent.reconcile([], [], place=RACK)
    assert result is not None and node.limits()[3] == 300  # the domain caps unmanaged pods' GPUs


async def test_a_gpu_whose_limit_cannot_be_read_counts_at_its_maximum(node: Node) -> None:
    await node.agent.reconcile([], [], place=RACK)
    node.nvml.inject_error("get", NvmlErrorKind.GPU_LOST, uuid=node.uuids[0])
    result = await node.agent.reconcile([], [], place=RACK)
    assert result is not None and result.held is not None
    assert result.held.idle == HeldGroup(4, 700 + 3 * 250)


async def test_on_exit_parked_gpus_get_their_default_back_and_the_report_says_so(node: Node) -> None:
    await node.agent.reconcile([], [], place=RACK)
    assert node.limits() == [250] * 4
    node.agent.restore_all()
    assert node.limits() == [700] * 4
    assert node.agent.held_now() == NodeHeld(idle=HeldGroup(4, 2800))
    await node.agent.reconcile([], [], place=NodePlace())
    assert node.agent.held_now() is None


def test_a_gpu_counts_for_the_first_budget_among_its_pods_else_unmanaged_else_idle() -> None:
    def cap(name: str, budget: tuple[str, str] | None) -> PodCap:
        return PodCap(PodKey("ns", name), 300, 300, Verdict.TRUSTED, budget=budget)

    assert gpu_holder([cap("a", ("ns", "zeta")), cap("b", ("ns", "alpha"))], OtherHolders()) == "ns/alpha"
    assert gpu_holder([cap("a", None)], OtherHolders()) == UNMANAGED
    assert gpu_holder([], OtherHolders(unseen=1)) == UNMANAGED
    assert gpu_holder([], OtherHolders()) == IDLE
    held = node_held([HeldGpu("ns/a", 300, 700), HeldGpu("ns/a", None, 700), HeldGpu(IDLE, 100, 700)])
    assert held == NodeHeld(idle=HeldGroup(1, 100), budgets={"ns/a": HeldGroup(2, 1000)})


# ---------------------------------------------------------------------------
# The place


def domain(name: str, **spec: Any) -> DomainView:
    raw = {"totalWatts": 9000, "nodeSelector": {"matchLabels": {"rack": name}}, **spec}
    return domain_view({"metadata": {"name": name}, "spec": raw})


def test_a_domain_that_does_not_validate_is_skipped_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics()
    placement = Placement("gpu-1", metrics)
    node = NodeView("gpu-1", {"rack": "a12"})
    domains = {"a12": domain("a12", idleGpuWatts=0), "b7": domain("b7")}
    caplog.set_level(logging.INFO)
    assert not placement.place(domains, node).in_domain
    assert not placement.place(dict(domains), NodeView("gpu-1", {"rack": "a12"})).in_domain
    assert caplog.text.count("event=domain_skipped domain=a12 field=spec.idleGpuWatts") == 1
    assert metrics.registry.get_sample_value("gpupower_agent_domains_skipped") == 1

    domains["a12"] = domain("a12", idleGpuWatts=120)
    place = placement.place(domains, node)
    assert place.in_domain and place.idle_gpu_watts == 120
    assert "event=node_place_changed node=gpu-1 domains=a12" in caplog.text
    assert metrics.registry.get_sample_value("gpupower_agent_domain_info", {"domain": "a12"}) == 1
    assert not placement.place(domains, NodeView("gpu-1", {"rack": "b8"})).in_domain
    assert metrics.registry.get_sample_value("gpupower_agent_domain_info", {"domain": "a12"}) is None
    # Without its Node's labels (not readable), the node is in no domain.
    assert not placement.place(domains, None).in_domain


# ---------------------------------------------------------------------------
# The Node annotation


def ok(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data


FAILED = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted([])
    script.server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    yield script
    script.server.close()


async def test_the_held_report_is_patched_only_when_its_text_changes_and_removed_out_of_a_domain(
    scripted: Scripted,
) -> None:
    clock = Clock()
    metrics = AgentMetrics()
    publisher = HeldReportPublisher(scripted.client(), "gpu-1", metrics, clock=clock)
    held = NodeHeld(idle=HeldGroup(2, 300))
    text = format_held_report(held)
    bare, carrying = NodeView("gpu-1", {}), NodeView("gpu-1", {}, text)

    scripted.responses.append(ok({}))
    publisher.update(held, bare)
    await publisher.flush()
    assert len(scripted.requests) == 1
    assert scripted.requests[0].startswith(b"PATCH /api/v1/nodes/gpu-1 HTTP/1.1")
    # Until the watch echoes it, the same text is not sent again; once the Node carries it, nothing is due.
    publisher.update(held, bare)
    await publisher.flush()
    publisher.update(held, carrying)
    clock.now += 60
    await publisher.flush()
    assert len(scripted.requests) == 1

    # Someone removed it by hand: it comes back. Out of every domain: removed.
    scripted.responses += [ok({}), ok({})]
    publisher.update(held, bare)
    await publisher.flush()
    publisher.update(None, carrying)
    await publisher.flush()
    assert len(scripted.requests) == 3
    publisher.update(None, bare)
    await publisher.flush()
    assert len(scripted.requests) == 3
    sample = metrics.registry.get_sample_value
    assert sample("gpupower_agent_held_report_patches_total", {"result": "set"}) == 2
    assert sample("gpupower_agent_held_report_patches_total", {"result": "removed"}) == 1


async def test_a_failed_held_patch_is_retried_with_backoff(scripted: Scripted) -> None:
    clock = Clock()
    metrics = AgentMetrics()
    publisher = HeldReportPublisher(scripted.client(), "gpu-1", metrics, clock=clock)
    held = NodeHeld(idle=HeldGroup(1, 200))
    scripted.responses += [FAILED, ok({})]
    publisher.update(held, NodeView("gpu-1", {}))
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(100):
            if metrics.registry.get_sample_value(
                "gpupower_agent_held_report_patches_total", {"result": "failed"}
            ):
                break
            await asyncio.sleep(0.01)
        clock.now += 2  # past the backoff
        publisher.update(held, NodeView("gpu-1", {}))
        for _ in range(100):
            if metrics.registry.get_sample_value(
                "gpupower_agent_held_report_patches_total", {"result": "set"}
            ):
                break
            await asyncio.sleep(0.01)
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)
    assert (
        metrics.registry.get_sample_value("gpupower_agent_held_report_patches_total", {"result": "set"}) == 1
    )
    assert len(scripted.requests) == 2
