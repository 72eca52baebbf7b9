"""Conditions keep their transition time until their status flips."""

from __future__ import annotations

from gpupower_api.models import ConditionStatus
from gpupower_operator.core import conditions as cond


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = cond.merge_conditions([], [cond.true(cond.READY, cond.REASON_ENFORCED, "ok")], 1, "t1")
    same = cond.merge_conditions(first, [cond.true(cond.READY, cond.REASON_ENFORCED, "still ok")], 2, "t2")
    assert same[0].last_transition_time == "t1" and same[0].message == "still ok"
    assert same[0].observed_generation == 2
    flipped = cond.merge_conditions(same, [cond.false(cond.READY, cond.REASON_INVALID_SPEC, "bad")], 3, "t3")
    assert flipped[0].status == ConditionStatus.FALSE and flipped[0].last_transition_time == "t3"


def test_conditions_are_listed_in_a_fixed_order_and_unknown_ones_are_kept() -> None:
    old = cond.merge_conditions([], [cond.true("Custom", "Because", "kept")], 1, "t0")
    merged = cond.merge_conditions(
        old,
        [
            cond.false(cond.CONFLICT, cond.REASON_NO_CONFLICT, ""),
            cond.true(cond.READY, cond.REASON_ENFORCED, ""),
        ],
        1,
        "t1",
    )
    assert [c.type for c in merged] == [cond.READY, cond.CONFLICT, "Custom"]
