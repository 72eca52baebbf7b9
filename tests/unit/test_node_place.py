"""Where a node sits among the power domains, and the settings its GPUs get from them."""

from __future__ import annotations

from typing import Any

from gpupower_api.domains import DomainSpec, parse_domain_spec, place_node


def spec(label: str, value: str, **fields: Any) -> DomainSpec:
    return parse_domain_spec({"totalWatts": 9000, "nodeSelector": {"matchLabels": {label: value}}, **fields})


ROW = "topology.gpupower.dev/row"
RACK = "topology.gpupower.dev/rack"


def test_a_racks_node_is_in_its_row_and_takes_the_nearest_setting() -> None:
    domains = {
        "row-r3": spec(ROW, "r3", idleGpuWatts=100, unmanagedGpuWatts=300),
        "rack-a12": spec(RACK, "a12", parent="row-r3", unmanagedGpuWatts=250),
        "rack-a13": spec(RACK, "a13", parent="row-r3"),
    }
    # The row's selector misses the node: it is in the row through its rack.
    place = place_node(domains, {RACK: "a12"})
    assert place.selected_by == ("rack-a12",)
    assert place.chains == (("rack-a12", "row-r3"),)
    assert place.domains == {"rack-a12", "row-r3"}
    assert (place.idle_gpu_watts, place.unmanaged_gpu_watts) == (100, 250)
    assert not place.overlapping
    both = place_node(domains, {RACK: "a13", ROW: "r3"})
    assert both.selected_by == ("rack-a13", "row-r3") and not both.overlapping
    assert (both.idle_gpu_watts, both.unmanaged_gpu_watts) == (100, 300)


def test_a_node_no_domain_selects_is_in_none() -> None:
    place = place_node({"rack": spec(RACK, "a12")}, {RACK: "b7"})
    assert not place.in_domain and place.domains == frozenset() and place.idle_gpu_watts is None


def test_a_node_two_racks_claim_overlaps_and_takes_the_lower_settings() -> None:
    domains = {
        "rack-a": spec(RACK, "a", idleGpuWatts=150, unmanagedGpuWatts=400),
        "rack-b": spec("zone", "z", unmanagedGpuWatts=300),
    }
    place = place_node(domains, {RACK: "a", "zone": "z"})
    assert place.overlapping
    assert place.domains == {"rack-a", "rack-b"}
    # rack-b parks at each GPU's minimum (unset), lower than 150 W; both cap unmanaged pods, 300 W lower.
    assert (place.idle_gpu_watts, place.unmanaged_gpu_watts) == (None, 300)


def test_a_missing_parent_or_a_cycle_ends_the_chain() -> None:
    domains = {
        "rack": spec(RACK, "a", parent="row-gone"),
        "x": spec("x", "1", parent="y"),
        "y": spec("y", "1", parent="x"),
    }
    assert place_node(domains, {RACK: "a"}).chains == (("rack",),)
    assert place_node(domains, {"x": "1"}).chains == (("x", "y"),)
