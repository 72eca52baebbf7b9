"""`gpupower`: plan a budget from a file, compare strategies, size a rack's GPU budget.

Bad input ends the program with exit code 1 and one line naming the field;
usage errors (unknown flags) exit 2 as usual.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from gpupower_api import domains
from gpupower_api.models import API_VERSION, KIND, GpuPowerBudget, InvalidSpecError, Strategy, parse_budget
from gpupower_operator.cli import profile
from gpupower_operator.core import allocation, planner, profiles
from gpupower_operator.core.planner import Plan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Plan GPU power budgets: replicas and per-GPU caps that serve the most demand within the watts.",
    pretty_exceptions_enable=False,
)
app.add_typer(profile.app, name="profile")
# Tables keep their width when piped (rich would otherwise assume 80 columns).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


class InputError(Exception):
    """Bad input from the user; the message names the field or file."""


def fail(message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code=1)


# ---------------------------------------------------------------------------
# Reading a budget file


def read_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents in ``path``, each a mapping."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read: {error}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}: invalid YAML{where}: {problem}") from None
    if not documents:
        raise InputError(f"{path}: empty file, expected a {KIND}")
    not_mappings = [i for i, doc in enumerate(documents) if not isinstance(doc, dict)]
    if not_mappings:
        raise InputError(f"{path}: document {not_mappings[0] + 1} is not a mapping")
    return documents


def load_budget(path: Path, name: str | None = None) -> GpuPowerBudget:
    """Read the GpuPowerBudget in ``path`` (other kinds in the file are skipped)."""
    return select_budget(path, read_documents(path), name)


def select_budget(path: Path, documents: list[dict[str, Any]], name: str | None = None) -> GpuPowerBudget:
    budgets = [doc for doc in documents if doc.get("kind") == KIND]
    if name is not None:
        budgets = [doc for doc in budgets if (doc.get("metadata") or {}).get("name") == name]
        if not budgets:
            raise InputError(f"{path}: no {KIND} named {name!r}")
    if not budgets:
        kinds = ", ".join(sorted({str(doc.get("kind")) for doc in documents}))
        raise InputError(f"{path}: kind: expected {KIND} ({API_VERSION}), found {kinds}")
    if len(budgets) > 1:
        names = ", ".join(str((doc.get("metadata") or {}).get("name")) for doc in budgets)
        raise InputError(f"{path}: holds {len(budgets)} budgets ({names}); choose one with --name")
    try:
        return parse_budget(budgets[0])
    except InvalidSpecError as error:
        raise InputError(f"{path}: {error}") from None


def parse_demand_overrides(values: list[str], budget: GpuPowerBudget) -> dict[str, float | None]:
    names = {target.name for target in budget.spec.targets}
    overrides: dict[str, float | None] = {}
    for item in values:
        target, sep, raw = item.partition("=")
        if not sep or not target:
            raise InputError(f"--demand {item!r}: expected TARGET=VALUE")
        if target not in names:
            raise InputError(
                f"--demand {item!r}: no target named {target!r} (targets: {', '.join(sorted(names))})"
            )
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"--demand {item!r}: {raw!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--demand {item!r}: demand must be a finite number >= 0")
        overrides[target] = value
    return overrides


# ---------------------------------------------------------------------------
# Rendering


def plan_document(plan: Plan, budget: GpuPowerBudget) -> dict[str, Any]:
    """A plan as plain data for -o json / -o yaml (camelCase, like the resource's status)."""
    return {
        "budget": budget.name,
        "strategy": str(plan.strategy),
        "budgetWatts": plan.budget_watts,
        "plannedWatts": round(plan.watts, 3),
        "utilization": round(plan.utilization, 6),
        "servedFraction": round(plan.served_fraction, 6),
        "binding": plan.binding,
        "feasible": plan.feasible,
        "infeasibleByWatts": round(plan.infeasible_by_watts, 3),
        "reason": plan.reason,
        "adjustment": plan.adjustment,
        "targets": [
            {
                "name": t.name,
                "desiredReplicas": t.desired_replicas,
                "plannedReplicas": t.replicas,
                "capWatts": t.cap_watts,
                "gpus": t.gpus,
                "projectedWatts": round(t.watts, 3),
                "capacity": round(t.capacity, 6),
                "demand": t.demand,
                "servedFraction": round(t.served_fraction, 6),
                **profiles.document(spec.profile),
            }
            for t, spec in zip(plan.targets, budget.spec.targets, strict=True)
        ],
    }


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.2f}"


