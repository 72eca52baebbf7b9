"""The reconcile decision: status, conditions, and the order of writes that keeps the fleet within budget."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpupower_api.contract import HeldWatts, format_power_limit
from gpupower_api.models import BudgetStatus, ConditionStatus, InvalidSpecError, parse_spec
from gpupower_operator.core import conditions as cond
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core.planner import Plan, plan, problem_from_spec
from tests.fleet_power import FleetModel, walk_is_safe

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
BUDGET = rc.BudgetRef(name="llm", namespace="inference", created="2026-01-01T00:00:00Z", generation=1)


def spec_dict(total_watts: int = 3000, mode: str = "Enforce", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "totalWatts": total_watts,
        "mode": mode,
        "safeDefaultWatts": 250,
        "targets": [
            {
                "name": "prefill",
                "workloadRef": {"name": "prefill"},
                "minReplicas": 1,
                "maxReplicas": 6,
                "capWatts": {"min": 200, "max": 400},
                "profile": {"points": [{"watts": 200, "throughput": 10}, {"watts": 400, "throughput": 16}]},
                "demand": 50,
            },
            {
                "name": "decode",
                "workloadRef": {"name": "decode"},
                "gpusPerReplica": 2,
                "minReplicas": 1,
                "maxReplicas": 6,
                "capWatts": {"min": 200, "max": 400},
                "profile": {"points": [{"watts": 200, "throughput": 6}, {"watts": 400, "throughput": 9}]},
                "demand": 30,
            },
        ],
    }
    spec.update(overrides)
    return spec


def planned(spec: dict[str, Any]) -> Plan:
    return plan(problem_from_spec(parse_spec(spec)))


def workloads(replicas: dict[str, int]) -> dict[str, rc.WorkloadState | rc.WorkloadMissing]:
    return {
        name: rc.WorkloadState(replicas=count, selector=f"app={name}") for name, count in replicas.items()
    }


GPUS = {"prefill": 1, "decode": 2}


def held(cap: int, gpus: int) -> rc.CappedReport:
    """What an agent reports on a pod whose GPUs hold ``cap``."""
    return rc.CappedReport(True, "Capped", HeldWatts(gpus, cap))


def pods_for(
    replicas: dict[str, int], caps: dict[str, int | None], budget: str = "llm", confirmed: bool = True
) -> list[rc.PodState]:
    """Running pods; those with a cap are annotated and, when ``confirmed``, their agent reports it held."""
    pods = []
    for target, count in replicas.items():
        for index in range(count):
            cap = caps.get(target)
            pods.append(
                rc.PodState(
                    name=f"{target}-{index}",
                    labels={"app": target},
                    cap_annotation=format_power_limit(cap) if cap is not None else None,
                    budget_annotation=budget if cap is not None else None,
                    phase="Running",
                    node_name="node-a",
                    power_capped=held(cap, GPUS.get(target, 1)) if cap is not None and confirmed else None,
                )
            )
    return pods


def settled(spec: dict[str, Any]) -> tuple[BudgetStatus, dict[str, int], list[rc.PodState]]:
    """The state after a budget has been fully enforced: status, replicas, pods carrying their caps."""
    the_plan = planned(spec)
    replicas = {t.name: t.replicas for t in the_plan.targets}
    caps: dict[str, int | None] = {t.name: t.cap_watts for t in the_plan.targets}
    pods = pods_for(replicas, caps)
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads(replicas), pods)
    return rc.reconcile(observed, the_plan, NOW).status, replicas, pods


def test_a_settled_budget_reconciles_to_no_writes_at_all() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    observed = rc.Observed(BUDGET, parse_spec(spec), status, workloads(replicas), pods)
    outcome = rc.reconcile(observed, planned(spec), LATER)
    assert outcome.writes == []
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.status == ConditionStatus.TRUE and ready.reason == cond.REASON_ENFORCED
    assert ready.last_transition_time == NOW


def test_a_budget_that_stops_reading_prometheus_drops_its_metrics_condition() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    stale = cond.merge_conditions(
        status.conditions,
        [cond.false("MetricsAvailable", "QueriesFailing", "3 consecutive reads failed")],
        1,
        NOW,
    )
    old = status.model_copy(update={"conditions": stale})
    observed = rc.Observed(BUDGET, parse_spec(spec), old, workloads(replicas), pods)
    outcome = rc.reconcile(observed, planned(spec), LATER)
    assert outcome.status.condition("MetricsAvailable") is None
    assert outcome.status.condition(cond.READY) is not None


def test_status_carries_the_plan_per_target_and_totals() -> None:
    spec = spec_dict()
    the_plan = planned(spec)
    status, _, _ = settled(spec)
    assert status.budget_watts == 3000
    assert status.planned_watts == round(the_plan.watts, 1)
    assert status.observed_generation == 1
    for target in the_plan.targets:
        got = status.target(target.name)
        assert got is not None
        assert (got.cap_watts, got.planned_replicas, got.desired_replicas) == (
            target.cap_watts,
            target.replicas,
            target.desired_replicas,
        )
        assert got.selector == f"app={target.name}"
        assert got.pods_annotated == target.replicas
    planned_sum = sum(t.replicas for t in the_plan.targets)
    desired_sum = sum(t.desired_replicas for t in the_plan.targets)
    assert status.replicas == f"{planned_sum}/{desired_sum}"


def test_lowering_the_budget_lowers_caps_and_replicas_before_the_status_grants_anything_new() -> None:
    high = spec_dict(total_watts=4000)
    low = spec_dict(total_watts=1400)
    status, replicas, pods = settled(high)
    new_plan = planned(low)
    observed = rc.Observed(BUDGET, parse_spec(low), status, workloads(replicas), pods)
    outcome = rc.reconcile(observed, new_plan, LATER)
    kinds = [type(w).__name__ for w in outcome.writes]
    status_at = kinds.index("WriteStatus")
    for index, write in enumerate(outcome.writes):
        if isinstance(write, rc.ScaleWorkload) and write.to_replicas < write.from_replicas:
            assert index < status_at, "replicas down must come before the new status"
        if isinstance(write, rc.AnnotatePod) and write.previous_cap_watts is not None:
            if write.cap_watts < write.previous_cap_watts:
                assert index < status_at, "caps down must come before the new status"
            else:
                assert index > status_at, "caps up must wait for the new status"
    assert any(isinstance(w, rc.AnnotatePod) for w in outcome.writes[:status_at]) or any(
        isinstance(w, rc.ScaleWorkload) for w in outcome.writes[:status_at]
    )


@dataclass
class Fleet:
    """Workloads, their pods and the agents on their nodes, as far as a reconcile can tell them apart.

    The pods' annotations change as the operator writes them; what their GPUs hold
    changes only when the agents confirm (:meth:`agents_apply`): each pod then
    holds its trusted cap, or the lower of its grant and the safe default.
    """

    spec: dict[str, Any]
    replicas: dict[str, int]
    pods: dict[str, rc.PodState]
    created: int = 0

    def apply(self, write: rc.Write) -> None:
        if isinstance(write, rc.AnnotatePod):
            pod = self.pods[write.pod]
            self.pods[write.pod] = replace(
                pod, cap_annotation=format_power_limit(write.cap_watts), budget_annotation=write.budget
            )
        elif isinstance(write, rc.ScaleWorkload):
            self.replicas[write.target] = write.to_replicas
            mine = sorted(name for name in self.pods if name.rsplit("-", 1)[0] == write.target)
            for name in mine[write.to_replicas :]:
                del self.pods[name]
            for _ in range(write.to_replicas - len(mine)):
                self.created += 1
                name = f"{write.target}-new{self.created}"
                self.pods[name] = rc.PodState(name=name, labels={"app": write.target}, node_name="node-a")

    def agents_apply(self, status: BudgetStatus) -> None:
        safe = int(self.spec["safeDefaultWatts"])
        for name, pod in self.pods.items():
            target = name.rsplit("-", 1)[0]
            grant = status.target(target)
            assert grant is not None
            cap = pod.cap_watts_from("llm")
            holds = cap if cap is not None and cap <= grant.cap_watts else min(grant.cap_watts, safe)
            self.pods[name] = replace(pod, power_capped=held(holds, GPUS[target]))

    def hardware_watts(self) -> float:
        """What the GPUs hold (pods no agent has reported on count at the GPU's 700 W default)."""
        total = 0.0
        for name, pod in self.pods.items():
            gpus = GPUS[name.rsplit("-", 1)[0]]
            report = pod.power_capped
            total += gpus * (report.held.max_watts if report is not None and report.held is not None else 700)
        return total


def replay(
    spec_before: dict[str, Any], spec_after: dict[str, Any]
) -> tuple[list[float], list[float], float, list[rc.Outcome], Plan]:
    """Settle ``spec_before``, then reconcile ``spec_after`` round by round, the agents confirming in between,
    until nothing is left to write. Returns the planned power after each write (the fleet model), what the
    GPUs hold after each round, the new budget, the outcomes and the new plan."""
    status, replicas, pods = settled(spec_before)
    new_plan = planned(spec_after)
    fleet = Fleet(spec_after, dict(replicas), {pod.name: pod for pod in pods})
    targets = {t["name"]: t for t in spec_after["targets"]}
    model = FleetModel(
        gpus_per_replica={name: int(t.get("gpusPerReplica", 1)) for name, t in targets.items()},
        replicas=dict(replicas),
    )
    for pod in pods:
        assert pod.cap_annotation is not None
        model.set_cap(pod.name.rsplit("-", 1)[0], pod.name, int(pod.cap_annotation))
    powers = [model.watts()]
    hardware = [fleet.hardware_watts()]
    outcomes: list[rc.Outcome] = []
    for _ in range(6):
        observed = rc.Observed(
            BUDGET,
            parse_spec(spec_after),
            status,
            workloads(fleet.replicas),
            list(fleet.pods.values()),
            node_max_watts={"node-a": 700},
        )
        outcome = rc.reconcile(observed, new_plan, LATER)
        outcomes.append(outcome)
        for write in outcome.writes:
            fleet.apply(write)
            if isinstance(write, rc.AnnotatePod):
                model.set_cap(write.target, write.pod, write.cap_watts)
            elif isinstance(write, rc.ScaleWorkload):
                model.scale(write.target, write.to_replicas)
            powers.append(model.watts())
        status = outcome.status
        fleet.agents_apply(status)
        hardware.append(fleet.hardware_watts())
        if all(isinstance(write, rc.WriteStatus) for write in outcome.writes):
            break
    return powers, hardware, float(spec_after["totalWatts"]), outcomes, new_plan


@settings(max_examples=60, deadline=None)
@given(
    before=st.integers(min_value=900, max_value=6000),
    after=st.integers(min_value=900, max_value=6000),
    prefill_demand=st.integers(min_value=5, max_value=90),
    decode_demand=st.integers(min_value=5, max_value=50),
)
def test_any_change_of_budget_never_raises_planned_power_above_the_budget_on_the_way(
    before: int, after: int, prefill_demand: int, decode_demand: int
) -> None:
    def with_demand(total: int) -> dict[str, Any]:
        spec = spec_dict(total_watts=total)
        spec["targets"][0]["demand"] = prefill_demand
        spec["targets"][1]["demand"] = decode_demand
        return spec

    powers, hardware, budget_watts, outcomes, new_plan = replay(with_demand(before), with_demand(after))
    writes = [w for o in outcomes for w in o.writes]
    safe, why = walk_is_safe(powers, budget_watts)
    assert safe, f"{why}; powers={powers}; writes={writes}"
    if new_plan.feasible:
        assert powers[-1] <= budget_watts
        # What the GPUs hold never passes the higher of the two budgets, and ends within the new one.
        assert max(hardware) <= max(before, after), hardware
        assert hardware[-1] <= budget_watts
    # The walk ends exactly at the new plan's power: every write the plan needs was made.
    assert powers[-1] == sum(t.watts for t in new_plan.targets)
    final = outcomes[-1].status.condition(cond.READY)
    assert final is not None and final.reason == cond.REASON_ENFORCED, final


def test_a_new_replica_without_a_cap_is_capped_before_the_workload_is_scaled_back() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    # Someone scaled prefill up by hand: one more replica, its new pod has no cap yet.
    grown = dict(replicas, prefill=replicas["prefill"] + 1)
    newcomer = rc.PodState(name="prefill-new", labels={"app": "prefill"}, phase="Pending")
    observed = rc.Observed(BUDGET, parse_spec(spec), status, workloads(grown), [*pods, newcomer])
    outcome = rc.reconcile(observed, planned(spec), LATER)
    first = outcome.steps[0]
    assert [type(w) for w in first] == [rc.AnnotatePod]
    assert first[0].pod == "prefill-new"
    scale = outcome.steps[1]
    assert scale == (
        rc.ScaleWorkload(
            "prefill", parse_spec(spec).targets[0].workload_ref, grown["prefill"], replicas["prefill"]
        ),
    )


def test_advisory_mode_writes_the_status_and_nothing_else() -> None:
    spec = spec_dict(mode="Advisory")
    replicas = {"prefill": 1, "decode": 1}
    pods = pods_for(replicas, {"prefill": None, "decode": None})
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads(replicas), pods)
    outcome = rc.reconcile(observed, planned(spec), NOW)
    assert [type(w) for w in outcome.writes] == [rc.WriteStatus]
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.reason == cond.REASON_ADVISORY


