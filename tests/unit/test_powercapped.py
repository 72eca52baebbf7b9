"""The PowerCapped condition each managed pod gets: what its GPUs hold, read back, with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_agent.cluster import PodKey, PodView, ReportedCondition
from gpupower_agent.nvml import GpuConstraints
from gpupower_agent.policy import decide_gpu
from gpupower_agent.powercapped import PodCondition, awaiting_devices, pod_conditions, stopped_conditions
from gpupower_agent.trust import PodCap, UntrustedReason, Verdict
from gpupower_api.contract import HeldWatts, PowerCappedReason, held_watts_from_message, power_capped_message

H100 = GpuConstraints(200, 700, 700)
A, B = PodKey("ns", "a"), PodKey("ns", "b")


def view(key: PodKey, requests_gpus: bool = True, reported: ReportedCondition | None = None) -> PodView:
    return PodView(
        key, f"uid-{key.name}", {}, None, None, False, requests_gpus=requests_gpus, power_capped=reported
    )


def trusted(key: PodKey, watts: int, safe: int = 250) -> PodCap:
    return PodCap(key, watts, safe, Verdict.TRUSTED)


def conditions(
    caps: dict[PodKey, PodCap],
    on_gpu: dict[str, tuple[PodKey, ...]],
    limits: dict[str, int | None],
    pods: list[PodView] | None = None,
    constraints: GpuConstraints = H100,
) -> dict[PodKey, PodCondition]:
    decisions = {
        uuid: decide_gpu(uuid, [caps[k] for k in holders if k in caps], constraints, limits.get(uuid), False)
        for uuid, holders in on_gpu.items()
    }
    return pod_conditions(
        pods if pods is not None else [view(k) for k in caps],
        caps,
        on_gpu,
        decisions,
        limits,
        {uuid: constraints.min_watts for uuid in on_gpu},
    )


def test_a_pod_whose_gpus_hold_its_trusted_cap_is_capped() -> None:
    result = conditions({A: trusted(A, 205)}, {"g0": (A,), "g1": (A,)}, {"g0": 205, "g1": 205})[A]
    assert (result.status, result.reason) == (True, PowerCappedReason.CAPPED)
    assert held_watts_from_message(result.message) == HeldWatts(2, 205)
    assert "cap 205 W" in result.message


def test_a_cap_above_what_the_gpu_accepts_still_holds_and_is_capped() -> None:
    result = conditions({A: trusted(A, 900)}, {"g0": (A,)}, {"g0": 700})[A]
    assert (result.status, result.reason) == (True, PowerCappedReason.CAPPED)


def test_a_gpu_that_does_not_hold_the_decided_limit_is_an_nvml_error() -> None:
    result = conditions({A: trusted(A, 205)}, {"g0": (A,)}, {"g0": 700})[A]
    assert (result.status, result.reason) == (False, PowerCappedReason.NVML_ERROR)
    assert held_watts_from_message(result.message) == HeldWatts(1, 700)


def test_an_unreadable_limit_is_an_nvml_error_that_says_nothing_of_the_watts() -> None:
    result = conditions({A: trusted(A, 205)}, {"g0": (A,)}, {"g0": None})[A]
    assert (result.status, result.reason) == (False, PowerCappedReason.NVML_ERROR)
    assert held_watts_from_message(result.message) is None


def test_pods_disagreeing_on_a_shared_gpu_are_told_so_with_what_it_holds() -> None:
    caps = {A: trusted(A, 300, safe=220), B: trusted(B, 400, safe=250)}
    result = conditions(caps, {"g0": (A, B)}, {"g0": 220})
    assert {k: (c.status, c.reason) for k, c in result.items()} == {
        A: (False, PowerCappedReason.CONFLICT),
        B: (False, PowerCappedReason.CONFLICT),
    }
    assert held_watts_from_message(result[A].message) == HeldWatts(1, 220)


def test_pods_agreeing_on_a_shared_gpu_are_capped() -> None:
    caps = {A: trusted(A, 300), B: trusted(B, 300)}
    result = conditions(caps, {"g0": (A, B)}, {"g0": 300})
    assert all(c.reason is PowerCappedReason.CAPPED for c in result.values())


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (Verdict.UNTRUSTED, PowerCappedReason.SAFE_DEFAULT),
        (Verdict.AWAITING_CAP, PowerCappedReason.AWAITING_CAP),
    ],
)
def test_a_pod_on_its_fallback_says_why(verdict: Verdict, reason: PowerCappedReason) -> None:
    cap = PodCap(A, 205, 205, verdict, UntrustedReason.ABOVE_GRANT if verdict is Verdict.UNTRUSTED else None)
    result = conditions({A: cap}, {"g0": (A,)}, {"g0": 205})[A]
    assert (result.status, result.reason) == (False, reason)
    assert held_watts_from_message(result.message) == HeldWatts(1, 205)


def test_a_cap_below_the_gpus_minimum_is_clamped_not_capped() -> None:
    result = conditions({A: trusted(A, 150)}, {"g0": (A,)}, {"g0": 200})[A]
    assert (result.status, result.reason) == (False, PowerCappedReason.CLAMPED)
    assert held_watts_from_message(result.message) == HeldWatts(1, 200)


def test_a_pod_waiting_for_its_gpus_is_awaiting_devices() -> None:
    result = conditions({A: trusted(A, 205)}, {}, {})[A]
    assert (result.status, result.reason) == (False, PowerCappedReason.AWAITING_DEVICES)
    assert held_watts_from_message(result.message) is None
    assert awaiting_devices([view(A), view(B, requests_gpus=False)], {}) == {A}
    assert awaiting_devices([view(A)], {"g0": (A,)}) == set()


def test_a_managed_pod_without_gpus_holds_nothing() -> None:
    result = conditions({A: trusted(A, 205)}, {}, {}, pods=[view(A, requests_gpus=False)])[A]
    assert (result.status, result.reason) == (True, PowerCappedReason.CAPPED)
    assert held_watts_from_message(result.message) == HeldWatts(0, 0)


def test_a_pod_let_go_is_told_once_that_it_is_unmanaged() -> None:
    was_capped = ReportedCondition("True", "Capped", "1 GPU(s) hold at most 205 W", None)
    result = conditions({}, {"g0": (A,)}, {"g0": 700}, pods=[view(A, reported=was_capped), view(B)])
    assert {k: c.reason for k, c in result.items()} == {A: PowerCappedReason.UNMANAGED}
    told = ReportedCondition("False", "Unmanaged", result[A].message, None)
    assert conditions({}, {"g0": (A,)}, {"g0": 700}, pods=[view(A, reported=told)]) == {}


def test_the_pods_of_gpus_given_back_on_exit_are_told_the_default() -> None:
    decisions = [
        decide_gpu("g0", [trusted(A, 205)], H100, 205, False),
        decide_gpu("g1", [trusted(A, 205)], H100, 205, False),
        decide_gpu("g2", [trusted(B, 300)], H100, 300, False),
    ]
    result = stopped_conditions(decisions, {"g0": 700, "g1": 700})
    assert set(result) == {A}
    assert (result[A].status, result[A].reason) == (False, PowerCappedReason.AGENT_STOPPED)
    assert held_watts_from_message(result[A].message) == HeldWatts(2, 700)


@given(
    caps=st.lists(st.integers(1, 1000), min_size=1, max_size=4),
    limits=st.lists(st.one_of(st.none(), st.integers(100, 800)), min_size=1, max_size=4),
)
def test_capped_is_said_only_when_every_gpu_holds_at_most_the_cap(
    caps: list[int], limits: list[int | None]
) -> None:
    on_gpu = {f"g{i}": (A,) for i in range(len(limits))}
    held = {f"g{i}": limit for i, limit in enumerate(limits)}
    result = conditions({A: trusted(A, caps[0])}, on_gpu, held)[A]
    known = [limit for limit in limits if limit is not None]
    if result.status:
        assert len(known) == len(limits) and max(known) <= caps[0]
    said = held_watts_from_message(result.message)
    if said is not None:  # what the message says is what the GPUs hold
        assert len(known) == len(limits) and said == HeldWatts(len(limits), max(known))


@given(gpus=st.integers(0, 64), watts=st.integers(0, 10_000), detail=st.text(max_size=40))
def test_held_watts_round_trip_through_the_message(gpus: int, watts: int, detail: str) -> None:
    held = HeldWatts(gpus, watts)
    assert held_watts_from_message(power_capped_message(held, detail)) == held


@pytest.mark.parametrize(
    "message", ["", "held 200 W", "GPU(s) hold at most 200 W", "1 GPU(s) hold at most -1 W", None]
)
def test_a_message_that_does_not_say_the_watts_says_nothing(message: object) -> None:
    assert held_watts_from_message(message) is None
