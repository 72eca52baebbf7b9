"""The draw guard's decision: three bands with hysteresis, limits within [GPU minimum, planned cap]."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpupower_agent.guard import GuardEvent, GuardGpu, GuardState, effective_limit, starting, step
from gpupower_api.models import Oversubscription

SETTINGS = Oversubscription(
    max_ratio=1.5
)  # defaults: 2 readings, target 0.9, release 0.8, hold 10 s, step 0.25


def gpus(
    draw: list[float | None], cap: int = 600, share: float = 300.0, minimum: int = 200
) -> list[GuardGpu]:
    return [GuardGpu(f"g{i}", cap, share, minimum, watts) for i, watts in enumerate(draw)]


def run(readings: list[list[float | None]], state: GuardState | None = None, period: float = 1.0) -> list:
    state = state or GuardState()
    steps = []
    for tick, draw in enumerate(readings):
        result = step(SETTINGS, gpus(draw), state, tick * period)
        steps.append(result)
        state = result.state
    return steps


def test_two_readings_above_the_share_engage_and_cut_every_gpu_to_the_target_below_it() -> None:
    first, second = run([[400.0, 400.0], [400.0, 400.0]])
    assert first.event is None and not first.state.engaged
    assert second.event is GuardEvent.ENGAGED
    assert second.state.limits == {"g0": 270, "g1": 270}  # 0.9 x the 300 W share
    assert (second.draw_watts, second.share_watts) == (800.0, 600.0)


def test_one_reading_above_the_share_is_not_enough() -> None:
    steps = run([[400.0, 400.0], [250.0, 250.0], [400.0, 400.0], [250.0, 250.0]])
    assert all(s.event is None and not s.state.engaged for s in steps)


def test_between_the_thresholds_the_guard_holds_and_below_it_releases_in_steps() -> None:
    engaged = run([[400.0, 400.0], [400.0, 400.0]])[-1].state
    # 0.85 of the share: the hold band, nothing moves however long it lasts.
    held = run([[255.0, 255.0]] * 30, engaged)
    assert all(s.event is None and s.state.limits == engaged.limits for s in held)
    # Under 0.8 of the share: a release step every 10 s, 25 % of the 200-600 W range each.
    low = run([[150.0, 150.0]] * 50, engaged)
    events = [(tick, s.event) for tick, s in enumerate(low) if s.event is not None]
    assert [e for _, e in events] == [
        GuardEvent.STEPPED,
        GuardEvent.STEPPED,
        GuardEvent.STEPPED,
        GuardEvent.RELEASED,
    ]
    assert [tick for tick, _ in events] == [10, 20, 30, 40]
    assert low[10].state.limits == {"g0": 370, "g1": 370}
    assert low[-1].state == GuardState()


def test_a_failed_reading_counts_as_drawing_at_the_limit() -> None:
    steps = run([[None, 100.0], [None, 100.0]])  # 600 W limit + 100 W > the 600 W share
    assert steps[-1].event is GuardEvent.ENGAGED
    assert steps[0].draw_watts == 700.0


def test_an_agent_that_just_started_is_guarded_at_the_share_and_releases_from_there() -> None:
    state = starting(gpus([0.0, 0.0]))
    assert state.engaged and state.limits == {"g0": 300, "g1": 300}
    steps = run([[50.0, 50.0]] * 60, state)
    assert steps[-1].state == GuardState() and steps[-1].event is None
    assert any(s.event is GuardEvent.RELEASED for s in steps)


def test_still_above_after_a_cut_cuts_again_never_raising_a_gpu() -> None:
    engaged = run([[400.0, 400.0], [400.0, 400.0]])[-1].state
    # A GPU whose limit someone set above the cut (or a reading that lags): the next readings cut again.
    again = run([[400.0, 400.0], [400.0, 400.0]], engaged)
    assert again[-1].event is GuardEvent.TIGHTENED
    assert all(again[-1].state.limits[u] <= engaged.limits[u] for u in engaged.limits)


readings = st.lists(st.one_of(st.none(), st.floats(0, 900)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(readings, min_size=1, max_size=40),
    st.integers(100, 700),
    st.integers(50, 400),
    st.floats(10, 900),
    st.booleans(),
)
def test_limits_stay_within_the_gpus_minimum_and_the_planned_cap_and_never_release_while_high(
    sequence: list[list[float | None]], cap: int, minimum: int, share: float, started: bool
) -> None:
    width = min(len(r) for r in sequence)
    state = starting(gpus([0.0] * width, cap, share, minimum)) if started else GuardState()
    for tick, draw in enumerate(sequence):
        members = gpus(draw[:width], cap, share, minimum)
        before = {gpu.uuid: effective_limit(state, gpu) for gpu in members}
        result = step(SETTINGS, members, state, float(tick))
        after = {gpu.uuid: effective_limit(result.state, gpu) for gpu in members}
        for gpu in members:
            # Never above the planned cap, never below the GPU's minimum.
            assert min(gpu.min_watts, gpu.cap_watts) <= after[gpu.uuid] <= max(gpu.min_watts, gpu.cap_watts)
        raised = any(after[u] > before[u] for u in after)
        if raised:
            # Only a release step raises a limit, and only with the draw under the release threshold.
            assert result.event in (GuardEvent.STEPPED, GuardEvent.RELEASED)
            assert result.draw_watts <= SETTINGS.guard_release_ratio * result.share_watts
        if result.event in (GuardEvent.ENGAGED, GuardEvent.TIGHTENED):
            assert result.draw_watts > result.share_watts
            assert not raised
        state = result.state


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1.5), st.integers(2, 8))
def test_a_steady_load_never_flaps(load_over_share: float, count: int) -> None:
    """The GPUs draw min(limit, load): under a steady load the guard settles, with no engage-release cycle."""
    share, cap, minimum = 300.0, 600, 100
    state = GuardState()
    events: list[GuardEvent] = []
    for tick in range(200):
        members = [GuardGpu(f"g{i}", cap, share, minimum, None) for i in range(count)]
        draws = [min(effective_limit(state, g), load_over_share * share) for g in members]
        result = step(
            SETTINGS,
            [GuardGpu(g.uuid, cap, share, minimum, d) for g, d in zip(members, draws, strict=True)],
            state,
            float(tick),
        )
        if result.event is not None:
            events.append(result.event)
        state = result.state
    # At most one engagement, then releases (a load the share holds) or a standing hold: no cycle.
    assert events.count(GuardEvent.ENGAGED) <= 1
    assert not (GuardEvent.RELEASED in events and events.index(GuardEvent.RELEASED) < len(events) - 1)
