"""The planner: replicas and a per-GPU cap for each target, within a power budget.

Pure: plain values in, a :class:`Plan` out. No I/O, no clock, no Kubernetes types.
See DESIGN.md, "The planner's objective", and the README for the objective in
plain words.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product

from gpupower_api.models import BudgetSpec, Strategy


@dataclass(frozen=True)
class ProfilePoint:
    watts: float
    throughput: float


@dataclass(frozen=True)
class TargetProblem:
    """One target as the planner sees it: bounds, profile, demand and corrections."""

    name: str
    min_replicas: int
    max_replicas: int
    cap_min_watts: int
    cap_max_watts: int
    profile: tuple[ProfilePoint, ...]
    demand: float | None = None
    gpus_per_replica: int = 1
    # Closed-loop corrections: how much of its cap a GPU really draws, and how
    # much of the profile's throughput a replica really delivers (1.0 = as profiled).
    power_factor: float = 1.0
    throughput_factor: float = 1.0


@dataclass(frozen=True)
class Problem:
    total_watts: float
    targets: tuple[TargetProblem, ...]
    cap_step_watts: int = 5
    strategy: Strategy = Strategy.OPTIMIZE


@dataclass(frozen=True)
class TargetPlan:
    name: str
    desired_replicas: int
    replicas: int
    cap_watts: int
    watts: float
    capacity: float
    demand: float | None
    served_fraction: float
    gpus: int


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    budget_watts: float
    targets: tuple[TargetPlan, ...]
    watts: float
    served_fraction: float
    binding: bool
    feasible: bool
    infeasible_by_watts: float
    reason: str
    adjustment: str | None = None

    @property
    def utilization(self) -> float:
        return self.watts / self.budget_watts if self.budget_watts > 0 else 0.0

    @property
    def gpus(self) -> int:
        return sum(t.gpus for t in self.targets)

    def target(self, name: str) -> TargetPlan:
        return next(t for t in self.targets if t.name == name)


def problem_from_spec(
    spec: BudgetSpec,
    demand: Mapping[str, float | None] | None = None,
    cap_ranges: Mapping[str, tuple[int, int]] | None = None,
    corrections: Mapping[str, tuple[float, float]] | None = None,
    strategy: Strategy | None = None,
) -> Problem:
    """Build a :class:`Problem` from a validated spec.

    ``demand`` overrides a target's static demand (live demand from Prometheus);
    ``cap_ranges`` replaces a target's cap range (the effective range after the
    nodes' GPU limits); ``corrections`` gives (power_factor, throughput_factor).
    """
    raise NotImplementedError


def plan(problem: Problem) -> Plan:
    """Plan with the problem's strategy."""
    raise NotImplementedError


def optimize(problem: Problem) -> Plan:
    """The exact lexicographic optimum on the cap grid (see module docstring)."""
    raise NotImplementedError


def proportional(problem: Problem) -> Plan:
    """The classic algorithm, never above the budget when a plan within it exists."""
    raise NotImplementedError