def plan_table(plan: Plan, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("TARGET", "DESIRED", "REPLICAS", "CAP W", "GPUS", "WATTS", "CAPACITY", "DEMAND", "SERVED"):
        table.add_column(column, justify="left" if column == "TARGET" else "right")
    for t in plan.targets:
        table.add_row(
            t.name,
            str(t.desired_replicas),
            str(t.replicas),
            str(t.cap_watts),
            str(t.gpus),
            _number(t.watts),
            _number(t.capacity),
            _number(t.demand),
            _percent(t.served_fraction),
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(t.desired_replicas for t in plan.targets)),
        str(sum(t.replicas for t in plan.targets)),
        "",
        str(plan.gpus),
        f"{_number(plan.watts)} / {_number(plan.budget_watts)}",
        "",
        "",
        _percent(plan.served_fraction),
    )
    return table


def print_plan(plan: Plan, budget: GpuPowerBudget) -> None:
    out.print(plan_table(plan, f"{budget.name}: {plan.strategy} plan"))
    out.print(f"utilization {_percent(plan.utilization)}; {plan.reason}", markup=False)
    if plan.adjustment:
        out.print(f"note: {plan.adjustment}", markup=False)
    for target in budget.spec.targets:
        for line in (
            profiles.note(target.name, target.profile),
            profiles.source_note(target.name, target.profile),
        ):
            if line is not None:
                out.print(f"note: {line}", markup=False)


@dataclass(frozen=True)
class Comparison:
    optimize: Plan
    proportional: Plan

    @property
    def served_gain(self) -> float:
        return self.optimize.served_fraction - self.proportional.served_fraction

    @property
    def watts_difference(self) -> float:
        return self.optimize.watts - self.proportional.watts

    def document(self, budget: GpuPowerBudget) -> dict[str, Any]:
        return {
            "optimize": plan_document(self.optimize, budget),
            "proportional": plan_document(self.proportional, budget),
            "servedFractionGain": round(self.served_gain, 6),
            "wattsDifference": round(self.watts_difference, 3),
        }

    def summary(self) -> str:
        gain = self.served_gain * 100
        watts = self.watts_difference
        served = (
            f"Optimize serves {gain:.1f} points more of the demand"
            if gain > 1e-9
            else f"Optimize serves {-gain:.1f} points less of the demand"
            if gain < -1e-9
            else "both serve the same share of the demand"
        )
        power = (
            f"with {abs(watts):,.0f} W {'more' if watts > 0 else 'less'}"
            if abs(watts) >= 0.5
            else "with the same power"
        )
        return (
            f"{served} ({_percent(self.optimize.served_fraction)} vs "
            f"{_percent(self.proportional.served_fraction)}) {power} "
            f"({_number(self.optimize.watts)} W vs {_number(self.proportional.watts)} W "
            f"of {_number(self.optimize.budget_watts)} W)"
        )


def emit(document: Any, output: Output) -> None:
    if output is Output.JSON:
        out.print(json.dumps(document, indent=2), markup=False)
    else:
        out.print(yaml.safe_dump(document, sort_keys=False).rstrip(), markup=False)


# ---------------------------------------------------------------------------
# Commands


