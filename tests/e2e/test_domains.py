"""Power domains end to end: a row of two racks, four nodes of 8 fake H100s, three budgets of different
priority, an unmanaged GPU pod and idle GPUs, with the real operator and agents and a simulated kubelet.

What a breaker would see is read from the fake GPUs' state files every 100 ms: the sum of the limits of
*all* GPUs on each rack's nodes (idle ones and the unmanaged pod's included), and on the row's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.budgetkit import budget, condition, get_budget, target, wait_ready
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess, clean_namespace, running_operator
from tests.e2e.sampling import Sampling
from tests.envtest import ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers]

RACK = "topology.gpupower.dev/rack"
ROW = "topology.gpupower.dev/row"
HOST = "gpupower.test/host"
H100_MIN_WATTS = 200  # an idle GPU parks at its minimum (no idleGpuWatts)
UNMANAGED_WATTS = 300
RACK_A_WATTS = 6000
RACK_B_WATTS = 5000
ROW_WATTS = 9000
RESYNC_SECONDS = 2.0  # the operator harness's


@dataclass
class Row:
    control_plane: ControlPlane
    fleet: SimulatedFleet
    operator: OperatorProcess
    row: str
    rack_a: str
    rack_b: str
    labels: dict[str, dict[str, str]]  # node -> its labels
    rack_value: dict[str, str]  # rack domain -> its label value


def domain(name: str, watts: int, selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": name},
        "spec": {"totalWatts": watts, "nodeSelector": {"matchLabels": selector}, **spec},
    }


@pytest.fixture(scope="module")
def row(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Row]:
    cp = crd_installed
    if not cp.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    suffix = unique_name("r")
    row_value, a_value, b_value = f"{suffix}-row", f"{suffix}-a", f"{suffix}-b"
    names = {f"a{i}": unique_name("rack-a-node") for i in (1, 2)} | {
        f"b{i}": unique_name("rack-b-node") for i in (1, 2)
    }
    labels = {
        node: {ROW: row_value, RACK: a_value if key.startswith("a") else b_value, HOST: node}
        for key, node in names.items()
    }
    domains = [
        domain(f"{suffix}-row", ROW_WATTS, {ROW: row_value}, unmanagedGpuWatts=UNMANAGED_WATTS),
        domain(f"{suffix}-rack-a", RACK_A_WATTS, {RACK: a_value}, parent=f"{suffix}-row"),
        domain(f"{suffix}-rack-b", RACK_B_WATTS, {RACK: b_value}, parent=f"{suffix}-row"),
    ]
    cp.apply(domains)
    fleet = SimulatedFleet(
        cp, tmp_path_factory.mktemp("domains-fleet"), list(names.values()), gpus=8, labels=labels
    ).start()
    try:
        with running_operator(cp, tmp_path_factory.mktemp("domains-operator")) as operator:
            yield Row(
                cp,
                fleet,
                operator,
                f"{suffix}-row",
                f"{suffix}-rack-a",
                f"{suffix}-rack-b",
                labels,
                {f"{suffix}-rack-a": a_value, f"{suffix}-rack-b": b_value},
            )
    finally:
        cp.kubectl("delete", "gpd", *(d["metadata"]["name"] for d in domains), "--wait=false", check=False)
        fleet.stop()
        print(fleet.logs())


@pytest.fixture
def ns(row: Row, namespace: str) -> Iterator[str]:
    yield namespace
    clean_namespace(row.control_plane, namespace)


@dataclass
class Breakers(Sampling):
    """What every GPU on each rack's nodes and the row's holds, every 100 ms, from the fake GPUs' files."""

    row: Row
    interval_seconds: float = 0.1
    peaks: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    first: float = 0.0  # when the first and the last sample were taken (monotonic)
    last: float = 0.0
    # The nodes of each domain: the racks' from the nodes' labels; the test moves a node with move().
    members: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.row.rack_value.items():
            self.members[name] = [n for n in self.row.fleet.node_names if self.row.labels[n][RACK] == value]
        self.members[self.row.row] = list(self.row.fleet.node_names)

    def move(self, node: str, rack: str) -> None:
        """``node`` is in ``rack`` from now on (its label was just changed)."""
        members = {name: [n for n in nodes if n != node] for name, nodes in self.members.items()}
        members[rack].append(node)
        members[self.row.row] = list(self.row.fleet.node_names)
        self.members = members

    def sample(self) -> None:
        held = {name: sum(node.agent.limits().values()) for name, node in self.row.fleet.nodes.items()}
        for domain_name, nodes in self.members.items():
            total = sum(held[n] for n in nodes)
            self.peaks[domain_name] = max(self.peaks.get(domain_name, 0), total)
        self.samples += 1
        self.last = time.monotonic()
        if self.samples == 1:
            self.first = self.last

    def assert_within(self, limits: dict[str, float]) -> None:
        assert self.samples >= 20, f"{self.samples} samples: too few to say anything"
        period = (self.last - self.first) / (self.samples - 1)
        assert period < 0.3, f"one sample every {period:.2f} s: the sampler fell behind its 100 ms"
        over = {name: (self.peaks[name], limit) for name, limit in limits.items() if self.peaks[name] > limit}
        assert not over, f"limits of all GPUs above a domain's limit (peak, limit): {over}"


