"""The Node annotation of what a node's GPUs hold: one text per state, strict parsing naming the fault."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_api.contract import (
    GPU_POWER_HELD_ANNOTATION,
    HeldGroup,
    InvalidHeldReportError,
    NodeHeld,
    format_held_report,
    parse_held_report,
)

groups = st.builds(HeldGroup, st.integers(0, 16), st.integers(0, 16 * 1000))
keys = st.from_regex(r"[a-z][a-z0-9-]{0,8}/[a-z][a-z0-9-]{0,8}", fullmatch=True)
reports = st.builds(
    NodeHeld,
    idle=groups,
    unmanaged=groups,
    budgets=st.dictionaries(
        keys, st.builds(HeldGroup, st.integers(1, 16), st.integers(0, 16_000)), max_size=4
    ),
)


@given(reports)
def test_a_report_reads_back_as_written_and_its_text_depends_only_on_the_state(held: NodeHeld) -> None:
    text = format_held_report(held)
    assert parse_held_report(text) == held
    reordered = NodeHeld(held.idle, held.unmanaged, dict(reversed(list(held.budgets.items()))))
    assert format_held_report(reordered) == text
    assert parse_held_report(text).watts == held.watts


def test_the_documented_example_parses() -> None:
    text = (
        '{"budgets":{"inference/llama":{"gpus":4,"watts":1600}},'
        '"idle":{"gpus":3,"watts":300},"unmanaged":{"gpus":1,"watts":700}}'
    )
    held = parse_held_report(text)
    assert (held.gpus, held.watts) == (8, 2600)
    assert held.budgets["inference/llama"] == HeldGroup(4, 1600)
    assert format_held_report(held) == text


def test_budgets_without_gpus_are_left_out() -> None:
    held = NodeHeld(budgets={"a/b": HeldGroup(0, 0), "a/c": HeldGroup(1, 300)})
    assert json.loads(format_held_report(held))["budgets"] == {"a/c": {"gpus": 1, "watts": 300}}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "missing or not a string"),
        ("{", "not JSON"),
        ("[]", "exactly budgets, idle and unmanaged"),
        ('{"idle":{"gpus":1,"watts":1},"unmanaged":{"gpus":0,"watts":0}}', "exactly budgets, idle"),
        (
            '{"budgets":[],"idle":{"gpus":1,"watts":1},"unmanaged":{"gpus":0,"watts":0}}',
            "keyed namespace/name",
        ),
        ('{"budgets":{},"idle":{"gpus":-1,"watts":1},"unmanaged":{"gpus":0,"watts":0}}', "idle.gpus"),
        ('{"budgets":{},"idle":{"gpus":1,"watts":1.5},"unmanaged":{"gpus":0,"watts":0}}', "idle.watts"),
        ('{"budgets":{},"idle":{"gpus":true,"watts":1},"unmanaged":{"gpus":0,"watts":0}}', "idle.gpus"),
        ('{"budgets":{},"idle":{"gpus":1},"unmanaged":{"gpus":0,"watts":0}}', "exactly gpus and watts"),
        (
            '{"budgets":{"llama":{"gpus":1,"watts":1}},"idle":{"gpus":0,"watts":0},'
            '"unmanaged":{"gpus":0,"watts":0}}',
            "not namespace/name",
        ),
        (
            '{"budgets":{},"idle":{"gpus":1000,"watts":0},"unmanaged":{"gpus":1,"watts":0}}',
            "more than a node can have",
        ),
    ],
)
def test_a_bad_report_is_refused_saying_what_is_wrong(value: object, words: str) -> None:
    with pytest.raises(InvalidHeldReportError) as caught:
        parse_held_report(value)
    assert GPU_POWER_HELD_ANNOTATION in str(caught.value)
    assert words in str(caught.value)
