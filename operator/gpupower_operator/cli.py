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

from gpupower_api.models import API_VERSION, KIND, GpuPowerBudget, InvalidSpecError, Strategy, parse_budget
from gpupower_operator import planner, profile_cli, profiles
from gpupower_operator.planner import Plan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Plan GPU power budgets: replicas and per-GPU caps that serve the most demand within the watts.",
    pretty_exceptions_enable=False,
)
app.add_typer(profile_cli.app, name="profile")
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


def load_budget(path: Path, name: str | None = None) -> GpuPowerBudget:
    """Read the GpuPowerBudget in ``path`` (other kinds in the file are skipped)."""
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
    file: Annotated[Path, typer.Option("--file", "-f", help="YAML file holding a GpuPowerBudget.")],
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.TABLE,
    strategy: Annotated[
        Strategy | None, typer.Option("--strategy", help="Override the budget's strategy.")
    ] = None,
    demand: Annotated[
        list[str] | None,
        typer.Option("--demand", help="Override a target's demand: TARGET=VALUE (repeatable)."),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Print Optimize beside Proportional and the difference.")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Budget to plan when the file holds several.")
    ] = None,
) -> None:
    """Plan the budget in a file: replicas and a per-GPU cap for each target."""
    try:
        budget = load_budget(file, name)
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
