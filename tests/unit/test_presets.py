"""Profile presets: the published shapes they stand for, scaled by one number, and what the planner reads."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupower_api.models import Profile
from gpupower_api.presets import DECODE_NATURAL_FRACTION, PREFILL_SHAPE, PresetShape, preset_points
from gpupower_operator.core import planner, profiles


def envelope(profile: Profile) -> tuple[planner.ProfilePoint, ...]:
    return tuple(planner.ProfilePoint(p.watts, p.throughput) for p in profile.curve())


def test_the_prefill_preset_is_the_published_sweep_scaled_to_the_gpu_and_the_peak() -> None:
    points = preset_points(PresetShape.PREFILL, peak_throughput=20.0, max_watts=700)
    # LLM Garage: 100..350 W of a 350 W GPU, i.e. 200..700 W of a 700 W one.
    assert [w for w, _ in points] == pytest.approx([200, 300, 400, 500, 600, 700])
    assert [t for _, t in points] == pytest.approx(
        [20.0 * tokens / 9893 for tokens in (1390, 2549, 5941, 8436, 9326, 9893)]
    )


def test_prefill_loses_throughput_steadily_as_the_cap_falls() -> None:
    throughputs = [t for _, t in preset_points(PresetShape.PREFILL, 10.0, 700)]
    assert all(low < high for low, high in itertools.pairwise(throughputs))


def test_the_decode_preset_is_flat_down_to_its_natural_draw_then_falls_with_the_cap() -> None:
    profile = Profile.model_validate({"preset": "decode", "peakThroughput": 8.0, "maxWatts": 700})
    points = envelope(profile)
    natural = 700 * DECODE_NATURAL_FRACTION  # 300 W: the top of the H200 decode draws Ma et al. measured
    assert natural == pytest.approx(300)
    for watts in (300, 450, 700):
        assert planner.throughput_at(points, watts) == pytest.approx(8.0)
    for watts in (200, 250, 280):
        assert planner.throughput_at(points, watts) == pytest.approx(8.0 * watts / 300)


def test_a_preset_starts_where_the_user_says_the_gpu_does() -> None:
    prefill = preset_points(PresetShape.PREFILL, 10.0, 700, min_watts=250)
    assert prefill[0][0] == 250 and [w for w, _ in prefill[1:]] == pytest.approx([300, 400, 500, 600, 700])
    # 250 W is halfway between the sweep's 200 and 300 W points.
    assert prefill[0][1] == pytest.approx(10.0 * (1390 + 2549) / 2 / 9893)
    decode = preset_points(PresetShape.DECODE, 10.0, 700, min_watts=100, natural_watts=500)
    assert decode == [(100, 2.0), (500, 10.0), (700, 10.0)]


def test_decode_drawing_its_whole_range_or_none_of_it() -> None:
    assert preset_points(PresetShape.DECODE, 4.0, 700, min_watts=200, natural_watts=200) == [
        (200, 4.0),
        (700, 4.0),
    ]
    assert preset_points(PresetShape.DECODE, 4.0, 700, min_watts=200, natural_watts=700) == [
        (200, 4.0 * (200 / 700)),
        (700, 4.0),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["prefill", "decode"]),
    st.floats(0.01, 1e6),
    st.integers(50, 2000),
    st.one_of(st.none(), st.floats(0.05, 0.95)),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_every_preset_is_a_valid_rising_profile_that_reaches_its_peak_at_max_watts(
    shape: str, peak: float, max_watts: int, min_share: float | None, natural_share: float | None
) -> None:
    fields: dict[str, object] = {"preset": shape, "peakThroughput": peak, "maxWatts": max_watts}
    low = None if min_share is None else max(1.0, max_watts * min_share)
    if low is not None:
        fields["minWatts"] = low
    if shape == "decode" and natural_share is not None:
        start = low if low is not None else 1.0
        fields["naturalWatts"] = start + (max_watts - start) * natural_share
    profile = Profile.model_validate(fields)
    curve = profile.curve()
    # The expansion passes the same checks as measured points (range, strictly increasing watts).
    Profile.model_validate({"points": [p.model_dump() for p in curve]})
    assert curve[-1].watts == max_watts and curve[-1].throughput == pytest.approx(peak)
    assert all(a.throughput <= b.throughput for a, b in itertools.pairwise(curve))
    assert profiles.raised_points(profile) == ()


def test_the_prefill_shape_is_normalised_at_its_last_point() -> None:
    assert PREFILL_SHAPE[-1] == (1.0, 1.0)
