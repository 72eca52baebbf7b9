"""Label selectors in the string form /scale returns."""

from __future__ import annotations

import pytest

from gpupower_api.selectors import (
    InvalidSelectorError,
    format_selector,
    parse_selector,
    selector_from_label_selector,
)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("app=prefill", {"app": "prefill"}, True),
        ("app=prefill", {"app": "decode"}, False),
        ("app==prefill,tier=gpu", {"app": "prefill", "tier": "gpu"}, True),
        ("app=prefill,tier=gpu", {"app": "prefill"}, False),
        ("app!=prefill", {"app": "decode"}, True),
        ("app!=prefill", {}, True),
        ("app in (prefill, decode)", {"app": "decode"}, True),
        ("app notin (prefill,decode)", {"app": "decode"}, False),
        ("app,!legacy", {"app": "x"}, True),
        ("app,!legacy", {"app": "x", "legacy": "1"}, False),
        ("app.kubernetes.io/name=llm", {"app.kubernetes.io/name": "llm"}, True),
        ("", {"app": "x"}, False),
    ],
)
def test_selector_matching(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(selector).matches(labels) is matches


def test_garbage_is_refused_with_the_term() -> None:
    with pytest.raises(InvalidSelectorError, match="app ~ x"):
        parse_selector("tier=gpu,app ~ x")


def test_label_selector_objects_and_string_form_agree() -> None:
    obj = {
        "matchLabels": {"app": "llm", "role": "decode"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
    }
    selector = selector_from_label_selector(obj)
    assert format_selector(selector) == "app=llm,role=decode,tier in (a,b)"
    assert parse_selector(format_selector(selector)) == selector
    assert selector.equality_labels() == {"app": "llm", "role": "decode"}
