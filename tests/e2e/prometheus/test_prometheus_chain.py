"""Against the real Prometheus: signals -> corrections -> planner, the chain the operator runs each reconcile.

The synthetic exporter plays the engines and DCGM; Prometheus scrapes it every
second; :class:`SignalSource` reads the real server with prometheus-api-client.
Each test works in its own namespace label, so tests share one server. The outage and the
recovery are tested through the operator (test_prometheus_operator.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gpupower_api.models import BudgetSpec, BudgetStatus, ConditionStatus, TargetStatus, parse_spec
from gpupower_operator.core import planner
from gpupower_operator.core.signals import DemandSource, Signals
from gpupower_operator.shell.signalsource import SignalSource
from tests.e2e.promkit import PodTraffic, PrometheusStack, close_to
from tests.envtest import unique_name

pytestmark = pytest.mark.prometheus

WINDOW_SECONDS = 5
PROFILE: dict[str, Any] = {"points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 10}]}


def budget_spec(
    url: str, total_watts: int = 4000, oversubscription: dict[str, Any] | None = None, **target: Any
) -> BudgetSpec:
    return parse_spec(
        {
            "totalWatts": total_watts,
            **({"oversubscription": oversubscription} if oversubscription else {}),
            "safeDefaultWatts": 300,
            "prometheus": {
                "url": url,
                "intervalSeconds": 1,
                "timeoutSeconds": 2,
                "driftChecks": 2,
                "replanIntervalSeconds": 0,
                "failuresBeforeFallback": 2,
            },
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "maxReplicas": 12,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": PROFILE,
                    "preset": {"engine": "vllm", "windowSeconds": WINDOW_SECONDS},
                    **target,
                }
            ],
        }
    )


@dataclass
class Fleet:
    """The decode role as a simulator: its pods serve what the plan in force can, the rest waits.

    Arrivals split evenly over the running replicas; each serves up to the
    profile's throughput at its cap; what it cannot serve shows in the waiting
    gauge as a backlog the engine drains over the rate window. GPUs draw
    ``power_fraction`` of their cap (None: no DCGM series).
    """

    demand: float = 0.0
    power_fraction: float | None = None
    ttft_seconds: float | None = None
    pods: int = 0


class Loop:
    """What one budget's reconciles do with Prometheus: read signals, plan, remember the status."""

    def __init__(self, stack: PrometheusStack, spec: BudgetSpec) -> None:
        self.spec = spec
        self.namespace = unique_name("prom")
        self.source = SignalSource(default_url=None)
        self.status: BudgetStatus | None = None
        self.plan: planner.Plan | None = None
        self.signals: Signals | None = None
        self.stack = stack
        self.fleet = Fleet()

    def simulate(self) -> None:
        replicas, cap = (self.decode().replicas, self.decode().cap_watts) if self.plan else (2, 400)
        per_replica = planner.throughput_at(
            tuple(planner.ProfilePoint(p["watts"], p["throughput"]) for p in PROFILE["points"]), cap
        )
        arriving = self.fleet.demand / replicas
        served = min(arriving, per_replica)
        for index in range(replicas):
            pod = f"decode-5d8f7c-p{index:04d}"
            traffic = PodTraffic(
                requests_per_second=served,
                ttft_seconds=self.fleet.ttft_seconds,
                waiting=(arriving - served) * WINDOW_SECONDS,
            )
            self.stack.exporter.set_traffic(self.namespace, pod, traffic)
            if self.fleet.power_fraction is not None:
                self.stack.exporter.set_gpu_power(self.namespace, pod, 0, self.fleet.power_fraction * cap)
        for index in range(replicas, self.fleet.pods):
            self.stack.exporter.remove_pod(self.namespace, f"decode-5d8f7c-p{index:04d}")
        self.fleet.pods = replicas

    async def tick(self) -> planner.Plan:
        self.simulate()
        signals = await self.source.signals(self.namespace, "budget", self.spec, self.status)
        assert signals is not None
        self.signals = signals
        problem = planner.problem_from_spec(
            self.spec, demand=signals.demand(), corrections=signals.corrections()
        )
        self.plan = planner.plan(problem)
        self.status = BudgetStatus(
            targets=[
                TargetStatus(
                    name=t.name,
                    desired_replicas=t.desired_replicas,
                    planned_replicas=t.replicas,
                    current_replicas=t.replicas,  # the simulated fleet enforces at once
                    pods_annotated=t.replicas,
                    pods_enforced=t.replicas,
                    cap_watts=t.cap_watts,
                    projected_watts=t.watts,
                    capacity=t.capacity,
                    demand=t.demand,
                    served_fraction=t.served_fraction,
                    **signals.target_status(t.name),
                )
                for t in self.plan.targets
            ]
        )
        return self.plan

    async def until(self, predicate: Callable[[], bool], timeout_seconds: float, what: str) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            await self.tick()
            if predicate():
                return
            await asyncio.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout_seconds:g}s waiting for {what}; signals={self.signals}"
        )

    def decode(self) -> planner.TargetPlan:
        assert self.plan is not None
        return self.plan.target("decode")