def test_the_older_budget_owns_a_shared_pod_and_the_younger_reports_conflict_and_keeps_off() -> None:
    spec = spec_dict()
    replicas = {"prefill": 2, "decode": 1}
    pods = pods_for(replicas, {"prefill": None, "decode": None})
    older = rc.OtherBudget(name="first", created="2025-12-31T00:00:00Z", selectors=("app=prefill",))
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads(replicas), pods, [older])
    outcome = rc.reconcile(observed, planned(spec), NOW)
    touched = {w.pod for w in outcome.writes if isinstance(w, rc.AnnotatePod)}
    assert touched == {"decode-0"}
    assert not any(isinstance(w, rc.ScaleWorkload) and w.target == "prefill" for w in outcome.writes)
    conflict = outcome.status.condition(cond.CONFLICT)
    assert conflict is not None and conflict.status == ConditionStatus.TRUE
    assert "pod inference/prefill-0" in conflict.message and "first" in conflict.message
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.status == ConditionStatus.FALSE
    assert [e.reason for e in outcome.events if e.type == "Warning"] == ["Conflict"]


def test_a_younger_budget_does_not_take_pods_from_the_older_one() -> None:
    spec = spec_dict()
    replicas = {"prefill": 1, "decode": 1}
    pods = pods_for(replicas, {"prefill": None, "decode": None})
    younger = rc.OtherBudget(name="second", created="2026-02-01T00:00:00Z", selectors=("app=prefill",))
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads(replicas), pods, [younger])
    outcome = rc.reconcile(observed, planned(spec), NOW)
    assert {w.pod for w in outcome.writes if isinstance(w, rc.AnnotatePod)} == {"prefill-0", "decode-0"}
    conflict = outcome.status.condition(cond.CONFLICT)
    assert conflict is not None and conflict.status == ConditionStatus.FALSE


