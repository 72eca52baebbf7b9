"""The node inventory the agent publishes: labels and annotation from the GPUs' constraints, and the patch."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gpupower_agent.inventory import inventory_patch, node_inventory
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml, Gpu, GpuConstraints, NvmlError
from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_DEFAULT_LABEL,
    GPU_POWER_MAX_LABEL,
    GPU_POWER_MIN_LABEL,
    parse_watts_label,
)


def _gpu(index: int, min_watts: int, max_watts: int, default_watts: int, product: str = "gpu") -> Gpu:
    return Gpu(f"GPU-{index}", index, product, GpuConstraints(min_watts, max_watts, default_watts))


def test_one_model_publishes_its_own_constraints() -> None:
    gpus = [_gpu(i, 150, 250, 250, "a100-pcie") for i in range(8)]
    inventory = node_inventory(gpus)
    assert inventory.labels == {
        GPU_POWER_MIN_LABEL: "150",
        GPU_POWER_MAX_LABEL: "250",
        GPU_POWER_DEFAULT_LABEL: "250",
    }
    detail = json.loads(inventory.annotation)
    assert [d["index"] for d in detail] == list(range(8))
    assert detail[0] == {
        "uuid": "GPU-0",
        "index": 0,
        "product": "a100-pcie",
        "minWatts": 150,
        "maxWatts": 250,
        "defaultWatts": 250,
    }


def test_mixed_gpus_publish_the_range_every_gpu_accepts_and_the_smallest_default() -> None:
    inventory = node_inventory([_gpu(0, 200, 700, 700, "h100-sxm"), _gpu(1, 150, 250, 250, "a100-pcie")])
    assert inventory.labels[GPU_POWER_MIN_LABEL] == "200"
    assert inventory.labels[GPU_POWER_MAX_LABEL] == "250"
    assert inventory.labels[GPU_POWER_DEFAULT_LABEL] == "250"
    assert [d["product"] for d in json.loads(inventory.annotation)] == ["h100-sxm", "a100-pcie"]


def test_a_default_below_the_common_minimum_is_raised_into_the_range() -> None:
    inventory = node_inventory([_gpu(0, 100, 400, 120), _gpu(1, 150, 400, 400)])
    assert inventory.labels[GPU_POWER_DEFAULT_LABEL] == "150"


def test_gpus_sharing_no_cap_publish_min_above_max_for_the_operator_to_refuse() -> None:
    inventory = node_inventory([_gpu(0, 100, 200, 200), _gpu(1, 250, 300, 300)])
    assert int(inventory.labels[GPU_POWER_MIN_LABEL] or 0) > int(inventory.labels[GPU_POWER_MAX_LABEL] or 0)


def test_a_node_without_gpus_has_no_labels() -> None:
    inventory = node_inventory([])
    assert set(inventory.labels.values()) == {None}
    assert json.loads(inventory.annotation) == []


def test_the_patch_touches_only_inventory_keys_and_nothing_when_up_to_date() -> None:
    desired = node_inventory([_gpu(0, 200, 700, 700)])
    other = {"kubernetes.io/hostname": "n1"}
    patch = inventory_patch(desired, other, {"node.alpha.kubernetes.io/ttl": "0"})
    assert patch is not None
    assert set(patch["metadata"]["labels"]) == {
        GPU_POWER_MIN_LABEL,
        GPU_POWER_MAX_LABEL,
        GPU_POWER_DEFAULT_LABEL,
    }
    assert set(patch["metadata"]["annotations"]) == {GPU_POWER_ANNOTATION}
    applied_labels = {**other, **patch["metadata"]["labels"]}
    applied_annotations = dict(patch["metadata"]["annotations"])
    assert inventory_patch(desired, applied_labels, applied_annotations) is None


def test_a_gpu_lost_changes_only_the_annotation_when_the_range_stays() -> None:
    before = node_inventory([_gpu(i, 200, 700, 700) for i in range(2)])
    after = node_inventory([_gpu(0, 200, 700, 700)])
    patch = inventory_patch(after, dict(before.labels), {GPU_POWER_ANNOTATION: before.annotation})
    assert patch == {"metadata": {"annotations": {GPU_POWER_ANNOTATION: after.annotation}}}


def test_the_last_gpu_gone_removes_the_labels() -> None:
    before = node_inventory([_gpu(0, 200, 700, 700)])
    patch = inventory_patch(node_inventory([]), {k: v for k, v in before.labels.items() if v}, {})
    assert patch is not None
    assert patch["metadata"]["labels"] == dict.fromkeys(before.labels)


constraints = st.tuples(st.integers(1, 2000), st.integers(1, 2000), st.integers(1, 2000)).map(
    lambda t: GpuConstraints(
        min(t[0], t[1]), max(t[0], t[1]), min(max(t[2], min(t[0], t[1])), max(t[0], t[1]))
    )
)


@given(st.lists(constraints, min_size=1, max_size=16))
def test_labels_parse_and_every_gpu_accepts_every_cap_in_the_published_range(
    gpu_constraints: list[GpuConstraints],
) -> None:
    gpus = [Gpu(f"GPU-{i}", i, "gpu", c) for i, c in enumerate(gpu_constraints)]
    inventory = node_inventory(gpus)
    low = parse_watts_label(GPU_POWER_MIN_LABEL, inventory.labels[GPU_POWER_MIN_LABEL])
    high = parse_watts_label(GPU_POWER_MAX_LABEL, inventory.labels[GPU_POWER_MAX_LABEL])
    default = parse_watts_label(GPU_POWER_DEFAULT_LABEL, inventory.labels[GPU_POWER_DEFAULT_LABEL])
    if low <= high:
        assert low <= default <= high
        for c in gpu_constraints:
            assert c.min_watts <= low and high <= c.max_watts
    else:
        assert any(c.max_watts < low for c in gpu_constraints)
    assert node_inventory(list(reversed(gpus))) == inventory  # order-independent text: no spurious patch


def test_the_fake_reports_a_lost_gpu_and_a_replaced_model_from_its_state_file(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    nvml = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]), state)
    gpus = json.loads(state.read_text())
    gpus[0]["lost"] = True
    gpus[1]["model"] = "a100-pcie"
    state.write_text(json.dumps(gpus))
    present = nvml.gpus()
    assert [g.index for g in present] == [1]
    assert present[0].constraints == GPU_MODELS["a100-pcie"].constraints
    assert nvml.power_limit_watts(present[0].uuid) == 250  # the old 700 W limit is clamped into the new GPU
    try:
        nvml.power_limit_watts(gpus[0]["uuid"])
    except NvmlError as error:
        assert error.kind.value == "gpu_lost"
    else:
        raise AssertionError("a lost GPU answered")
