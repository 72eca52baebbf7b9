"""The per-GPU cap policy: a table of cases, then properties over any pods and constraints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_agent.cluster import BudgetView, Grant, PodKey, PodView
from gpupower_agent.nvml import GpuConstraints
from gpupower_agent.policy import Action, GpuSnapshot, Reason, decide_gpu, plan_node
from gpupower_agent.trust import BudgetIndex, PodCap, Verdict, pod_caps
from gpupower_api.selectors import parse_selector

H100 = GpuConstraints(min_watts=200, max_watts=700, default_watts=700)


def cap(pod: str, watts: int, safe_default_watts: int = 300) -> PodCap:
    return PodCap(PodKey("ns", pod), watts, safe_default_watts, Verdict.TRUSTED)


@pytest.mark.parametrize(
    ("caps", "current", "capped_before", "action", "reason", "target", "call"),
    [
        # one pod: its cap
        ([cap("a", 450)], 700, False, Action.CAP, Reason.ONE_POD, 450, True),
        # already there: no NVML call
        ([cap("a", 450)], 450, True, Action.CAP, Reason.ONE_POD, 450, False),
        # several that agree: that cap
        ([cap("a", 450), cap("b", 450)], 700, False, Action.CAP, Reason.PODS_AGREE, 450, True),
        # several that disagree: the lowest safe default among them
        ([cap("a", 450, 350), cap("b", 500, 300)], 700, False, Action.CAP, Reason.CONFLICT, 300, True),
        # a pod counted twice (two processes, two containers) is still one pod
        ([cap("a", 450), cap("a", 450)], 700, False, Action.CAP, Reason.ONE_POD, 450, True),
        # below what the GPU accepts: clamped up
        ([cap("a", 150)], 700, False, Action.CAP, Reason.ONE_POD, 200, True),
        # above what the GPU accepts: clamped down
        ([cap("a", 900)], 450, False, Action.CAP, Reason.ONE_POD, 700, True),
        # the safe default is clamped too
        ([cap("a", 450, 100), cap("b", 500, 150)], 700, False, Action.CAP, Reason.CONFLICT, 200, True),
        # capped earlier, no managed pod now: back to the default
        ([], 450, True, Action.RESTORE, Reason.NO_MANAGED_POD, 700, True),
        ([], 700, True, Action.RESTORE, Reason.NO_MANAGED_POD, 700, False),
        # never capped, no managed pod: left alone, whatever its limit
        ([], 330, False, Action.LEAVE, Reason.UNMANAGED, None, False),
        # current limit unreadable: call NVML to be sure
        ([cap("a", 450)], None, True, Action.CAP, Reason.ONE_POD, 450, True),
    ],
)
def test_decide_gpu_table(
    caps: list[PodCap],
    current: int | None,
    capped_before: bool,
    action: Action,
    reason: Reason,
    target: int | None,
    call: bool,
) -> None:
    decision = decide_gpu("GPU-x", caps, H100, current, capped_before)
    assert (decision.action, decision.reason, decision.target_watts, decision.needs_nvml_call) == (
        action,
        reason,
        target,
        call,
    )


def test_clamping_is_reported_with_the_requested_cap() -> None:
    decision = decide_gpu("GPU-x", [cap("a", 150)], H100, 700, False)
    assert decision.clamped
    assert (decision.requested_watts, decision.target_watts) == (150, 200)
    assert not decide_gpu("GPU-x", [cap("a", 450)], H100, 700, False).clamped


def test_conflicting_caps_on_one_gpu_fall_back_to_safe_default() -> None:
    decision = decide_gpu("GPU-x", [cap("b", 500, 320), cap("a", 400, 310)], H100, 700, False)
    assert decision.reason is Reason.CONFLICT
    assert decision.target_watts == 310
    assert decision.pods == (PodKey("ns", "a"), PodKey("ns", "b"))


def _pod(name: str, labels: dict[str, str], budget: str | None = None, value: str | None = None) -> PodView:
    return PodView(PodKey("ns", name), f"uid-{name}", labels, budget, value, finished=False)


def test_plan_node_applies_trust_then_the_gpu_policy() -> None:
    budget = BudgetView("ns", "llm", 300, (Grant("decode", parse_selector("app=decode"), 500),))
    pods = [
        _pod("trusted", {"app": "decode"}, "llm", "450"),
        _pod("greedy", {"app": "decode"}, "llm", "650"),
        _pod("replica", {"app": "decode"}),
        _pod("bystander", {"app": "web"}),
    ]
    gpus = [GpuSnapshot(f"GPU-{i}", H100, 700) for i in range(5)]
    assignments = {
        "GPU-0": [PodKey("ns", "trusted")],
        "GPU-1": [PodKey("ns", "greedy")],
        "GPU-2": [PodKey("ns", "replica")],
        "GPU-3": [PodKey("ns", "bystander")],
        "GPU-4": [],
    }
    plan = plan_node(gpus, pod_caps(pods, BudgetIndex.build([budget]), 250), assignments, {"GPU-4"})
    targets = {d.uuid: (d.action, d.target_watts) for d in plan.decisions}
    assert targets == {
        "GPU-0": (Action.CAP, 450),
        "GPU-1": (Action.CAP, 300),
        "GPU-2": (Action.CAP, 300),
        "GPU-3": (Action.LEAVE, None),
        "GPU-4": (Action.RESTORE, 700),
    }
    assert PodKey("ns", "bystander") not in plan.pod_caps


def test_finished_pods_hold_no_gpu() -> None:
    budget = BudgetView("ns", "llm", 300, (Grant("decode", parse_selector("app=decode"), 500),))
    done = PodView(PodKey("ns", "done"), "u", {"app": "decode"}, "llm", "450", finished=True)
    caps = pod_caps([done], BudgetIndex.build([budget]), 250)
    plan = plan_node([GpuSnapshot("GPU-0", H100, 450)], caps, {"GPU-0": [done.key]}, {"GPU-0"})
    assert plan.decisions[0].action is Action.RESTORE


# ---------------------------------------------------------------------------
# Properties


@st.composite
def constraints(draw: st.DrawFn) -> GpuConstraints:
    low = draw(st.integers(50, 600))
    high = draw(st.integers(low, 1200))
    return GpuConstraints(low, high, draw(st.integers(low, high)))


pod_cap_lists = st.lists(
    st.builds(
        lambda name, watts, safe: PodCap(PodKey("ns", name), watts, safe, Verdict.TRUSTED),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(1, 10_000),
        st.integers(1, 10_000),
    ),
    max_size=6,
)


@given(pod_cap_lists, constraints(), st.one_of(st.none(), st.integers(1, 2000)), st.booleans())
def test_decided_limit_is_always_within_the_gpu_constraints(
    caps: list[PodCap], limits: GpuConstraints, current: int | None, capped_before: bool
) -> None:
    decision = decide_gpu("GPU-x", caps, limits, current, capped_before)
    if decision.target_watts is not None:
        assert limits.min_watts <= decision.target_watts <= limits.max_watts


@given(pod_cap_lists.filter(bool), constraints(), st.one_of(st.none(), st.integers(1, 2000)), st.booleans())
def test_a_gpu_with_a_managed_pod_is_never_left_uncapped(
    caps: list[PodCap], limits: GpuConstraints, current: int | None, capped_before: bool
) -> None:
    decision = decide_gpu("GPU-x", caps, limits, current, capped_before)
    assert decision.action is Action.CAP
    assert decision.target_watts is not None
    # never more than a cap or safe default of an involved pod, once clamped
    entitled = max(max(c.cap_watts, c.safe_default_watts) for c in caps)
    assert decision.target_watts <= max(entitled, limits.min_watts)


@given(pod_cap_lists, constraints(), st.integers(1, 2000), st.booleans())
def test_applying_a_decision_makes_the_next_one_a_no_op(
    caps: list[PodCap], limits: GpuConstraints, current: int, capped_before: bool
) -> None:
    first = decide_gpu("GPU-x", caps, limits, current, capped_before)
    after = first.target_watts if first.target_watts is not None else current
    second = decide_gpu("GPU-x", caps, limits, after, capped_before or first.action is Action.CAP)
    assert second.target_watts == first.target_watts
    assert not second.needs_nvml_call


@given(pod_cap_lists, constraints())
def test_the_order_and_repetition_of_pods_does_not_matter(caps: list[PodCap], limits: GpuConstraints) -> None:
    unique = {c.pod: c for c in reversed(caps)}  # decide_gpu keeps each pod's first entry
    forward = decide_gpu("GPU-x", caps, limits, 700, False)
    shuffled = decide_gpu("GPU-x", list(reversed(list(unique.values()))) * 2, limits, 700, False)
    assert (forward.action, forward.target_watts, forward.pods) == (
        shuffled.action,
        shuffled.target_watts,
        shuffled.pods,
    )