def test_a_missing_workload_gives_targets_resolved_false_naming_it() -> None:
    spec = spec_dict()
    missing = rc.WorkloadMissing(cond.REASON_WORKLOAD_NOT_FOUND, "Deployment inference/decode not found")
    found: dict[str, rc.WorkloadState | rc.WorkloadMissing] = {
        "prefill": rc.WorkloadState(1, "app=prefill"),
        "decode": missing,
    }
    pods = pods_for({"prefill": 1}, {"prefill": None})
    outcome = rc.reconcile(rc.Observed(BUDGET, parse_spec(spec), None, found, pods), planned(spec), NOW)
    resolved = outcome.status.condition(cond.TARGETS_RESOLVED)
    assert resolved is not None and resolved.status == ConditionStatus.FALSE
    assert resolved.reason == cond.REASON_WORKLOAD_NOT_FOUND
    assert "target decode" in resolved.message and "inference/decode" in resolved.message
    assert not any(getattr(w, "target", None) == "decode" for w in outcome.writes)
    decode = outcome.status.target("decode")
    assert decode is not None and decode.selector is None


def test_an_invalid_spec_gives_ready_false_naming_the_field_and_keeps_the_last_grants() -> None:
    status, _, _ = settled(spec_dict())
    bad = spec_dict()
    bad["targets"][1]["name"] = "prefill"
    try:
        parse_spec(bad)
    except InvalidSpecError as error:
        outcome = rc.reconcile_invalid(rc.BudgetRef("llm", "inference", NOW, 2), status, error, LATER)
    else:
        raise AssertionError("duplicate target names must be refused")
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.status == ConditionStatus.FALSE
    assert ready.reason == cond.REASON_INVALID_SPEC and "spec.targets" in ready.message
    assert outcome.status.targets == status.targets
    assert outcome.status.observed_generation == 2
    assert [type(w) for w in outcome.writes] == [rc.WriteStatus]