@app.command("plan")
def plan_command(
    file: Annotated[
        Path,
        typer.Option(
            "--file", "-f", help="YAML file holding a GpuPowerBudget, or domains and their budgets."
        ),
    ],
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.TABLE,
    strategy: Annotated[
        Strategy | None, typer.Option("--strategy", help="Override the budget's strategy.")
    ] = None,
    demand: Annotated[
        list[str] | None,
        typer.Option("--demand", help="Override a target's demand: TARGET=VALUE (repeatable)."),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Optimize beside Proportional; with domains, the allocation beside a split by GPU share.",
        ),
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Budget to plan when the file holds several.")
    ] = None,
) -> None:
    """Plan the budget in a file (or its domains and budgets together): replicas and caps per target."""
    try:
        documents = read_documents(file)
        if holds_domains(documents):
            for flag, value in (("--name", name), ("--demand", demand), ("--strategy", strategy)):
                if value:
                    raise InputError(
                        f"{flag}: the file holds domains, and all its budgets are planned together"
                    )
            plan_domains(load_tree(file, documents), output, compare)
            return
        budget = select_budget(file, documents, name)
        overrides = parse_demand_overrides(demand or [], budget)
    except InputError as error:
        fail(str(error))
    demand_map = {t.name: overrides.get(t.name, t.demand) for t in budget.spec.targets}
    if compare:
        comparison = Comparison(
            optimize=planner.plan(
                planner.problem_from_spec(budget.spec, demand_map, strategy=Strategy.OPTIMIZE)
            ),
            proportional=planner.plan(
                planner.problem_from_spec(budget.spec, demand_map, strategy=Strategy.PROPORTIONAL)
            ),
        )
        if output is not Output.TABLE:
            emit(comparison.document(budget), output)
            return
        print_plan(comparison.optimize, budget)
        out.print()
        print_plan(comparison.proportional, budget)
        out.print()
        out.print(comparison.summary(), markup=False)
        return
    result = planner.plan(planner.problem_from_spec(budget.spec, demand_map, strategy=strategy))
    if output is Output.TABLE:
        print_plan(result, budget)
    else:
        emit(plan_document(result, budget), output)


# ---------------------------------------------------------------------------
# Domains and budgets planned together


def holds_domains(documents: list[dict[str, Any]]) -> bool:
    """Whether a file is a tree of domains: it holds a domain, or a budget that joins one."""
    return any(
        doc.get("kind") == domains.KIND
        or (doc.get("kind") == KIND and isinstance(doc.get("spec"), dict) and "domainRef" in doc["spec"])
        for doc in documents
    )


@dataclass(frozen=True)
class Tree:
    """The domains and budgets of a file, parsed, with what the allocation takes."""

    domains: list[domains.GpuPowerDomain]
    budgets: list[GpuPowerBudget]  # those that join a domain
    alone: list[GpuPowerBudget]  # those that do not: planned on their own totalWatts
    inputs: list[allocation.BudgetInput]

    def domain_inputs(self) -> list[allocation.DomainInput]:
        """Each domain with its limit and, when the file carries a status, what it counts as committed."""
        out = []
        for domain in self.domains:
            committed = domain.status.committed if domain.status and domain.status.committed else None
            out.append(
                allocation.DomainInput(
                    name=domain.name,
                    limit_watts=domain.spec.total_watts,
                    parent=domain.spec.parent,
                    idle_watts=committed.idle_watts if committed else 0.0,
                    unmanaged_watts=committed.unmanaged_watts if committed else 0.0,
                    other_domains_watts=committed.other_domains_watts if committed else 0.0,
                )
            )
        return out