async def test_demand_up_plans_more_replicas_within_bounded_time(prometheus: PrometheusStack) -> None:
    loop = Loop(prometheus, budget_spec(prometheus.url))
    loop.fleet.demand = 12
    # Neighbours that must not count: another Deployment's pods, and the same names in another namespace.
    prometheus.exporter.set_traffic(loop.namespace, "decode-large-5d8f7c-p0000", PodTraffic(100))
    prometheus.exporter.set_traffic(unique_name("other"), "decode-5d8f7c-p0000", PodTraffic(100))

    await loop.until(
        lambda: close_to(loop.decode().demand, 12.0), 30, "demand of 12 req/s read from Prometheus"
    )
    before = loop.decode().replicas
    assert loop.signals is not None
    assert loop.signals.targets["decode"].demand_source == DemandSource.PROMETHEUS
    assert loop.signals.condition is not None and loop.signals.condition.status == ConditionStatus.TRUE

    loop.fleet.demand = 40
    started = time.monotonic()
    await loop.until(lambda: close_to(loop.decode().demand, 40.0), 20, "demand to rise to 40 req/s")
    assert loop.decode().replicas > before
    assert loop.decode().capacity >= 40.0 * 0.9
    assert time.monotonic() - started < 20


async def test_quiet_engine_is_no_signal_and_keeps_the_last_good_demand(prometheus: PrometheusStack) -> None:
    loop = Loop(prometheus, budget_spec(prometheus.url, sla={"ttftSeconds": 0.5}))
    loop.fleet.demand, loop.fleet.ttft_seconds = 8, 0.2
    await loop.until(lambda: close_to(loop.decode().demand, 8.0), 30, "demand of 8 req/s")
    assert loop.signals is not None
    assert close_to(loop.signals.targets["decode"].ttft_seconds, 0.2, 0.15)
    replicas = loop.decode().replicas

    # The engine's series go away (its exporter stops, say): stale, then an empty result, never zero.
    loop.simulate = lambda: None  # type: ignore[method-assign]
    for index in range(loop.fleet.pods):
        prometheus.exporter.remove_pod(loop.namespace, f"decode-5d8f7c-p{index:04d}")
    await loop.until(
        lambda: (
            loop.signals is not None
            and loop.signals.targets["decode"].demand_source == DemandSource.LAST_GOOD
        ),
        30,
        "the empty result to read as no signal",
    )
    # While the stale series leave the rate window the rate fades; the last value read is what is kept.
    held = loop.decode().demand
    assert held is not None and 0 < held <= 8.0 * 1.1
    assert loop.decode().replicas >= 1
    for _ in range(3):
        await loop.tick()
        await asyncio.sleep(0.5)
        assert loop.decode().demand == held
    assert loop.signals.condition is not None and loop.signals.condition.status == ConditionStatus.TRUE
    assert "no signal" in loop.signals.condition.message
    assert replicas >= loop.decode().replicas


async def test_power_below_cap_frees_watts_for_a_later_plan(prometheus: PrometheusStack) -> None:
    # Demand above what 2000 W can serve at raw caps: the budget binds, so freed watts buy capacity
    # (a budget opts into that: planned on what its GPUs draw, more caps than watts, a guard under it).
    loop = Loop(prometheus, budget_spec(prometheus.url, total_watts=2000, oversubscription={"maxRatio": 1.5}))
    loop.fleet.demand, loop.fleet.power_fraction = 72, 1.0
    await loop.until(lambda: close_to(loop.decode().demand, 72.0), 30, "demand of 72 req/s")
    first = loop.decode()
    assert loop.plan is not None and loop.plan.binding
    assert first.replicas * first.cap_watts <= 2000
    assert loop.signals is not None and loop.signals.targets["decode"].factors.power == pytest.approx(
        1.0, abs=0.05
    )

    # Now every GPU of the role draws 60 % of its cap.
    loop.fleet.power_fraction = 0.6
    await loop.until(
        lambda: loop.signals is not None and loop.signals.targets["decode"].factors.power < 0.8,
        40,
        "the applied power factor to drop",
    )
    await loop.tick()  # the plan in force now has the new cap: one more read of its power
    later = loop.decode()
    assert loop.signals is not None
    assert loop.signals.targets["decode"].observed_watts is not None
    # The later plan gives the role more capped watts than the budget: the watts it never draws.
    assert later.replicas * later.cap_watts > 2000
    assert later.capacity > first.capacity
    assert later.watts <= 2000


async def test_missed_ttft_goal_corrects_capacity_down_and_adds_capacity(prometheus: PrometheusStack) -> None:
    loop = Loop(prometheus, budget_spec(prometheus.url, sla={"ttftSeconds": 0.5}))
    loop.fleet.demand, loop.fleet.ttft_seconds = 12, 0.2
    await loop.until(lambda: close_to(loop.decode().demand, 12.0), 30, "demand of 12 req/s")
    before = loop.decode()

    loop.fleet.ttft_seconds = 1.2
    await loop.until(
        lambda: loop.signals is not None and loop.signals.targets["decode"].factors.throughput < 0.8,
        40,
        "the throughput factor to drop on a TTFT above its goal",
    )
    # More capacity by the profile (more replicas or higher caps), for more watts.
    later = loop.decode()
    assert later.replicas * later.cap_watts > before.replicas * before.cap_watts
    assert later.watts > before.watts
    assert loop.status is not None
    decode_status = loop.status.target("decode")
    assert decode_status is not None and decode_status.observed_ttft_seconds is not None
    assert decode_status.observed_ttft_seconds > 0.5