def test_pods_the_budget_no_longer_selects_are_released_last() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    stray = rc.PodState(
        name="old-role-0", labels={"app": "old-role"}, cap_annotation="300", budget_annotation="llm"
    )
    observed = rc.Observed(BUDGET, parse_spec(spec), status, workloads(replicas), [*pods, stray])
    outcome = rc.reconcile(observed, planned(spec), LATER)
    assert outcome.writes[-1] == rc.ReleasePod("old-role-0")


def test_release_on_deletion_touches_only_the_pods_of_this_budget() -> None:
    pods = [
        rc.PodState(name="a", cap_annotation="300", budget_annotation="llm"),
        rc.PodState(name="b", cap_annotation="300", budget_annotation="other"),
        rc.PodState(name="c"),
    ]
    assert rc.release_writes("llm", pods) == [rc.ReleasePod("a")]


def test_an_infeasible_budget_holds_the_floor_and_says_by_how_much() -> None:
    spec = spec_dict(total_watts=100)
    replicas = {"prefill": 1, "decode": 1}
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads(replicas), [])
    the_plan = planned(spec)
    outcome = rc.reconcile(observed, the_plan, NOW)
    infeasible = outcome.status.condition(cond.INFEASIBLE)
    assert infeasible is not None and infeasible.status == ConditionStatus.TRUE
    assert f"{the_plan.infeasible_by_watts:g} W over" in infeasible.message
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.reason == cond.REASON_FLOOR_EXCEEDS_BUDGET


