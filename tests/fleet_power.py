"""A model of a fleet's planned power while an operator's writes land, for tests of the write order.

Each target draws ``replicas x gpusPerReplica x cap``, with ``replicas`` the
workload's ``/scale`` replicas and ``cap`` the highest per-GPU cap any of its
pods carries (pods not yet capped count at the highest cap of their target, the
grant the status gives them). Walking a sequence of writes through this model
says whether the fleet could have drawn more than the budget on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class FleetModel:
    gpus_per_replica: Mapping[str, int]
    replicas: dict[str, int]
    pod_caps: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> pod -> watts

    def watts(self) -> float:
        total = 0.0
        for target, replicas in self.replicas.items():
            caps = self.pod_caps.get(target, {})
            cap = max(caps.values()) if caps else 0
            total += replicas * self.gpus_per_replica[target] * cap
        return total

    def set_cap(self, target: str, pod: str, watts: int) -> None:
        self.pod_caps.setdefault(target, {})[pod] = watts

    def scale(self, target: str, replicas: int) -> None:
        self.replicas[target] = replicas


def walk_is_safe(powers: list[float], budget_watts: float) -> tuple[bool, str]:
    """True when power never rises while above the budget, and never leaves it once within.

    ``powers[0]`` is the power before the first write.
    """
    within = powers[0] <= budget_watts
    for index in range(1, len(powers)):
        before, after = powers[index - 1], powers[index]
        if within and after > budget_watts:
            return False, f"write {index} raised power to {after:g} W above the budget of {budget_watts:g} W"
        if not within and after > before:
            return False, f"write {index} raised power from {before:g} to {after:g} W while over the budget"
        within = within or after <= budget_watts
    return True, "safe"
