"""In-memory indexes fed by the watches: pods by label, and budgets by the labels their targets select.

A pod event finds the budgets to wake with a few dictionary lookups, and a
reconcile finds its pods without a list call. Both are plain data structures;
the handlers keep them current from kopf's watch events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpupower_api.selectors import InvalidSelectorError, Selector, parse_selector
from gpupower_operator.core.reconcile import PodState

BudgetKey = tuple[str, str]  # (namespace, name)
_LabelKey = tuple[str, str, str]  # (namespace, label, value)


class PodIndex:
    """The pods of the watched namespaces, with an inverted index on their labels."""

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, PodState]] = defaultdict(dict)
        self._by_label: dict[_LabelKey, set[str]] = defaultdict(set)
        self._by_budget: dict[tuple[str, str], set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return sum(len(pods) for pods in self._pods.values())

    def get(self, namespace: str, name: str) -> PodState | None:
        return self._pods.get(namespace, {}).get(name)

    def upsert(self, namespace: str, pod: PodState) -> PodState | None:
        """Store ``pod``; return what was stored before under its name."""
        before = self._pods[namespace].get(pod.name)
        if before is not None:
            self._unlink(namespace, before)
        self._pods[namespace][pod.name] = pod
        for label, value in pod.labels.items():
            self._by_label[(namespace, label, value)].add(pod.name)
        if pod.budget_annotation:
            self._by_budget[(namespace, pod.budget_annotation)].add(pod.name)
        return before

    def remove(self, namespace: str, name: str) -> PodState | None:
        before = self._pods.get(namespace, {}).pop(name, None)
        if before is not None:
            self._unlink(namespace, before)
        return before

    def _unlink(self, namespace: str, pod: PodState) -> None:
        for label, value in pod.labels.items():
            names = self._by_label.get((namespace, label, value))
            if names is not None:
                names.discard(pod.name)
                if not names:
                    del self._by_label[(namespace, label, value)]
        if pod.budget_annotation:
            owned = self._by_budget.get((namespace, pod.budget_annotation))
            if owned is not None:
                owned.discard(pod.name)
                if not owned:
                    del self._by_budget[(namespace, pod.budget_annotation)]

    def in_namespace(self, namespace: str) -> list[PodState]:
        return list(self._pods.get(namespace, {}).values())

    def annotated_by(self, namespace: str, budget: str) -> list[PodState]:
        """Pods whose budget annotation names ``budget``."""
        pods = self._pods.get(namespace, {})
        names = self._by_budget.get((namespace, budget), set())
        return [pods[name] for name in names if name in pods]

    def selected(self, namespace: str, selector: Selector) -> list[PodState]:
        """Pods matching ``selector``; narrowed by its equality terms before matching."""
        pods = self._pods.get(namespace, {})
        equality = selector.equality_labels()
        if equality:
            sets = [self._by_label.get((namespace, k, v), set()) for k, v in equality.items()]
            names: Iterable[str] = set.intersection(*sets) if sets else set()
        else:
            names = pods.keys()
        return [pods[name] for name in names if name in pods and selector.matches(pods[name].labels)]


@dataclass(frozen=True)
class _Entry:
    budget: BudgetKey
    text: str
    selector: Selector


class SelectorIndex:
    """Which budgets select which labels: each budget's target selectors, keyed by one equality term."""

    def __init__(self) -> None:
        self._by_budget: dict[BudgetKey, tuple[_Entry, ...]] = {}
        self._by_label: dict[_LabelKey, set[_Entry]] = defaultdict(set)
        self._unkeyed: dict[str, set[_Entry]] = defaultdict(set)

    def known(self, budget: BudgetKey) -> bool:
        return budget in self._by_budget

    def selectors_of(self, budget: BudgetKey) -> tuple[str, ...]:
        return tuple(entry.text for entry in self._by_budget.get(budget, ()))

    def set_selectors(self, budget: BudgetKey, selectors: Iterable[str]) -> bool:
        """Replace the selectors of ``budget``; unparsable ones are skipped. True when they changed."""
        entries_list: list[_Entry] = []
        for text in selectors:
            try:
                selector = parse_selector(text)
            except InvalidSelectorError:
                continue
            if selector.requirements:
                entries_list.append(_Entry(budget, text, selector))
        entries = tuple(entries_list)
        if entries == self._by_budget.get(budget, ()):
            return False
        self.remove(budget)
        self._by_budget[budget] = entries
        namespace = budget[0]
        for entry in entries:
            equality = sorted(entry.selector.equality_labels().items())
            if equality:
                label, value = equality[0]
                self._by_label[(namespace, label, value)].add(entry)
            else:
                self._unkeyed[namespace].add(entry)
        return True

    def remove(self, budget: BudgetKey) -> None:
        namespace = budget[0]
        for entry in self._by_budget.pop(budget, ()):
            for label, value in entry.selector.equality_labels().items():
                entries = self._by_label.get((namespace, label, value))
                if entries is not None:
                    entries.discard(entry)
                    if not entries:
                        del self._by_label[(namespace, label, value)]
            self._unkeyed[namespace].discard(entry)

    def budgets_in(self, namespace: str) -> set[BudgetKey]:
        return {budget for budget in self._by_budget if budget[0] == namespace}

    def budgets_for(self, namespace: str, labels: Mapping[str, str] | None) -> set[BudgetKey]:
        """The budgets with a target selecting a pod with ``labels``."""
        labels = labels or {}
        candidates: set[_Entry] = set(self._unkeyed.get(namespace, ()))
        for label, value in labels.items():
            candidates.update(self._by_label.get((namespace, label, value), ()))
        return {entry.budget for entry in candidates if entry.selector.matches(labels)}