def test_a_planned_cap_the_pod_contract_cannot_carry_is_reported_against_the_cap_range() -> None:
    spec = spec_dict()
    spec["targets"][0]["capWatts"] = {"min": 20000, "max": 20000}
    spec["targets"][0]["profile"]["points"] = [{"watts": 10000, "throughput": 10}]
    error = rc.cap_error(parse_spec(spec), planned(spec))
    assert error is not None and error.field == "spec.targets[0].capWatts.max"


def test_ready_waits_for_the_pods_of_new_replicas_to_exist_and_be_capped() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    missing_one = [pod for pod in pods if pod.name != "decode-0"]
    observed = rc.Observed(BUDGET, parse_spec(spec), status, workloads(replicas), missing_one)
    outcome = rc.reconcile(observed, planned(spec), LATER)
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.status == ConditionStatus.FALSE
    assert ready.reason == cond.REASON_ENFORCING and "1 planned pod(s) not created yet" in ready.message


# ---------------------------------------------------------------------------
# Ordering on the hardware: what the agents report


def _lowered(before: int = 1500, after: int = 900) -> tuple[dict[str, Any], BudgetStatus, Fleet]:
    spec_before, spec_after = spec_dict(total_watts=before), spec_dict(total_watts=after)
    for spec in (spec_before, spec_after):
        spec["targets"][0]["demand"] = 30
        spec["targets"][1]["demand"] = 30
    status, replicas, pods = settled(spec_before)
    return spec_after, status, Fleet(spec_after, dict(replicas), {pod.name: pod for pod in pods})


