"""The per-GPU cap policy on a node in a power domain: parked idle GPUs, capped unmanaged pods, new
replicas that start parked; then properties over any pods, constraints and domain settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_agent.cluster import PodKey
from gpupower_agent.nvml import GpuConstraints
from gpupower_agent.policy import (
    Action,
    GpuSnapshot,
    OtherHolders,
    Reason,
    clamp_watts,
    decide_gpu,
    decide_gpu_in_domain,
    parked_watts,
    plan_node,
)
from gpupower_agent.trust import PodCap, Verdict
from gpupower_api.domains import NodePlace

H100 = GpuConstraints(min_watts=200, max_watts=700, default_watts=700)
BUDGET = ("ns", "llm")


def place(idle: int | None = None, unmanaged: int | None = None) -> NodePlace:
    return NodePlace(("rack",), (("rack",),), idle, unmanaged)


def trusted(pod: str, watts: int, safe: int = 300) -> PodCap:
    return PodCap(PodKey("ns", pod), watts, safe, Verdict.TRUSTED, budget=BUDGET)


def awaiting(pod: str, fallback: int = 300) -> PodCap:
    return PodCap(PodKey("ns", pod), fallback, fallback, Verdict.AWAITING_CAP, budget=BUDGET)


def unselected(pod: str, safe: int = 250) -> PodCap:
    """A pod no budget selects that carries the annotations: the trust rule gives it a safe default."""
    return PodCap(PodKey("ns", pod), safe, safe, Verdict.UNTRUSTED, budget=None)


NOBODY = OtherHolders()
STRANGER = OtherHolders(unmanaged=(PodKey("ns", "stranger"),))
UNSEEN = OtherHolders(unseen=1)
CAP, UNMANAGED_CAP, AWAITING_PARKED = Action.CAP, Reason.UNMANAGED_CAP, Reason.AWAITING_CAP_PARKED


@pytest.mark.parametrize(
    ("caps", "others", "where", "current", "capped_before", "action", "reason", "target"),
    [
        # idle: parked at idleGpuWatts, or at the GPU's minimum when unset; clamped into the range
        ([], NOBODY, place(idle=250), 700, False, CAP, Reason.PARKED, 250),
        ([], NOBODY, place(), 700, True, CAP, Reason.PARKED, 200),
        ([], NOBODY, place(idle=100), 700, False, CAP, Reason.PARKED, 200),
        ([], NOBODY, place(idle=900), 700, False, CAP, Reason.PARKED, 700),
        # unmanaged pods: capped at unmanagedGpuWatts (clamped) when set ...
        ([], STRANGER, place(unmanaged=300), 700, False, CAP, UNMANAGED_CAP, 300),
        ([], STRANGER, place(unmanaged=50), 700, True, CAP, UNMANAGED_CAP, 200),
        ([], UNSEEN, place(unmanaged=300), 700, False, CAP, UNMANAGED_CAP, 300),
        ([unselected("a")], NOBODY, place(unmanaged=220), 700, False, CAP, UNMANAGED_CAP, 220),
        ([unselected("a")], NOBODY, place(unmanaged=400), 700, False, CAP, Reason.ONE_POD, 250),
        # ... left alone when unset, as outside a domain (a GPU parked before gets its default back) ...
        ([], STRANGER, place(), 700, False, Action.LEAVE, Reason.UNMANAGED, None),
        ([], STRANGER, place(), 200, True, Action.RESTORE, Reason.NO_MANAGED_POD, 700),
        # ... except for a pod the agent cannot see: its parked GPU is not raised
        ([], UNSEEN, place(), 200, True, Action.LEAVE, Reason.UNMANAGED, None),
        # sharing a GPU with a managed pod: the lower of the two
        ([trusted("a", 450)], STRANGER, place(unmanaged=300), 700, True, CAP, UNMANAGED_CAP, 300),
        ([trusted("a", 250)], STRANGER, place(unmanaged=300), 700, True, CAP, Reason.ONE_POD, 250),
        # a new replica awaiting its cap starts at its parked limit, then its trusted cap applies
        ([awaiting("new")], NOBODY, place(idle=150), 200, True, CAP, AWAITING_PARKED, 200),
        ([awaiting("new")], NOBODY, place(idle=250), 250, True, CAP, AWAITING_PARKED, 250),
        ([awaiting("new", 200)], NOBODY, place(idle=250), 250, True, CAP, Reason.ONE_POD, 200),
        ([trusted("new", 450)], NOBODY, place(idle=250), 250, True, CAP, Reason.ONE_POD, 450),
        # a trusted pod is not held down by the domain
        ([trusted("a", 450)], NOBODY, place(idle=100, unmanaged=150), 700, False, CAP, Reason.ONE_POD, 450),
    ],
)  # fmt: skip
def test_decide_gpu_in_domain_table(
    caps: list[PodCap],
    others: OtherHolders,
    where: NodePlace,
    current: int,
    capped_before: bool,
    action: Action,
    reason: Reason,
    target: int | None,
) -> None:
    decision = decide_gpu_in_domain("GPU-x", caps, H100, current, capped_before, where, others)
    assert (decision.action, decision.reason, decision.target_watts) == (action, reason, target)
    assert decision.needs_nvml_call == (target is not None and current != target)


def test_a_parked_limit_below_the_gpu_range_is_reported_as_clamped() -> None:
    decision = decide_gpu_in_domain("GPU-x", [], H100, 700, False, place(idle=100))
    assert decision.clamped and (decision.requested_watts, decision.target_watts) == (100, 200)
    assert not decide_gpu_in_domain("GPU-x", [], H100, 700, False, place()).clamped


def test_plan_node_parks_idle_gpus_only_in_a_domain() -> None:
    gpus = [GpuSnapshot(f"GPU-{i}", H100, 700) for i in range(3)]
    caps = {PodKey("ns", "a"): trusted("a", 450)}
    assignments = {"GPU-0": [PodKey("ns", "a")], "GPU-1": [PodKey("ns", "stranger")], "GPU-2": []}
    others = {"GPU-1": STRANGER}
    outside = plan_node(gpus, caps, assignments, set(), others=others)
    assert [(d.action, d.target_watts) for d in outside.decisions] == [
        (Action.CAP, 450),
        (Action.LEAVE, None),
        (Action.LEAVE, None),
    ]
    inside = plan_node(gpus, caps, assignments, set(), place=place(idle=150, unmanaged=300), others=others)
    assert [(d.reason, d.target_watts) for d in inside.decisions] == [
        (Reason.ONE_POD, 450),
        (Reason.UNMANAGED_CAP, 300),
        (Reason.PARKED, 200),
    ]
    # A place that is in no domain is the same as none.
    assert plan_node(gpus, caps, assignments, set(), place=NodePlace(), others=others) == outside


# ---------------------------------------------------------------------------
# Properties


@st.composite
def constraints(draw: st.DrawFn) -> GpuConstraints:
    low = draw(st.integers(50, 600))
    high = draw(st.integers(low, 1200))
    return GpuConstraints(low, high, draw(st.integers(low, high)))


pod_caps = st.lists(
    st.builds(
        lambda name, watts, safe, verdict, managed: PodCap(
            PodKey("ns", name),
            watts if verdict is Verdict.TRUSTED else min(watts, safe),
            safe,
            verdict,
            budget=BUDGET if managed else None,
        ),
        st.sampled_from(["a", "b", "c"]),
        st.integers(1, 2000),
        st.integers(1, 2000),
        st.sampled_from(list(Verdict)),
        st.booleans(),
    ),
    max_size=4,
)
others = st.builds(
    OtherHolders,
    st.lists(st.sampled_from([PodKey("ns", "x"), PodKey("ns", "y")]), max_size=2, unique=True).map(tuple),
    st.integers(0, 2),
)
places = st.builds(
    lambda idle, unmanaged: place(idle, unmanaged),
    st.one_of(st.none(), st.integers(1, 2000)),
    st.one_of(st.none(), st.integers(1, 2000)),
)
limits = st.one_of(st.none(), st.integers(1, 2000))


@given(pod_caps, others, places, constraints(), limits, st.booleans())
def test_a_gpu_in_a_domain_never_goes_above_what_the_rule_allows(
    caps: list[PodCap],
    holders: OtherHolders,
    where: NodePlace,
    gpu: GpuConstraints,
    current: int | None,
    capped_before: bool,
) -> None:
    decision = decide_gpu_in_domain("GPU-x", caps, gpu, current, capped_before, where, holders)
    if decision.target_watts is None:
        return
    assert gpu.min_watts <= decision.target_watts <= gpu.max_watts
    usual = decide_gpu("GPU-x", caps, gpu, current, capped_before)
    if usual.action is Action.CAP and usual.target_watts is not None:
        assert decision.target_watts <= usual.target_watts
    unmanaged = holders.any or any(cap.budget is None for cap in caps)
    if unmanaged and where.unmanaged_gpu_watts is not None:
        assert decision.target_watts <= clamp_watts(where.unmanaged_gpu_watts, gpu)
    if any(cap.verdict is Verdict.AWAITING_CAP for cap in caps):
        assert decision.target_watts <= parked_watts(where, gpu)


@given(places, constraints(), limits, st.booleans())
def test_an_idle_gpu_in_a_domain_always_ends_at_its_parked_limit(
    where: NodePlace, gpu: GpuConstraints, current: int | None, capped_before: bool
) -> None:
    decision = decide_gpu_in_domain("GPU-x", [], gpu, current, capped_before, where)
    assert decision.action is Action.CAP and decision.reason is Reason.PARKED
    assert decision.target_watts == parked_watts(where, gpu)
    if where.idle_gpu_watts is not None and gpu.min_watts <= where.idle_gpu_watts <= gpu.max_watts:
        assert decision.target_watts == where.idle_gpu_watts
    again = decide_gpu_in_domain("GPU-x", [], gpu, decision.target_watts, True, where)
    assert not again.needs_nvml_call


@given(pod_caps, others, constraints(), limits, st.booleans())
def test_outside_a_domain_the_decision_is_todays(
    caps: list[PodCap], holders: OtherHolders, gpu: GpuConstraints, current: int | None, capped_before: bool
) -> None:
    snapshot = GpuSnapshot("GPU-x", gpu, current)
    assignments = {"GPU-x": [cap.pod for cap in caps]}
    by_pod = {cap.pod: cap for cap in reversed(caps)}
    capped = {"GPU-x"} if capped_before else set()
    today = plan_node([snapshot], by_pod, assignments, capped)
    for where in (None, NodePlace()):
        assert (
            plan_node([snapshot], by_pod, assignments, capped, place=where, others={"GPU-x": holders})
            == today
        )
    assert today.decisions[0] == decide_gpu("GPU-x", by_pod.values(), gpu, current, capped_before)


@given(pod_caps, others, places, constraints(), st.integers(1, 2000), st.booleans())
def test_applying_a_decision_in_a_domain_makes_the_next_one_a_no_op(
    caps: list[PodCap],
    holders: OtherHolders,
    where: NodePlace,
    gpu: GpuConstraints,
    current: int,
    capped_before: bool,
) -> None:
    first = decide_gpu_in_domain("GPU-x", caps, gpu, current, capped_before, where, holders)
    after = first.target_watts if first.target_watts is not None else current
    capped = capped_before or first.action is Action.CAP
    second = decide_gpu_in_domain("GPU-x", caps, gpu, after, capped, where, holders)
    assert second.target_watts == first.target_watts and not second.needs_nvml_call