def load_tree(path: Path, documents: list[dict[str, Any]]) -> Tree:
    found: list[domains.GpuPowerDomain] = []
    budgets: list[GpuPowerBudget] = []
    alone: list[GpuPowerBudget] = []
    for index, doc in enumerate(documents, start=1):
        kind = doc.get("kind")
        try:
            if kind == domains.KIND:
                found.append(domains.parse_domain(doc))
            elif kind == KIND:
                budget = parse_budget(doc)
                (budgets if budget.spec.domain_ref else alone).append(budget)
        except InvalidSpecError as error:
            raise InputError(f"{path}: document {index} ({kind}): {error}") from None
    problems = allocation.tree_problems([allocation.DomainInput(d.name, 1, d.spec.parent) for d in found])
    if problems:
        raise InputError(f"{path}: domain {problems[0].domain}: spec.parent: {problems[0].message}")
    by_name = {d.name: d for d in found}
    inputs = []
    for budget in budgets:
        key = f"{budget.namespace}/{budget.name}"
        ref = budget.spec.domain_ref
        assert ref is not None
        domain = by_name.get(ref.name)
        if domain is None:
            raise InputError(f"{path}: budget {key}: spec.domainRef.name: no domain {ref.name} in the file")
        if not domain.spec.admits({"kubernetes.io/metadata.name": budget.namespace}):
            raise InputError(
                f"{path}: budget {key}: domain {ref.name} does not admit namespace {budget.namespace} "
                "(its spec.namespaceSelector)"
            )
        try:
            # The allocation decides the budget; spec.totalWatts, when set, only bounds it.
            problem = planner.problem_from_spec(budget.spec, total_watts=budget.spec.total_watts or 1)
        except ValueError as error:
            raise InputError(f"{path}: budget {key}: {error}") from None
        inputs.append(
            allocation.BudgetInput(
                namespace=budget.namespace,
                name=budget.name,
                domain=ref.name,
                problem=problem,
                priority=budget.spec.priority,
                limit_watts=budget.spec.total_watts,
            )
        )
    return Tree(domains=found, budgets=budgets, alone=alone, inputs=inputs)


def _watts(milliwatts: int) -> float:
    return round(milliwatts / 1000, 3)


def domain_document(domain: allocation.DomainAllocation) -> dict[str, Any]:
    return {
        "name": domain.name,
        "parent": domain.parent,
        "limitWatts": _watts(domain.limit_milliwatts),
        "committedWatts": _watts(domain.committed_milliwatts),
        "floorWatts": _watts(domain.floor_milliwatts),
        "allocatedWatts": _watts(domain.allocated_milliwatts),
        "headroomWatts": _watts(domain.headroom_milliwatts),
        "feasible": domain.feasible,
        "budgets": list(domain.budgets),
        "infeasibleBudgets": list(domain.infeasible_budgets),
        "reason": domain.reason,
    }


@dataclass(frozen=True)
class TreePlan:
    """The allocation of a file's tree and each budget's plan within its share."""

    allocation: allocation.Allocation
    plans: dict[str, Plan]  # by namespace/name, the budgets alone included
    static: dict[str, int] | None = None  # the static split's share per budget, for --compare
    static_plans: dict[str, Plan] | None = None


def plan_tree(tree: Tree, compare: bool) -> TreePlan:
    try:
        result = allocation.allocate(tree.domain_inputs(), tree.inputs)
    except ValueError as error:
        raise InputError(str(error)) from None
    plans = {
        share.key: planner.plan(allocation.planned_problem(budget, share.milliwatts))
        for budget, share in zip(tree.inputs, result.budgets, strict=True)
    }
    for budget in tree.alone:
        plans[f"{budget.namespace}/{budget.name}"] = planner.plan(planner.problem_from_spec(budget.spec))
    if not compare:
        return TreePlan(result, plans)
    static = allocation.static_split(tree.domain_inputs(), tree.inputs)
    static_plans = {
        budget.key: planner.plan(allocation.planned_problem(budget, static[budget.key]))
        for budget in tree.inputs
    }
    return TreePlan(result, plans, static, static_plans)


def tier_summary(tree: Tree, result: TreePlan) -> list[dict[str, Any]]:
    """Per priority, highest first: the least served budget of the tier, allocated and split statically."""
    assert result.static_plans is not None
    tiers = []
    for priority in sorted({b.priority for b in tree.inputs}, reverse=True):
        keys = [b.key for b in tree.inputs if b.priority == priority]
        tiers.append(
            {
                "priority": priority,
                "budgets": len(keys),
                "servedFraction": round(min(result.plans[k].served_fraction for k in keys), 6),
                "staticServedFraction": round(min(result.static_plans[k].served_fraction for k in keys), 6),
                "watts": round(sum(result.plans[k].watts for k in keys), 3),
                "staticWatts": round(sum(result.static_plans[k].watts for k in keys), 3),
            }
        )
    return tiers


