"""Correction math: bounded EWMAs, traffic gating, SLA correction, hysteresis against flapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupower_operator.core.correction import (
    CorrectionSettings,
    CorrectionState,
    Factors,
    Observation,
    enough_traffic,
    step,
    throughput_sample,
    update,
)

SETTINGS = CorrectionSettings()

finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
maybe = st.one_of(st.none(), finite, st.just(float("nan")), st.just(float("inf")))


@given(
    power=st.floats(0.5, 1.5),
    throughput=st.floats(0.5, 1.5),
    cap=maybe,
    watts=maybe,
    served=maybe,
    predicted=maybe,
    latency=maybe,
)
def test_factors_stay_within_bounds_whatever_is_observed(
    power: float,
    throughput: float,
    cap: float | None,
    watts: float | None,
    served: float | None,
    predicted: float | None,
    latency: float | None,
) -> None:
    observation = Observation(cap, watts, served, predicted, latency)
    after = update(Factors(power, throughput), observation, SETTINGS)
    for value in after.as_pair():
        assert SETTINGS.min_factor <= value <= SETTINGS.max_factor


@settings(max_examples=200)
@given(ratio=st.floats(0.55, 1.45), cap=st.integers(100, 1000))
def test_power_factor_converges_to_the_true_ratio_on_a_constant_signal(ratio: float, cap: int) -> None:
    factors = Factors()
    observation = Observation(cap_watts=cap, watts_per_gpu=ratio * cap, served=50, predicted_capacity=100)
    for _ in range(60):
        factors = update(factors, observation, SETTINGS)
    assert factors.power == pytest.approx(ratio, abs=1e-3)


@settings(max_examples=200)
@given(ratio=st.floats(1.0, 1.45), start=st.floats(0.5, 1.0))
def test_throughput_factor_converges_up_to_a_capacity_the_fleet_shows(ratio: float, start: float) -> None:
    # The fleet serves `ratio` times what the profile predicts: its capacity is at least that.
    factors = Factors(throughput=start)
    observation = Observation(served=100 * ratio, predicted_capacity=100)
    for _ in range(80):
        factors = update(factors, observation, SETTINGS)
    assert factors.throughput == pytest.approx(ratio, abs=1e-3)


def test_serving_less_than_capacity_within_goals_says_nothing_about_capacity() -> None:
    observation = Observation(served=30, predicted_capacity=100, latency_ratio=0.5)
    assert throughput_sample(observation, current=1.0) is None
    assert update(Factors(), observation, SETTINGS).throughput == 1.0


def test_missing_the_latency_goal_corrects_capacity_down_until_the_bound() -> None:
    factors = Factors()
    history = []
    for _ in range(40):
        factors = update(factors, Observation(served=80, predicted_capacity=100, latency_ratio=2.0), SETTINGS)
        history.append(factors.throughput)
    assert history == sorted(history, reverse=True)
    assert history[0] < 1.0
    assert history[-1] == SETTINGS.min_factor


def test_without_enough_traffic_nothing_moves() -> None:
    quiet = Observation(cap_watts=400, watts_per_gpu=80, served=2, predicted_capacity=100, latency_ratio=3)
    assert not enough_traffic(quiet, SETTINGS)
    assert update(Factors(0.9, 1.1), quiet, SETTINGS) == Factors(0.9, 1.1)
    no_signal = Observation(cap_watts=400, watts_per_gpu=80, served=None, predicted_capacity=100)
    assert update(Factors(), no_signal, SETTINGS) == Factors()


def drifting(power: float) -> dict[str, Observation | None]:
    return {
        "decode": Observation(cap_watts=400, watts_per_gpu=400 * power, served=50, predicted_capacity=100)
    }


def test_replan_only_after_the_drift_persists_for_n_checks() -> None:
    config = CorrectionSettings(drift_checks=3, replan_interval_seconds=0)
    state = CorrectionState()
    decisions = []
    for second in range(6):
        result = step(state, drifting(0.6), float(second), config)
        state = result.state
        decisions.append(result.replan)
    # The EWMA leaves the tolerance band on the first check; the third check in a row applies it.
    assert decisions[:3] == [False, False, True]
    assert state.applied_for("decode").power < 0.9


def test_a_drift_that_does_not_persist_never_replans() -> None:
    config = CorrectionSettings(drift_checks=3, replan_interval_seconds=0, alpha=1.0)
    state = CorrectionState()
    for second, power in enumerate([0.6, 0.6, 1.0, 0.6, 0.6, 1.0, 0.6, 0.6, 1.0]):
        result = step(state, drifting(power), float(second), config)
        state = result.state
        assert not result.replan
    assert state.applied_for("decode") == Factors()


def test_at_most_one_replan_per_interval() -> None:
    config = CorrectionSettings(drift_checks=1, replan_interval_seconds=60, alpha=1.0)
    state = CorrectionState()
    replans = []
    for second, power in enumerate([0.6, 0.9, 0.6, 0.9, 0.6]):
        result = step(state, drifting(power), second * 10.0, config)
        state = result.state
        replans.append(second * 10.0) if result.replan else None
    assert replans == [0.0]
    result = step(state, drifting(0.9), 70.0, config)
    assert result.replan and result.changed == ("decode",)


def test_settings_refuse_bounds_that_exclude_one() -> None:
    with pytest.raises(ValueError, match="bracket 1"):
        CorrectionSettings(min_factor=1.2, max_factor=1.5)
    with pytest.raises(ValueError, match="alpha"):
        CorrectionSettings(alpha=0)
