"""The annotation contract: caps are written one way and parsed strictly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_api.contract import (
    BUDGET_ANNOTATION,
    MAX_CAP_WATTS,
    POWER_LIMIT_ANNOTATION,
    InvalidCapError,
    format_power_limit,
    parse_power_limit,
)


def test_annotation_keys_are_the_documented_ones() -> None:
    assert POWER_LIMIT_ANNOTATION == "gpupower.dev/power-limit-watts"
    assert BUDGET_ANNOTATION == "gpupower.dev/budget"


@pytest.mark.parametrize("value", ["1", "200", "450", "700", str(MAX_CAP_WATTS)])
def test_plain_integers_parse(value: str) -> None:
    assert parse_power_limit(value) == int(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        450,
        "",
        " 450",
        "450 ",
        "450W",
        "450w",
        "4.5e2",
        "450.0",
        "+450",
        "-450",
        "0",
        "0450",
        "0x1c2",
        "١٢٣",  # non-ASCII digits
        str(MAX_CAP_WATTS + 1),
        "99999999999999999999",
        "nan",
        "inf",
    ],
)
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(InvalidCapError) as caught:
        parse_power_limit(value)
    assert POWER_LIMIT_ANNOTATION in str(caught.value)


@given(st.integers(min_value=1, max_value=MAX_CAP_WATTS))
def test_format_then_parse_is_identity(watts: int) -> None:
    assert parse_power_limit(format_power_limit(watts)) == watts


@pytest.mark.parametrize("watts", [0, -1, MAX_CAP_WATTS + 1, 450.0, True])
def test_format_refuses_values_the_agent_would_refuse(watts: object) -> None:
    with pytest.raises(InvalidCapError):
        format_power_limit(watts)  # type: ignore[arg-type]


@given(st.text(max_size=12))
def test_parse_never_crashes_and_never_returns_out_of_range(text: str) -> None:
    try:
        watts = parse_power_limit(text)
    except InvalidCapError:
        return
    assert 1 <= watts <= MAX_CAP_WATTS
    assert str(watts) == text