def tree_document(tree: Tree, result: TreePlan) -> dict[str, Any]:
    by_key = {f"{b.namespace}/{b.name}": b for b in [*tree.budgets, *tree.alone]}
    budgets = []
    for share in result.allocation.budgets:
        entry: dict[str, Any] = {
            "namespace": share.namespace,
            "name": share.name,
            "domain": share.domain,
            "priority": share.priority,
            "allocatedWatts": _watts(share.milliwatts),
            "floorWatts": _watts(share.floor_milliwatts),
            "servedFraction": round(share.served_fraction, 6),
            "limitedBy": str(share.limited_by),
            "boundBy": share.bound_by,
            "reason": share.reason,
        }
        if result.static is not None and result.static_plans is not None:
            static = result.static_plans[share.key]
            entry["static"] = {
                "shareWatts": _watts(result.static[share.key]),
                "plannedWatts": round(static.watts, 3),
                "servedFraction": round(static.served_fraction, 6),
            }
        entry["plan"] = plan_document(result.plans[share.key], by_key[share.key])
        budgets.append(entry)
    document: dict[str, Any] = {
        "domains": [domain_document(d) for d in result.allocation.domains],
        "budgets": budgets,
    }
    if tree.alone:
        document["budgetsWithoutDomain"] = [
            plan_document(result.plans[f"{b.namespace}/{b.name}"], b) for b in tree.alone
        ]
    if result.static is not None:
        document["tiers"] = tier_summary(tree, result)
    return document


def _signed_points(gain: float) -> str:
    return f"{gain * 100:+.1f} points"


def print_tree(tree: Tree, result: TreePlan) -> None:
    table = Table(title="domains", title_justify="left")
    for column in (
        "DOMAIN",
        "PARENT",
        "LIMIT W",
        "COMMITTED W",
        "FLOORS W",
        "ALLOCATED W",
        "HEADROOM W",
        "STATE",
    ):
        table.add_column(column, justify="left" if column in {"DOMAIN", "PARENT", "STATE"} else "right")
    for d in result.allocation.domains:
        state = "ok" if d.feasible else f"infeasible by {_number(d.infeasible_by_milliwatts / 1000)} W"
        table.add_row(
            d.name,
            d.parent or "-",
            _number(d.limit_milliwatts / 1000),
            _number(d.committed_milliwatts / 1000),
            _number(d.floor_milliwatts / 1000),
            _number(d.allocated_milliwatts / 1000),
            _number(d.headroom_milliwatts / 1000),
            state,
        )
    out.print(table)
    budgets = Table(title="budgets", title_justify="left")
    columns = ["BUDGET", "DOMAIN", "PRIORITY", "ALLOCATED W", "SERVED"]
    if result.static_plans is not None:
        columns += ["STATIC W", "STATIC SERVED", "GAIN"]
    for column in [*columns, "WHY"]:
        budgets.add_column(column, justify="left" if column in {"BUDGET", "DOMAIN", "WHY"} else "right")
    for share in result.allocation.budgets:
        row = [
            share.key,
            share.domain,
            str(share.priority),
            _number(share.watts),
            _percent(share.served_fraction),
        ]
        if result.static_plans is not None:
            static = result.static_plans[share.key]
            row += [
                _number(static.watts),
                _percent(static.served_fraction),
                _signed_points(share.served_fraction - static.served_fraction),
            ]
        budgets.add_row(*row, share.reason)
    out.print()
    out.print(budgets)
    if result.static_plans is not None:
        out.print()
        for tier in tier_summary(tree, result):
            out.print(
                f"priority {tier['priority']} ({tier['budgets']} budget(s)): the least served gets "
                f"{_percent(tier['servedFraction'])} with the priority-aware allocation, "
                f"{_percent(tier['staticServedFraction'])} with the static split by GPU share "
                f"({_number(tier['watts'])} W vs {_number(tier['staticWatts'])} W)",
                markup=False,
            )
        return
    by_key = {f"{b.namespace}/{b.name}": b for b in [*tree.budgets, *tree.alone]}
    for key, plan in result.plans.items():
        out.print()
        print_plan(plan, by_key[key])


