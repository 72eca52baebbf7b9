"""The watch-fed indexes: pods by label and annotation, budgets by the labels their targets select."""

from __future__ import annotations

from gpupower_api.selectors import parse_selector
from gpupower_operator.core.reconcile import PodState
from gpupower_operator.shell.index import PodIndex, SelectorIndex


def pod(name: str, budget: str | None = None, **labels: str) -> PodState:
    return PodState(
        name=name, labels=labels, budget_annotation=budget, cap_annotation="300" if budget else None
    )


def test_selected_pods_follow_label_changes_and_removal() -> None:
    index = PodIndex()
    index.upsert("ns", pod("a", app="prefill", tier="gpu"))
    index.upsert("ns", pod("b", app="decode"))
    index.upsert("other", pod("c", app="prefill"))
    assert [p.name for p in index.selected("ns", parse_selector("app=prefill"))] == ["a"]
    assert [p.name for p in index.selected("ns", parse_selector("app in (prefill,decode),tier"))] == ["a"]
    index.upsert("ns", pod("a", app="decode"))
    assert index.selected("ns", parse_selector("app=prefill")) == []
    assert sorted(p.name for p in index.selected("ns", parse_selector("app=decode"))) == ["a", "b"]
    index.remove("ns", "b")
    assert [p.name for p in index.selected("ns", parse_selector("app=decode"))] == ["a"]
    assert len(index) == 2


def test_pods_annotated_by_a_budget_are_found_without_a_scan_and_forgotten_when_released() -> None:
    index = PodIndex()
    index.upsert("ns", pod("a", budget="llm", app="x"))
    index.upsert("ns", pod("b", budget="other", app="x"))
    assert [p.name for p in index.annotated_by("ns", "llm")] == ["a"]
    index.upsert("ns", pod("a", app="x"))
    assert index.annotated_by("ns", "llm") == []


def test_a_pod_event_finds_exactly_the_budgets_whose_selectors_match() -> None:
    index = SelectorIndex()
    assert index.set_selectors(("ns", "one"), ["app=prefill,tier=gpu"])
    assert index.set_selectors(("ns", "two"), ["app=decode", "!legacy"])
    assert not index.set_selectors(("ns", "two"), ["app=decode", "!legacy"])
    assert index.budgets_for("ns", {"app": "prefill", "tier": "gpu"}) == {("ns", "one"), ("ns", "two")}
    assert index.budgets_for("ns", {"app": "prefill", "legacy": "yes"}) == set()
    assert index.budgets_for("elsewhere", {"app": "decode"}) == set()
    index.remove(("ns", "two"))
    assert index.budgets_for("ns", {"app": "decode"}) == set()
    assert index.budgets_in("ns") == {("ns", "one")}


def test_unparsable_or_empty_selectors_select_nothing() -> None:
    index = SelectorIndex()
    index.set_selectors(("ns", "b"), ["app in (", ""])
    assert index.selectors_of(("ns", "b")) == ()
    assert index.budgets_for("ns", {"app": "x"}) == set()
