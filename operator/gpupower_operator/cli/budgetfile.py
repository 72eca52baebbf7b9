"""Edit a budget file in place: replace one target's ``profile`` and leave every other byte as it was.

Pure: text in, text out. The YAML is composed (not loaded) to find where the
target's profile starts and ends; only that span is rewritten, so comments,
order, quoting and the other documents of the file stay. The result is parsed
and validated again before anyone writes it.
"""

from __future__ import annotations

from typing import Any

import yaml

from gpupower_api.models import KIND, InvalidSpecError, parse_budget


class BudgetFileError(ValueError):
    """A budget file that cannot take the profile; the message names the file and what is wrong."""


def _mapping(node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): (key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode)}


def _last_index(node: yaml.Node) -> int:
    """Where the node's own text ends (a block collection's end mark runs on to the next key)."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        return _last_index(last[1] if isinstance(last, tuple) else last)
    return int(node.end_mark.index)


def _flow(value: Any) -> str:
    text = str(yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20))
    return text.removesuffix("\n").removesuffix("\n...").strip()


def render_block(profile: dict[str, Any], indent: int) -> str:
    """The profile as a block mapping, each line indented by ``indent`` spaces, points one per line."""
    pad = " " * indent
    lines = []
    for key, value in profile.items():
        if key == "points":
            lines.append(f"{pad}points:")
            lines.extend(f"{pad}  - {_flow(point)}" for point in value)
        else:
            lines.append(f"{pad}{key}: {_flow(value)}")
    return "\n".join(lines)


def _budget_document(label: str, text: str, name: str | None) -> yaml.Node:
    try:
        documents = [doc for doc in yaml.compose_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BudgetFileError(f"{label}: invalid YAML{where}") from None
    budgets = []
    for document in documents:
        fields = _mapping(document)
        if "kind" in fields and fields["kind"][1].value == KIND:
            budget_name = _mapping(fields["metadata"][1]).get("name") if "metadata" in fields else None
            budgets.append((None if budget_name is None else str(budget_name[1].value), document))
    if name is not None:
        budgets = [(n, d) for n, d in budgets if n == name]
        if not budgets:
            raise BudgetFileError(f"{label}: no {KIND} named {name!r}")
    if not budgets:
        raise BudgetFileError(f"{label}: no {KIND} in the file")
    if len(budgets) > 1:
        names = ", ".join(str(n) for n, _ in budgets)
        raise BudgetFileError(f"{label}: holds {len(budgets)} budgets ({names}); choose one with --name")
    return budgets[0][1]


def with_profile(
    label: str, text: str, profile: dict[str, Any], target: str | None, name: str | None = None
) -> str:
    """``text`` with the profile of ``target`` (the only target when None) replaced by ``profile``."""
    document = _budget_document(label, text, name)
    spec = _mapping(document).get("spec")
    targets = _mapping(spec[1]).get("targets") if spec is not None else None
    if targets is None or not isinstance(targets[1], yaml.SequenceNode):
        raise BudgetFileError(f"{label}: spec.targets: missing or not a list")
    entries = [(index, _mapping(node), node) for index, node in enumerate(targets[1].value)]
    names = [str(fields["name"][1].value) for _, fields, _ in entries if "name" in fields]
    if target is None:
        if len(entries) != 1:
            raise BudgetFileError(
                f"{label}: the budget has {len(entries)} targets ({', '.join(names)}): "
                "choose one with --target"
            )
        chosen = entries[0]
    else:
        matching = [entry for entry in entries if "name" in entry[1] and entry[1]["name"][1].value == target]
        if not matching:
            raise BudgetFileError(f"{label}: no target named {target!r} (targets: {', '.join(names)})")
        chosen = matching[0]
    index, fields, node = chosen
    if "profile" not in fields:
        raise BudgetFileError(f"{label}: spec.targets[{index}] has no profile to replace")
    key, value = fields["profile"]
    if node.flow_style:
        start, end, new = int(value.start_mark.index), _last_index(value), _flow(profile)
    else:
        # From right after the key to the end of the old value's last line (its trailing comment included).
        start = int(key.end_mark.index)
        newline = text.find("\n", _last_index(value))
        end = len(text) if newline < 0 else newline
        new = ":\n" + render_block(profile, int(key.start_mark.column) + 2)
    edited = text[:start] + new + text[end:]
    _check(label, edited, name, index, profile)
    return edited


def _check(label: str, text: str, name: str | None, index: int, profile: dict[str, Any]) -> None:
    """The edited file must hold a valid budget whose target now has exactly ``profile``."""
    documents = [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind") == KIND]
    if name is not None:
        documents = [doc for doc in documents if (doc.get("metadata") or {}).get("name") == name]
    try:
        budget = parse_budget(documents[0])
    except InvalidSpecError as error:
        raise BudgetFileError(f"{label}: with the new profile: {error}") from None
    written = budget.spec.targets[index].profile.model_dump(by_alias=True, exclude_none=True, mode="json")
    if written != profile:
        raise BudgetFileError(f"{label}: could not rewrite spec.targets[{index}].profile in place")
