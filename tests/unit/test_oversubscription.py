"""What the operator makes of the draw guard's engagements: a power factor floor that rises, then relaxes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_api.models import parse_spec
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core.oversubscription import GuardMemory, floored, next_memory, remembered
from gpupower_operator.core.planner import plan, problem_from_spec

T0 = "2026-12-01T10:00:00+00:00"
T30 = "2026-12-01T10:00:30+00:00"
T90 = "2026-12-01T10:01:30+00:00"
T_LATE = "2026-12-01T11:00:00+00:00"


def test_an_engagement_moves_the_floor_halfway_to_one_at_most_once_a_minute() -> None:
    first = next_memory(GuardMemory(), 3, 0.5, T0, relax_seconds=600)
    assert first == GuardMemory(3, 0.75, T0)
    soon = next_memory(first, 1, 0.5, T30, relax_seconds=600)  # the same surge, reported later
    assert (soon.engagements, soon.floor) == (4, 0.75)
    later = next_memory(soon, 1, 0.5, T90, relax_seconds=600)
    assert later.floor == pytest.approx(0.875)
    assert floored(0.5, later) == pytest.approx(0.875)
    assert floored(0.95, later) == 0.95


def test_the_floor_is_dropped_after_relax_seconds_without_an_engagement() -> None:
    engaged = GuardMemory(2, 0.75, T0)
    assert next_memory(engaged, 0, 0.5, T30, relax_seconds=600) == engaged
    relaxed = next_memory(engaged, 0, 0.5, T_LATE, relax_seconds=600)
    assert relaxed == GuardMemory(2, None, T0)
    assert floored(0.5, relaxed) == 0.5


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0.05, 1.5)), max_size=30))
def test_the_floor_never_leaves_0_to_1_and_the_count_only_grows(events: list[tuple[int, float]]) -> None:
    memory = GuardMemory()
    for minute, (engagements, factor) in enumerate(events):
        now = f"2026-12-01T{10 + minute // 60:02d}:{minute % 60:02d}:00+00:00"
        after = next_memory(memory, engagements, factor, now, relax_seconds=600)
        assert after.engagements == memory.engagements + engagements
        assert after.floor is None or 0.0 < after.floor <= 1.0
        if engagements:
            assert floored(factor, after) >= factor
        memory = after


def test_the_status_carries_both_accountings_and_the_guards_share() -> None:
    raw = {
        "totalWatts": 4000,
        "safeDefaultWatts": 200,
        "oversubscription": {"maxRatio": 1.5},
        "targets": [
            {
                "name": "decode",
                "workloadRef": {"name": "decode"},
                "maxReplicas": 16,
                "capWatts": {"min": 400, "max": 700},
                "profile": {"points": [{"watts": 400, "throughput": 8}, {"watts": 700, "throughput": 10}]},
                "demand": 500,
            }
        ],
    }
    spec = parse_spec(raw)
    the_plan = plan(
        problem_from_spec(spec, corrections={"decode": (0.5, 1.0)}, gpu_min_watts={"decode": 200})
    )
    decode = the_plan.target("decode")
    assert the_plan.caps_watts > 4000 >= the_plan.watts
    observed = rc.Observed(
        rc.BudgetRef("llm", "inference", T0, 1),
        spec,
        None,
        {"decode": rc.WorkloadState(decode.replicas, "app=decode")},
        [],
        guard_memory={"decode": remembered(None)},
    )
    status = rc.reconcile(observed, the_plan, "2026-12-01T10:00:00Z").status
    target = status.target("decode")
    assert target is not None
    assert status.caps_watts == the_plan.caps_watts and status.planned_draw_watts == the_plan.watts
    assert status.caps_limit_watts == pytest.approx(4000 * 1.5), "totalWatts x maxRatio"
    assert target.gpu_draw_watts == pytest.approx(decode.cap_watts * 0.5)
    # The guard's share: the planned draw scaled up to the whole budget, never above the cap.
    assert target.gpu_share_watts == pytest.approx(
        min(decode.cap_watts, decode.cap_watts * 0.5 * 4000 / the_plan.watts), abs=0.1
    )
    assert (target.guard_engagements, target.guarded_pods, target.draw_factor_floor) == (0, 0, None)