def in_domain(doc: dict[str, Any], domain_name: str, priority: int) -> dict[str, Any]:
    del doc["spec"]["totalWatts"]
    doc["spec"]["domainRef"] = {"name": domain_name}
    doc["spec"]["priority"] = priority
    return doc


def get_domain(cp: ControlPlane, name: str) -> dict[str, Any]:
    return cp.get_json("gpd", name)


def domain_condition(cp: ControlPlane, name: str, type_: str) -> dict[str, Any] | None:
    for item in (get_domain(cp, name).get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return None


def allocated(cp: ControlPlane, ns: str, name: str) -> float:
    return float(
        ((get_budget(cp, ns, name).get("status") or {}).get("domain") or {}).get("allocatedWatts") or 0
    )


def unmanaged_pod(name: str, namespace: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "notebook"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {HOST: node},
            "containers": [
                {
                    "name": "notebook",
                    "image": "registry.invalid/notebook:1",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ],
        },
    }


def idle_limits(row: Row) -> list[float]:
    """The limits of every GPU no pod holds, on the whole row."""
    found = []
    for node in row.fleet.nodes.values():
        held = {uuid for allocation in node.simulator.allocations().values() for uuid in allocation.gpu_uuids}
        found += [watts for uuid, watts in node.agent.limits().items() if uuid not in held]
    return found


def chat_held(row: Row, ns: str) -> dict[str, list[int]]:
    held = row.fleet.held_by_pods(ns)
    return {pod.name: limits for pod, limits in held.items() if pod.name.startswith("chat-")}


def test_a_row_of_two_racks_shares_its_watts_by_priority_and_never_exceeds_a_limit_on_the_way(
    row: Row, ns: str
) -> None:
    cp, fleet = row.control_plane, row.fleet
    a1, _, b1, b2 = fleet.node_names
    rack_a = {RACK: row.labels[a1][RACK]}
    # Every idle GPU parks at its minimum once its agent knows its domain.
    wait_for(
        lambda: all(w == H100_MIN_WATTS for w in idle_limits(row)),
        timeout=30,
        what="every idle GPU parked at its minimum",
    )
    cp.apply(
        [
            gpu_deployment("chat", ns, 1, node_selector=rack_a),
            gpu_deployment("batch", ns, 1, node_selector=rack_a),
            gpu_deployment("code", ns, 1, node_selector={HOST: b1}),
            unmanaged_pod("notebook", ns, b1),
        ]
    )
    budgets = {
        "chat": in_domain(
            budget("chat", ns, 1, [target("chat", "chat", 10, max_replicas=6)]), row.rack_a, 100
        ),
        "code": in_domain(
            budget("code", ns, 1, [target("code", "code", 90, max_replicas=6)]), row.rack_b, 50
        ),
        "batch": in_domain(
            budget("batch", ns, 1, [target("batch", "batch", 100, max_replicas=8)]), row.rack_a, 0
        ),
    }
    with Breakers(row) as breakers:
        cp.apply(list(budgets.values()))
        for name in budgets:
            wait_ready(cp, ns, name, timeout=90)

        # The unmanaged pod's GPU holds the row's unmanagedGpuWatts; every idle GPU stays parked.
        notebook = next(
            (pod, alloc)
            for node in fleet.nodes.values()
            for pod, alloc in node.simulator.allocations().items()
            if pod.namespace == ns and pod.name == "notebook"
        )
        wait_for(
            lambda: {fleet.nodes[b1].agent.limits()[u] for u in notebook[1].gpu_uuids} == {UNMANAGED_WATTS},
            timeout=20,
            what="the unmanaged pod's GPU at the row's unmanagedGpuWatts",
        )
        assert set(idle_limits(row)) == {H100_MIN_WATTS}
        row_status = wait_for(
            lambda: (s := get_domain(cp, row.row).get("status")) and s.get("budgets") is not None and s,
            timeout=20,
            what="the row's status",
        )
        assert (row_status["nodes"], row_status["gpus"]) == (4, 32)
        assert row_status["committed"]["unmanagedWatts"] == UNMANAGED_WATTS
        rack_a_status = get_domain(cp, row.rack_a)["status"]
        assert (rack_a_status["nodes"], rack_a_status["gpus"]) == (2, 16)
        assert {(a["name"], a["priority"]) for a in rack_a_status["allocations"]} == {
            ("chat", 100),
            ("batch", 0),
        }

        # An idle node of rack b moves into rack a: the allocation follows within a reconcile of the change.
        cp.kubectl("label", "node", b2, f"{RACK}={row.labels[a1][RACK]}", "--overwrite")
        breakers.move(b2, row.rack_a)
        wait_for(
            lambda: (
                (get_domain(cp, row.rack_a).get("status") or {}).get("nodes") == 3
                and (get_domain(cp, row.rack_b).get("status") or {}).get("nodes") == 1
            ),
            timeout=10,
            what="rack a with three nodes and rack b with one",
        )
        wait_for(
            lambda: get_domain(cp, row.rack_a)["status"]["gpus"] == 24,
            timeout=10,
            what="rack a counting the moved node's GPUs",
        )

        # The chat model's demand rises: the batch job (lowest priority) gives way; code keeps its share.
        batch_before, code_before = allocated(cp, ns, "batch"), allocated(cp, ns, "code")
        chat_before = allocated(cp, ns, "chat")
        cp.kubectl(
            "patch", "gpb", "chat", "-n", ns, "--type=json",
            "-p", json.dumps([{"op": "replace", "path": "/spec/targets/0/demand", "value": 90}]),
        )  # fmt: skip
        wait_for(
            lambda: allocated(cp, ns, "chat") > chat_before and allocated(cp, ns, "batch") < batch_before,
            timeout=30,
            what="watts moved from the batch job to the chat model",
        )
        for name in budgets:
            wait_ready(cp, ns, name, timeout=90)
        assert allocated(cp, ns, "code") >= code_before
        batch_domain = get_budget(cp, ns, "batch")["status"]["domain"]
        assert batch_domain["limitedBy"] == "HigherPriority", batch_domain
        assert get_budget(cp, ns, "chat")["status"]["domain"]["limitedBy"] == "DemandServed"
    print(f"peaks over {breakers.samples} samples: {breakers.peaks}")
    breakers.assert_within({row.rack_a: RACK_A_WATTS, row.rack_b: RACK_B_WATTS, row.row: ROW_WATTS})
    assert set(idle_limits(row)) == {H100_MIN_WATTS}, "idle GPUs at their parked limit"


def test_invalid_domains_are_refused_or_named_and_the_last_good_allocation_stays(row: Row, ns: str) -> None:
    cp = row.control_plane
    suffix = unique_name("bad")
    negative = domain(f"{suffix}-neg", -5, {RACK: "nowhere"})
    result = cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(negative), check=False)
    assert result.returncode != 0 and "spec.totalWatts" in result.stderr, result.stderr
    cp.apply(
        [
            domain(f"{suffix}-x", 1000, {RACK: "nowhere-x"}, parent=f"{suffix}-y"),
            domain(f"{suffix}-y", 1000, {RACK: "nowhere-y"}, parent=f"{suffix}-x"),
            domain(f"{suffix}-orphan", 1000, {RACK: "nowhere-o"}, parent=f"{suffix}-missing"),
            # A second chain over one of rack a's nodes.
            domain(f"{suffix}-overlap", 20000, {HOST: row.fleet.node_names[0]}),
        ]
    )
    try:
        for name, reason in ((f"{suffix}-x", "ParentCycle"), (f"{suffix}-orphan", "ParentNotFound")):
            found = wait_for(
                lambda n=name: domain_condition(cp, n, "Ready"), timeout=15, what=f"{name} Ready condition"
            )
            assert (found["status"], found["reason"]) == ("False", reason), found
        overlap = wait_for(
            lambda: (
                (c := domain_condition(cp, f"{suffix}-overlap", "Overlap")) and c["status"] == "True" and c
            ),
            timeout=15,
            what="the overlap named",
        )
        assert row.fleet.node_names[0] in overlap["message"]
    finally:
        cp.kubectl(
            "delete",
            "gpd",
            f"{suffix}-x",
            f"{suffix}-y",
            f"{suffix}-orphan",
            f"{suffix}-overlap",
            check=False,
        )

    # A budget whose domain's chain breaks keeps what it was allocated, and its GPUs keep their caps.
    cp.apply(gpu_deployment("chat", ns, 1, node_selector={RACK: row.labels[row.fleet.node_names[0]][RACK]}))
    doc = in_domain(budget("chat", ns, 1, [target("chat", "chat", 30, max_replicas=4)]), row.rack_a, 100)
    cp.apply(doc)
    before = wait_ready(cp, ns, "chat", timeout=60)["status"]
    held_before = chat_held(row, ns)
    original = get_domain(cp, row.rack_a)["spec"]["parent"]
    cp.kubectl(
        "patch", "gpd", row.rack_a, "--type=merge", "-p", json.dumps({"spec": {"parent": "no-such-row"}})
    )
    try:
        found = wait_for(
            lambda: (
                (c := domain_condition(cp, row.rack_a, "Ready")) and c["reason"] == "ParentNotFound" and c
            ),
            timeout=15,
            what="rack a not allocated",
        )
        assert "the last allocation stays in force" in found["message"]
        wait_for(
            lambda: (c := condition(get_budget(cp, ns, "chat"), "DomainAdmitted")) and c["status"] == "False",
            timeout=15,
            what="the budget told its domain cannot be allocated",
        )
        time.sleep(2 * RESYNC_SECONDS)  # a few reconciles of the budget
        after = get_budget(cp, ns, "chat")["status"]
        assert after["budgetWatts"] == before["budgetWatts"], "the last allocation stays in force"
        assert after["targets"][0]["plannedReplicas"] == before["targets"][0]["plannedReplicas"]
        assert chat_held(row, ns) == held_before, "the GPUs keep their caps"
    finally:
        cp.kubectl(
            "patch", "gpd", row.rack_a, "--type=merge", "-p", json.dumps({"spec": {"parent": original}})
        )
    wait_ready(cp, ns, "chat", timeout=60)