def _reconcile_round(spec: dict[str, Any], status: BudgetStatus, fleet: Fleet, **extra: Any) -> rc.Outcome:
    observed = rc.Observed(
        BUDGET,
        parse_spec(spec),
        status,
        workloads(fleet.replicas),
        list(fleet.pods.values()),
        node_max_watts={"node-a": 700},
        **extra,
    )
    outcome = rc.reconcile(observed, planned(spec), LATER)
    for write in outcome.writes:
        fleet.apply(write)
    return outcome


def test_a_raise_waits_until_the_agents_confirm_the_lowered_caps() -> None:
    spec, status, fleet = _lowered()
    first = _reconcile_round(spec, status, fleet)
    phases = [type(w) for w in first.writes]
    assert rc.AnnotatePod in phases and rc.WriteStatus in phases
    ready = first.status.condition(cond.READY)
    assert ready is not None and ready.reason == cond.REASON_ENFORCING and "raise(s) held" in ready.message
    assert first.unconfirmed, "the lowered pods are not confirmed yet"
    # Nothing confirmed yet (the agents are slow): the raise still waits, however often it is looked at.
    again = _reconcile_round(spec, first.status, fleet)
    assert not any(
        isinstance(w, rc.AnnotatePod) and w.cap_watts > (w.previous_cap_watts or 0) for w in again.writes
    )
    # The agents confirm: the raise goes out.
    fleet.agents_apply(again.status)
    raised = _reconcile_round(spec, again.status, fleet)
    assert any(isinstance(w, rc.AnnotatePod) for w in raised.writes), raised.writes
    fleet.agents_apply(raised.status)
    done = _reconcile_round(spec, raised.status, fleet)
    ready = done.status.condition(cond.READY)
    assert ready is not None and ready.reason == cond.REASON_ENFORCED
    assert done.status.enforced_watts is not None and done.status.enforced_watts <= 900
    assert all(t.pods_enforced == t.planned_replicas for t in done.status.targets)


def test_a_pod_no_agent_reports_on_counts_at_its_nodes_gpu_maximum() -> None:
    unreported = rc.PodState(name="p", node_name="n", cap_annotation="200", budget_annotation="llm")
    assert rc.pod_bound_watts(unreported, 200, 2, 700) == 1400
    pending = rc.PodState(name="p")  # not bound: no GPU yet, capped as it gets one
    assert rc.pod_bound_watts(pending, 200, 2, 700) == 400
    waiting = replace(unreported, power_capped=rc.CappedReport(False, "AwaitingDevices", None))
    assert rc.pod_bound_watts(waiting, 200, 2, 700) == 400
    stale = replace(unreported, power_capped=held(300, 2))  # still holds the old, higher cap
    assert rc.pod_bound_watts(stale, 200, 2, 700) == 600
    assert not rc.confirmed(stale, 200)
    assert rc.confirmed(replace(unreported, power_capped=held(200, 2)), 200)
    unreadable = replace(unreported, power_capped=rc.CappedReport(False, "NvmlError", None))
    assert rc.pod_bound_watts(unreadable, 200, 2, 700) == 1400
    stopped = replace(unreported, power_capped=rc.CappedReport(False, "AgentStopped", HeldWatts(2, 700)))
    assert rc.pod_bound_watts(stopped, 200, 2, 700) == 1400


