"""The domains' shell without an API server: offers, allocation rounds, grants it remembers, status writes.

The Cluster is a recording stand-in for the one interface the runtime writes through (the e2e tests run
the real one); everything else is the real runtime and the real decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_HELD_ANNOTATION,
    HeldGroup,
    NodeHeld,
    format_held_report,
)
from gpupower_api.models import BudgetStatus, parse_spec
from gpupower_operator.core.planner import problem_from_spec
from gpupower_operator.shell.domains import DomainRuntime
from gpupower_operator.shell.metrics import OperatorMetrics

RACK = "topology.gpupower.dev/rack"


class RecordingCluster:
    """Records the domain status patches; fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.failures = failures

    async def patch_domain_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError("connection reset")
        self.patches.append((name, status))
        return {"status": status}


def spec(demand: float, priority: int = 0) -> Any:
    return parse_spec(
        {
            "domainRef": {"name": "rack-a"},
            "priority": priority,
            "safeDefaultWatts": 200,
            "targets": [
                {
                    "name": "serve",
                    "workloadRef": {"name": "serve"},
                    "maxReplicas": 4,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {
                        "points": [{"watts": 200, "throughput": 10}, {"watts": 400, "throughput": 16}]
                    },
                    "demand": demand,
                }
            ],
        }
    )


def node(held: NodeHeld) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {RACK: "a", "nvidia.com/gpu.present": "true"},
            "annotations": {
                GPU_POWER_ANNOTATION: json.dumps([{"maxWatts": 700}] * held.gpus),
                GPU_POWER_HELD_ANNOTATION: format_held_report(held),
            },
        }
    }


@contextlib.asynccontextmanager
async def running(cluster: RecordingCluster) -> AsyncIterator[tuple[DomainRuntime, set[tuple[str, str]]]]:
    woken: set[tuple[str, str]] = set()
    runtime = DomainRuntime(
        cluster,  # type: ignore[arg-type]  # the runtime writes domain statuses only
        OperatorMetrics(),
        wake_budgets=woken.update,
        planned_watts=lambda key: None,
        clock=lambda: "2026-12-01T12:00:00Z",
        resync_seconds=60,
    )
    for event in (runtime.domains_synced, runtime.nodes_synced, runtime.namespaces_synced):
        event.set()
    runtime.on_domain(
        "",
        "rack-a",
        {
            "metadata": {"generation": 1},
            "spec": {"totalWatts": 2000, "nodeSelector": {"matchLabels": {RACK: "a"}}},
        },
    )
    task = asyncio.create_task(runtime.run())
    try:
        yield runtime, woken
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_offer_gets_its_share_from_a_round_and_the_domain_status_is_written() -> None:
    cluster = RecordingCluster()
    async with running(cluster) as (runtime, _):
        runtime.on_node("n1", node(NodeHeld(idle=HeldGroup(4, 800))))
        chat = spec(demand=30)
        share = await runtime.share(
            ("inference", "chat"), chat, problem_from_spec(chat, total_watts=1.0), None, 5
        )
        assert share is not None and share.allocation is not None
        # 2,000 W less 4 idle GPUs parked at 200 W leaves 1,200 W; demand 30 needs 3 replicas at 200 W.
        assert share.grant_milliwatts == share.allocation.milliwatts == 600_000
        await asyncio.sleep(0.2)
    name, status = cluster.patches[-1]
    assert name == "rack-a" and status["committed"]["idleWatts"] == 800
    assert status["allocations"][0]["name"] == "chat"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


async def test_a_grant_counts_until_the_reconcile_that_used_a_lower_one_completes() -> None:
    cluster = RecordingCluster()
    async with running(cluster) as (runtime, woken):
        runtime.on_node("n1", node(NodeHeld(idle=HeldGroup(2, 400))))
        batch = spec(demand=60)
        # After a restart, the batch job's status says its caps sum to 1,600 W: counted until it re-plans.
        old = BudgetStatus(caps_watts=1600.0)
        await runtime.share(("inference", "batch"), batch, problem_from_spec(batch, total_watts=1.0), old, 5)
        chat = spec(demand=60, priority=100)
        share = await runtime.share(
            ("inference", "chat"), chat, problem_from_spec(chat, total_watts=1.0), None, 5
        )
        assert share is not None and share.handover is not None and share.handover.waiting
        # 2,000 W less 400 W of idle GPUs less the batch job's 1,600 W: nothing left for the chat model yet.
        assert share.grant_milliwatts == 0
        waiting_grant = share.grant_milliwatts
        batch_share = runtime.shares[("inference", "batch")]
        assert batch_share.grant_milliwatts is not None
        # The batch job's reconcile plans within its lower grant and completes; its GPUs report it.
        runtime.completed(("inference", "batch"), batch_share.grant_milliwatts)
        held = batch_share.grant_milliwatts // 1000  # its floor: one replica at 200 W
        lowered = NodeHeld(idle=HeldGroup(2, 400), budgets={"inference/batch": HeldGroup(1, held)})
        runtime.on_node("n1", node(lowered))

        async def raised() -> int:
            while True:
                grant = runtime.shares[("inference", "chat")].grant_milliwatts
                if grant is not None and grant > (waiting_grant or 0):
                    return grant
                await asyncio.sleep(0.02)

        assert batch_share.grant_milliwatts == 200_000
        grant = await asyncio.wait_for(raised(), 5)
        assert ("inference", "chat") in woken
        chat_share = runtime.shares[("inference", "chat")]
        assert chat_share.allocation is not None and grant == chat_share.allocation.milliwatts


async def test_a_failed_status_write_is_retried_and_the_allocator_lives_on() -> None:
    cluster = RecordingCluster(failures=2)
    async with running(cluster) as (runtime, _):
        runtime.on_node("n1", node(NodeHeld(idle=HeldGroup(4, 800))))
        for _ in range(100):
            if cluster.patches:
                break
            await asyncio.sleep(0.05)
    assert cluster.patches and cluster.patches[-1][0] == "rack-a"


@pytest.mark.parametrize("event", ["deleted", "invalid"])
async def test_a_deleted_or_invalid_domain_is_dropped_or_named(event: str) -> None:
    cluster = RecordingCluster()
    async with running(cluster) as (runtime, _):
        if event == "deleted":
            for _ in range(100):
                if cluster.patches:
                    break
                await asyncio.sleep(0.05)
            assert cluster.patches, "the domain was allocated and its series recorded first"
            runtime.on_domain("", "rack-a", None)
        else:
            runtime.on_domain("", "rack-a", {"metadata": {"generation": 2}, "spec": {"totalWatts": 2000}})
        await asyncio.sleep(0.3)
    if event == "deleted":
        assert "rack-a" not in runtime.domains
        series = {
            sample.labels.get("domain")
            for family in runtime.metrics.registry.collect()
            if family.name.startswith("gpupower_domain")
            for sample in family.samples
        }
        assert "rack-a" not in series, "its series go with it"
    else:
        _, status = cluster.patches[-1]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.nodeSelector" in ready["message"]