def plan_domains(tree: Tree, output: Output, compare: bool) -> None:
    result = plan_tree(tree, compare)
    if output is Output.TABLE:
        print_tree(tree, result)
    else:
        emit(tree_document(tree, result), output)


@dataclass(frozen=True)
class Sizing:
    rack_watts: float
    headroom: float
    overhead_watts: float
    gpus: int | None
    gpu_tdp_watts: float | None

    @property
    def usable_watts(self) -> float:
        return self.rack_watts * self.headroom - self.overhead_watts

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "rackWatts": self.rack_watts,
            "headroom": self.headroom,
            "overheadWatts": self.overhead_watts,
            "totalWatts": math.floor(self.usable_watts),
        }
        if self.gpus:
            doc["gpus"] = self.gpus
            doc["wattsPerGpu"] = round(self.usable_watts / self.gpus, 1)
        if self.gpu_tdp_watts:
            doc["gpuTdpWatts"] = self.gpu_tdp_watts
            doc["gpusAtTdp"] = math.floor(self.usable_watts / self.gpu_tdp_watts)
            if self.gpus:
                doc["fractionOfTdp"] = round(self.usable_watts / self.gpus / self.gpu_tdp_watts, 4)
        return doc


def check_sizing(sizing: Sizing) -> None:
    checks = [
        (sizing.rack_watts > 0 and math.isfinite(sizing.rack_watts), "--rack-watts: must be > 0"),
        (0 < sizing.headroom <= 1, f"--headroom: must be in (0, 1], got {sizing.headroom:g}"),
        (
            sizing.overhead_watts >= 0 and math.isfinite(sizing.overhead_watts),
            "--overhead-watts: must be >= 0",
        ),
        (sizing.gpus is None or sizing.gpus > 0, "--gpus: must be > 0"),
        (sizing.gpu_tdp_watts is None or sizing.gpu_tdp_watts > 0, "--gpu-tdp: must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    if sizing.usable_watts <= 0:
        raise InputError(
            f"--overhead-watts: {sizing.overhead_watts:g} W leaves no GPU budget out of "
            f"{sizing.rack_watts:g} W x {sizing.headroom:g} = {sizing.rack_watts * sizing.headroom:g} W"
        )


@app.command("budget")
def budget_command(
    rack_watts: Annotated[float, typer.Option("--rack-watts", help="Rack (or PDU) power limit in watts.")],
    headroom: Annotated[float, typer.Option("--headroom", help="Fraction of it you allow to use, e.g. 0.9.")],
    overhead_watts: Annotated[
        float, typer.Option("--overhead-watts", help="Power of everything but the GPUs: CPUs, fans, NICs.")
    ],
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPUs in the rack.")] = None,
    gpu_tdp: Annotated[
        float | None, typer.Option("--gpu-tdp", help="Default power limit of one GPU.")
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.TABLE,
) -> None:
    """Size a GPU budget: usable = rack x headroom - overhead, and what it means per GPU."""
    sizing = Sizing(rack_watts, headroom, overhead_watts, gpus, gpu_tdp)
    try:
        check_sizing(sizing)
    except InputError as error:
        fail(str(error))
    doc = sizing.document()
    if output is not Output.TABLE:
        emit(doc, output)
        return
    out.print(
        f"GPU budget: {_number(rack_watts)} W x {headroom:g} - {_number(overhead_watts)} W = "
        f"{doc['totalWatts']:,} W  (spec.totalWatts: {doc['totalWatts']})",
        markup=False,
    )
    if "wattsPerGpu" in doc:
        out.print(f"per GPU: {doc['wattsPerGpu']:,} W over {gpus} GPUs", markup=False)
    if "gpusAtTdp" in doc:
        line = f"GPUs at {_number(gpu_tdp)} W TDP that fit: {doc['gpusAtTdp']}"
        if "fractionOfTdp" in doc:
            line += f"; the {gpus} GPUs can run at {_percent(doc['fractionOfTdp'])} of TDP on average"
        out.print(line, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