def test_a_pod_unconfirmed_past_the_timeout_stalls_enforcement_naming_it_and_its_node() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    silent = replace(pods[0], power_capped=None, node_name="gpu-7")
    rest = pods[1:]
    waiting = rc.reconcile(
        rc.Observed(
            BUDGET, parse_spec(spec), status, workloads(replicas), [silent, *rest],
            unconfirmed_seconds={silent.name: 10.0}, enforcement_timeout_seconds=60.0,
        ),
        planned(spec),
        LATER,
    )  # fmt: skip
    stalled = waiting.status.condition(cond.ENFORCEMENT_STALLED)
    assert stalled is not None and stalled.status == ConditionStatus.FALSE
    assert stalled.reason == cond.REASON_AWAITING_CONFIRMATION
    assert waiting.unconfirmed == (silent.name,) and waiting.recheck_seconds == 50.0
    ready = waiting.status.condition(cond.READY)
    assert ready is not None and ready.reason == cond.REASON_ENFORCING

    late = rc.reconcile(
        rc.Observed(
            BUDGET, parse_spec(spec), waiting.status, workloads(replicas), [silent, *rest],
            unconfirmed_seconds={silent.name: 61.0}, enforcement_timeout_seconds=60.0,
        ),
        planned(spec),
        LATER,
    )  # fmt: skip
    stalled = late.status.condition(cond.ENFORCEMENT_STALLED)
    assert stalled is not None and stalled.status == ConditionStatus.TRUE
    assert stalled.reason == cond.REASON_PODS_UNCONFIRMED
    assert f"pod inference/{silent.name} on node gpu-7" in stalled.message and "no report" in stalled.message
    assert [e.reason for e in late.events if e.type == "Warning"] == [cond.ENFORCEMENT_STALLED]
    # The pod's GPUs count at the node's most: 700 W per GPU instead of its cap.
    assert late.status.enforced_watts is not None and late.status.enforced_watts > late.status.planned_watts


def test_enforced_pods_and_watts_come_from_the_reports_not_the_annotations() -> None:
    spec = spec_dict()
    status, replicas, pods = settled(spec)
    annotated_only = [replace(pod, power_capped=None) for pod in pods]
    outcome = rc.reconcile(
        rc.Observed(BUDGET, parse_spec(spec), status, workloads(replicas), annotated_only),
        planned(spec),
        LATER,
    )
    assert all(
        t.pods_annotated == t.planned_replicas and t.pods_enforced == 0 for t in outcome.status.targets
    )
    ready = outcome.status.condition(cond.READY)
    assert ready is not None and ready.status == ConditionStatus.FALSE
    confirmed_all = rc.reconcile(
        rc.Observed(BUDGET, parse_spec(spec), status, workloads(replicas), pods), planned(spec), LATER
    )
    assert all(t.pods_enforced == t.planned_replicas for t in confirmed_all.status.targets)
    assert confirmed_all.status.enforced_watts == planned(spec).watts


def test_the_status_says_per_target_where_its_profile_came_from_and_which_points_were_raised() -> None:
    spec = spec_dict()
    spec["targets"][0]["profile"] = {
        "points": [
            {"watts": 200, "throughput": 10},
            {"watts": 300, "throughput": 14.2},
            {"watts": 350, "throughput": 14.1},
            {"watts": 400, "throughput": 16},
        ]
    }
    spec["targets"][1]["profile"] = {"preset": "decode", "peakThroughput": 9, "maxWatts": 400}
    observed = rc.Observed(BUDGET, parse_spec(spec), None, workloads({"prefill": 1, "decode": 1}), [])
    status = rc.reconcile(observed, planned(spec), NOW).status
    prefill, decode = status.target("prefill"), status.target("decode")
    assert prefill is not None and decode is not None
    assert (prefill.profile_source, prefill.profile_adjusted) == ("Points", True)
    assert [
        (r.index, r.watts, r.throughput, r.used_throughput) for r in prefill.profile_raised_points or []
    ] == [(2, 350, 14.1, 14.2)]
    assert (decode.profile_source, decode.profile_adjusted, decode.profile_raised_points) == (
        "Preset",
        False,
        None,
    )
    body = rc.status_body(status)
    assert body["targets"][0]["profileRaisedPoints"] == [
        {"index": 2, "watts": 350.0, "throughput": 14.1, "usedThroughput": 14.2}
    ]
    assert "profileRaisedPoints" not in body["targets"][1]
