"""Kubernetes label selectors as strings (the form ``/scale`` returns) and their matching."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!)?\s*(?P<key>{_KEY})\s*$")


class InvalidSelectorError(ValueError):
    """A selector string that cannot be parsed."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "In", "NotIn", "Exists", "DoesNotExist"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class Selector:
    """A parsed label selector; an empty one matches nothing here, as for a workload it would mean 'all'."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if not self.requirements:
            return False
        labels = labels or {}
        return all(req.matches(labels) for req in self.requirements)

    def equality_labels(self) -> dict[str, str]:
        """The ``key=value`` pairs the selector demands: what an index can be keyed by."""
        return {
            req.key: next(iter(req.values))
            for req in self.requirements
            if req.operator == "In" and len(req.values) == 1
        }


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def parse_selector(text: str) -> Selector:
    """Parse ``app=x,tier in (a,b),!legacy`` into a :class:`Selector`."""
    requirements: list[Requirement] = []
    for part in _split_top_level(text or ""):
        if match := _SET_RE.match(part):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            operator = "In" if match["op"] == "in" else "NotIn"
            requirements.append(Requirement(match["key"], operator, values))
        elif match := _EQ_RE.match(part):
            operator = "NotIn" if match["op"] == "!=" else "In"
            requirements.append(Requirement(match["key"], operator, frozenset({match["value"]})))
        elif match := _EXISTS_RE.match(part):
            operator = "DoesNotExist" if match["neg"] else "Exists"
            requirements.append(Requirement(match["key"], operator))
        else:
            raise InvalidSelectorError(f"cannot parse label selector term {part.strip()!r} in {text!r}")
    return Selector(tuple(requirements))


def selector_from_label_selector(obj: Mapping[str, Any]) -> Selector:
    """Build a :class:`Selector` from a ``metav1.LabelSelector`` dict (matchLabels, matchExpressions)."""
    requirements = [
        Requirement(str(k), "In", frozenset({str(v)})) for k, v in (obj.get("matchLabels") or {}).items()
    ]
    for expr in obj.get("matchExpressions") or []:
        requirements.append(
            Requirement(str(expr["key"]), str(expr["operator"]), frozenset(expr.get("values") or []))
        )
    return Selector(tuple(requirements))


def format_selector(selector: Selector) -> str:
    """The string form of a selector, as ``/scale`` would print it."""
    terms: list[str] = []
    for req in selector.requirements:
        if req.operator == "Exists":
            terms.append(req.key)
        elif req.operator == "DoesNotExist":
            terms.append(f"!{req.key}")
        elif req.operator == "In" and len(req.values) == 1:
            terms.append(f"{req.key}={next(iter(req.values))}")
        else:
            op = "in" if req.operator == "In" else "notin"
            terms.append(f"{req.key} {op} ({','.join(sorted(req.values))})")
    return ",".join(terms)
