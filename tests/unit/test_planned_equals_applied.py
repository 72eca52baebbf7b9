"""Planned equals applied: with the effective cap range, no planned cap is ever clamped by a GPU.

The operator side (effective range from the node labels the agents publish, then
the planner) and the agent side (the labels from NVML's constraints, then the
per-GPU cap policy) run together on generated fleets: every GPU of every node a
target's pods run on applies exactly the planned cap, so the watts the status
reports are the watts the GPUs are limited to.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpupower_agent.cluster import PodKey
from gpupower_agent.inventory import node_inventory
from gpupower_agent.nvml import GPU_MODELS, Gpu, GpuConstraints
from gpupower_agent.policy import Action, decide_gpu
from gpupower_agent.trust import PodCap, Verdict
from gpupower_api.models import parse_spec
from gpupower_operator.core.inventory import NodeInfo, Placement, cap_ranges, effective_range, node_info
from gpupower_operator.core.planner import plan, problem_from_spec

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MODELS = [model.constraints for model in GPU_MODELS.values()]


@st.composite
def node_gpus(draw: st.DrawFn, name: str) -> list[Gpu]:
    """1-8 GPUs: one model, or a mix of models and odd constraints."""
    count = draw(st.integers(1, 8))
    odd = st.tuples(st.integers(50, 400), st.integers(0, 500)).map(
        lambda t: GpuConstraints(t[0], t[0] + t[1], t[0] + t[1])
    )
    kinds = st.sampled_from(MODELS) | odd
    constraints = [draw(kinds)] * count if draw(st.booleans()) else [draw(kinds) for _ in range(count)]
    return [Gpu(f"{name}-gpu-{i}", i, "gpu", c) for i, c in enumerate(constraints)]


def _published(name: str, gpus: list[Gpu]) -> NodeInfo:
    labels = {key: value for key, value in node_inventory(gpus).labels.items() if value is not None}
    return node_info(name, {"nvidia.com/gpu.present": "true", **labels})


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, list[Gpu]], dict[str, frozenset[str]]]:
    node_names = [f"node-{i}" for i in range(draw(st.integers(1, 4)))]
    gpus = {name: draw(node_gpus(name)) for name in node_names}
    targets: list[dict[str, Any]] = []
    placement: dict[str, frozenset[str]] = {}
    for index in range(draw(st.integers(1, 3))):
        name = f"role-{index}"
        low_watts = draw(st.integers(50, 500))
        high_watts = low_watts + draw(st.integers(0, 400))
        target: dict[str, Any] = {
            "name": name,
            "workloadRef": {"name": name},
            "gpusPerReplica": draw(st.sampled_from([1, 2, 4])),
            "minReplicas": 0,
            "maxReplicas": draw(st.integers(1, 6)),
            "profile": {
                "points": [
                    {"watts": low_watts, "throughput": draw(st.floats(1, 10))},
                    {"watts": high_watts + 1, "throughput": draw(st.floats(10, 30))},
                ]
            },
            "demand": draw(st.floats(0, 120)),
        }
        if draw(st.booleans()):
            cap_min = draw(st.integers(50, 600))
            target["capWatts"] = {"min": cap_min, "max": cap_min + draw(st.integers(0, 500))}
        targets.append(target)
        placement[name] = frozenset(draw(st.sets(st.sampled_from(node_names), min_size=1)))
    spec = {
        "totalWatts": draw(st.integers(200, 20_000)),
        "safeDefaultWatts": 50,  # at most every drawn range's max (capWatts.min and points start at 50)
        "capStepWatts": draw(st.sampled_from([1, 5, 10, 25])),
        "targets": targets,
    }
    return spec, gpus, placement


@SETTINGS
@given(fleets())
def test_no_planned_cap_is_clamped_and_applied_watts_equal_planned_watts(
    fleet: tuple[dict[str, Any], dict[str, list[Gpu]], dict[str, frozenset[str]]],
) -> None:
    raw_spec, gpus, placement = fleet
    spec = parse_spec(raw_spec)
    nodes = {name: _published(name, node) for name, node in gpus.items()}
    ranges = [effective_range(t, Placement(bound_nodes=placement[t.name]), nodes) for t in spec.targets]
    usable = [r for r in ranges if not r.empty]
    for result in ranges:
        if result.empty:
            # Refused only when truly no cap of the spec's range is accepted by every GPU involved.
            involved = [gpu.constraints for node in placement[result.target] for gpu in gpus[node]]
            for watts in range(result.spec_min_watts, result.spec_max_watts + 1):
                assert any(not c.min_watts <= watts <= c.max_watts for c in involved)
    if len(usable) < len(ranges):
        return
    event("planned")
    the_plan = plan(problem_from_spec(spec, cap_ranges=cap_ranges(usable)))
    applied_watts = 0
    for target in spec.targets:
        planned = the_plan.target(target.name)
        for node in sorted(placement[target.name]):
            for gpu in gpus[node]:
                pod = PodKey("ns", f"{target.name}-on-{node}")
                cap = PodCap(pod, planned.cap_watts, 200, Verdict.TRUSTED)
                decision = decide_gpu(gpu.uuid, [cap], gpu.constraints, None, False)
                assert decision.action is Action.CAP
                limits = f"{gpu.constraints.min_watts}-{gpu.constraints.max_watts} W"
                assert not decision.clamped, (
                    f"{target.name}: planned {planned.cap_watts} W, {gpu.uuid} ({limits}) "
                    f"applies {decision.target_watts} W"
                )
        # Wherever its replicas land among those nodes, each of their GPUs holds the planned cap.
        applied_watts += planned.replicas * target.gpus_per_replica * planned.cap_watts
    assert applied_watts == the_plan.watts


def test_without_the_node_limits_the_agent_would_clamp_a_plan_up() -> None:
    """The failure this guards against: capWatts below what an A100 PCIe accepts."""
    spec = parse_spec(
        {
            "totalWatts": 400,
            "safeDefaultWatts": 150,
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "minReplicas": 4,
                    "maxReplicas": 4,
                    "capWatts": {"min": 100, "max": 700},
                    "profile": {"points": [{"watts": 100, "throughput": 1}, {"watts": 700, "throughput": 5}]},
                    "demand": 100,
                }
            ],
        }
    )
    a100 = GPU_MODELS["a100-pcie"].constraints
    naive = plan(problem_from_spec(spec)).target("decode")
    assert naive.cap_watts == 100
    decision = decide_gpu(
        "GPU-0", [PodCap(PodKey("ns", "p"), naive.cap_watts, 150, Verdict.TRUSTED)], a100, None, False
    )
    assert decision.clamped and decision.target_watts == 150  # 4 x 150 W applied for 400 W planned

    gpus = [Gpu(f"GPU-{i}", i, "a100-pcie", a100) for i in range(4)]
    nodes = {"a100-node": _published("a100-node", gpus)}
    result = effective_range(spec.targets[0], Placement(bound_nodes=frozenset({"a100-node"})), nodes)
    assert (result.min_watts, result.max_watts) == (150, 250)
    fitted = plan(problem_from_spec(spec, cap_ranges=cap_ranges([result])))
    assert fitted.target("decode").cap_watts == 150 and not fitted.feasible  # the status says: over budget
