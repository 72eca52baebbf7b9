"""`make demo`: the real operator and agents on a real local control plane with simulated GPU nodes.

Real: kube-apiserver, etcd, controller-manager and scheduler (the envtest kit),
kubectl, the CRD and RBAC from manifests/, the gpupower operator and one
gpupower agent per node, each a separate process under its own
ServiceAccount. Simulated: the two nodes (no kubelet, no containers), their
kubelet PodResources sockets, and their GPUs (the agent's fake NVML, H100 SXM
constraints: 200-700 W, default 700 W).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from demo.controlplane import REPO, ControlPlane, ControlPlaneUnavailable, running_control_plane, source_env
from demo.nodesim import NodeSimulator, running_simulators
from gpupower_api.contract import POWER_LIMIT_ANNOTATION

DEMO = Path(__file__).resolve().parent
NAMESPACE = "inference"
BUDGET = "llama-70b"
NODES = ("gpu-node-1", "gpu-node-2")
GPUS_PER_NODE = 8
GPU_MODEL = "h100-sxm"
SAFE_DEFAULT_WATTS = 300


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    name: str
    directory: Path
    simulator: NodeSimulator

    @property
    def gpu_state_file(self) -> Path:
        return self.directory / "fake-gpus.json"

    def gpu_limits(self) -> dict[str, dict[str, Any]]:
        """What the (fake) hardware holds: uuid -> {index, limitWatts}."""
        try:
            gpus = json.loads(self.gpu_state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {gpu["uuid"]: gpu for gpu in gpus}


@dataclass(frozen=True)
class FleetSample:
    seconds: float
    watts: int
    gpus: int


class Fleet:
    """The simulated nodes and what their GPUs hold."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    def applied_watts(self) -> tuple[int, int]:
        """Sum of the power limits of the GPUs that Running pods hold, and how many GPUs that is."""
        watts = gpus = 0
        for node in self.nodes:
            limits = node.gpu_limits()
            for uuid in node.simulator.running_gpus():
                if uuid in limits:
                    watts += int(limits[uuid]["limitWatts"])
                    gpus += 1
        return watts, gpus

    def gpu_rows(self) -> list[tuple[str, int, str, str, int]]:
        rows = []
        for node in self.nodes:
            limits = node.gpu_limits()
            holders = node.simulator.running_gpus()
            for uuid, gpu in sorted(limits.items(), key=lambda item: item[1]["index"]):
                pod = holders.get(uuid)
                rows.append((node.name, gpu["index"], uuid[:12], pod.name if pod else "-", gpu["limitWatts"]))
        return rows


@contextmanager
def simulated_nodes(cp: ControlPlane, root: Path) -> Iterator[Fleet]:
    """Create the Node objects and run one simulator per node in a background event loop."""
    nodes: list[Node] = []
    for name in NODES:
        cp.add_node(name, gpus=GPUS_PER_NODE)
        directory = root / name
        directory.mkdir(parents=True)
        simulator = NodeSimulator(name, GPUS_PER_NODE, directory / "pod-resources" / "kubelet.sock")
        nodes.append(Node(name, directory, simulator))
    with running_simulators(cp.kubeconfig, [node.simulator for node in nodes]):
        yield Fleet(nodes)


@contextmanager
def process(args: list[str], env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with its log in ``log_file``; SIGTERM on exit (agents restore defaults then)."""
    with log_file.open("wb") as log:
        child = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def install(cp: ControlPlane) -> None:
    """The CRD, RBAC and the agent's admission policy from manifests/, and the workloads."""
    cp.kubectl("apply", "-f", str(REPO / "crds" / "gpupowerbudgets.yaml"))
    cp.kubectl("apply", "-f", str(REPO / "crds" / "gpupowerprofileruns.yaml"))
    cp.kubectl("apply", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))
    cp.kubectl("apply", "-f", str(REPO / "manifests" / "operator" / "rbac.yaml"))
    cp.kubectl("apply", "-f", str(REPO / "manifests" / "agent" / "rbac.yaml"))
    cp.kubectl("apply", "-f", str(REPO / "manifests" / "agent" / "admission-policy.yaml"))
    cp.wait_established("gpupowerbudgets.gpupower.dev")
    cp.wait_established("gpupowerprofileruns.gpupower.dev")
    cp.kubectl("create", "namespace", NAMESPACE)
    cp.kubectl("apply", "-f", str(DEMO / "workloads.yaml"))


def budget_status(cp: ControlPlane) -> dict[str, Any]:
    result = cp.kubectl("get", "gpb", BUDGET, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def converged(cp: ControlPlane, fleet: Fleet) -> str | None:
    """None when the fleet runs the budget's current plan; else what is still missing."""
    budget = budget_status(cp)
    status = budget.get("status") or {}
    if status.get("observedGeneration") != budget.get("metadata", {}).get("generation"):
        return "the operator has not planned the current generation"
    caps = {t["name"]: t for t in status.get("targets") or []}
    pods = json.loads(cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    running: dict[str, int] = {}
    limits: dict[str, int] = {}
    for node in fleet.nodes:
        for uuid, gpu in node.gpu_limits().items():
            limits[uuid] = int(gpu["limitWatts"])
    holders = {pod: uuid for node in fleet.nodes for uuid, pod in node.simulator.running_gpus().items()}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            return f"pod {pod['metadata']['name']} is terminating"
        role = pod["metadata"]["labels"]["role"]
        target = caps.get(role)
        if target is None:
            return f"no plan for {role} yet"
        cap = (pod["metadata"].get("annotations") or {}).get(POWER_LIMIT_ANNOTATION)
        if cap != str(target["capWatts"]):
            return f"pod {pod['metadata']['name']} has cap {cap}, plan says {target['capWatts']}"
        if pod["status"].get("phase") != "Running":
            return f"pod {pod['metadata']['name']} is {pod['status'].get('phase')}"
        running[role] = running.get(role, 0) + 1
    roles = {pod["metadata"]["name"]: pod["metadata"]["labels"]["role"] for pod in pods}
    for holder, uuid in holders.items():
        cap = caps[roles[holder.name]]["capWatts"] if holder.name in roles else None
        if cap is not None and limits.get(uuid) != cap:
            return f"GPU {uuid[:12]} of {holder.name} holds {limits.get(uuid)} W, plan says {cap}"
    for name, target in caps.items():
        if running.get(name, 0) != target["plannedReplicas"]:
            return f"{name}: {running.get(name, 0)} pods running, plan says {target['plannedReplicas']}"
    return None


class Sampler:
    """Reads what the fleet's GPUs hold every ``interval_seconds`` in a background thread."""

    def __init__(self, fleet: Fleet, interval_seconds: float = 0.02) -> None:
        self.fleet = fleet
        self.interval_seconds = interval_seconds
        self.samples: list[FleetSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            watts, gpus = self.fleet.applied_watts()
            self.samples.append(FleetSample(time.monotonic() - self._start, watts, gpus))
            self._stop.wait(self.interval_seconds)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_watts(self) -> int:
        return max(sample.watts for sample in self.samples)


def wait_ready_pods(cp: ControlPlane, timeout_seconds: float) -> None:
    """Wait until every worker pod is Ready (its containers run and its readiness gates pass)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        pods = json.loads(cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        ready = [
            any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
        ]
        if ready and all(ready):
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker pods not Ready after {timeout_seconds:g}s")


def wait_converged(cp: ControlPlane, fleet: Fleet, timeout_seconds: float) -> float:
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_seconds:
        missing = converged(cp, fleet)
        if missing is None:
            return time.monotonic() - start
        last = missing
        time.sleep(0.1)
    raise TimeoutError(f"not converged after {timeout_seconds:g}s: {last}")


@dataclass(frozen=True)
class NewReplica:
    """A replica added when the budget went back up: when its kubelet took each step, and when its GPUs
    first held its cap (seconds after the GPUs were allocated; None: never seen)."""

    pod: str
    capped_after: float | None
    started_after: float | None
    ready_after: float | None

    @property
    def ready_only_once_capped(self) -> bool:
        return (
            self.ready_after is not None
            and self.capped_after is not None
            and self.capped_after <= self.ready_after
        )


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured while the budget was lowered, and raised again."""

    before_watts: int
    peak_watts: int
    after_watts: int
    budget_watts: int
    converge_seconds: float
    samples: int
    raised_peak_watts: int = 0
    raised_budget_watts: int = 0
    new_replicas: tuple[NewReplica, ...] = ()

    @property
    def no_overshoot(self) -> bool:
        return (
            self.peak_watts <= self.before_watts
            and self.after_watts <= self.budget_watts
            and self.raised_peak_watts <= self.raised_budget_watts
        )

    @property
    def gated(self) -> bool:
        """Every new replica turned Ready only once its GPUs held its cap."""
        return bool(self.new_replicas) and all(r.ready_only_once_capped for r in self.new_replicas)


class CapWatcher:
    """Notes, every 10 ms, when each new pod's GPUs first hold at most their role's cap."""

    def __init__(self, fleet: Fleet, caps: dict[str, int], known: set[str]) -> None:
        self.fleet = fleet
        self.caps = caps  # role -> planned cap
        self.known = known  # pods that existed before
        self.capped_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.fleet.nodes:
                limits = node.gpu_limits()
                for pod, allocation in node.simulator.allocations().items():
                    role = pod.name.removeprefix("llama-70b-").split("-", 1)[0]
                    if pod.namespace != NAMESPACE or pod.name in self.known or pod.name in self.capped_at:
                        continue
                    held = [limits.get(uuid, {}).get("limitWatts") for uuid in allocation.gpu_uuids]
                    if role in self.caps and all(w is not None and w <= self.caps[role] for w in held):
                        self.capped_at[pod.name] = time.monotonic()
            self._stop.wait(0.01)

    def __enter__(self) -> CapWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def replicas(self) -> list[NewReplica]:
        rows = []
        for node in self.fleet.nodes:
            for pod, steps in node.simulator.steps().items():
                if pod.namespace != NAMESPACE or pod.name in self.known or steps.allocated_at is None:
                    continue
                base = steps.allocated_at

                def after(moment: float | None, base: float = base) -> float | None:
                    return None if moment is None else moment - base

                rows.append(
                    NewReplica(
                        pod.name,
                        after(self.capped_at.get(pod.name)),
                        after(steps.started_at),
                        after(steps.ready_at),
                    )
                )
        return sorted(rows, key=lambda r: r.pod)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def print_new_replicas(replicas: list[NewReplica]) -> None:
    say(f"{'NEW REPLICA':<34} {'GPU CAPPED':>10} {'STARTED':>9} {'READY':>9}   (after GPUs were allocated)")
    for row in replicas:
        capped, started, ready = (_ms(s) for s in (row.capped_after, row.started_after, row.ready_after))
        say(f"{row.pod:<34} {capped:>10} {started:>9} {ready:>9}")


def print_gpus(fleet: Fleet) -> None:
    say(f"{'NODE (simulated)':<18} {'GPU':>3}  {'UUID':<12}  {'POD':<34} {'LIMIT W':>7}")
    for node, index, uuid, pod, limit in fleet.gpu_rows():
        say(f"{node:<18} {index:>3}  {uuid:<12}  {pod:<34} {limit:>7}")
    watts, gpus = fleet.applied_watts()
    say(f"applied to the {gpus} GPUs of running worker pods: {watts:,} W")


def run_demo(lower_to_watts: int, timeout_seconds: float) -> DemoResult:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    say("gpupower demo — REAL: control plane, kubectl, operator, agents. SIMULATED: nodes, kubelets, GPUs.")
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpupower-demo-")))
        cp = stack.enter_context(running_control_plane(root / "control-plane"))
        say(f"[real] control plane up ({cp.run_dir})")
        install(cp)
        fleet = stack.enter_context(simulated_nodes(cp, root / "nodes"))
        say(f"[simulated] nodes {', '.join(NODES)}: {GPUS_PER_NODE} x {GPU_MODEL} each")
        operator_kubeconfig = cp.service_account_kubeconfig("gpupower-system", "gpupower-operator", root)
        for node in fleet.nodes:
            # The token a DaemonSet pod on the node gets: bound to that pod, so it names the node.
            agent_pod = cp.daemon_pod(
                "gpupower-system", f"gpupower-agent-{node.name}", "gpupower-agent", node.name
            )
            agent_kubeconfig = cp.service_account_kubeconfig(
                "gpupower-system", "gpupower-agent", node.directory, bound_pod=agent_pod
            )
            stack.enter_context(
                process(
                    [sys.executable, "-m", "gpupower_agent", "--node-name", node.name,
                     "--gpu-mapping", "pod-resources",
                     "--pod-resources-socket", str(node.simulator.socket_path),
                     "--fake-gpus", f"{GPUS_PER_NODE}:{GPU_MODEL}",
                     "--fake-gpu-state", str(node.gpu_state_file),
                     "--state-file", str(node.directory / "agent-state.json"),
                     "--safe-default-watts", str(SAFE_DEFAULT_WATTS),
                     "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1",
                     "--resync-seconds", "10"],
                    source_env({"KUBECONFIG": str(agent_kubeconfig)}),
                    node.directory / "agent.log",
                )
            )  # fmt: skip
        say(f"[real] {len(fleet.nodes)} gpupower agents running (ServiceAccount gpupower-agent)")
        stack.enter_context(
            process(
                [sys.executable, "-m", "gpupower_operator", "--metrics-port", str(free_port()),
                 "--resync-seconds", "10"],
                source_env({"KUBECONFIG": str(operator_kubeconfig)}),
                root / "operator.log",
            )
        )  # fmt: skip
        say("[real] gpupower operator running (ServiceAccount gpupower-operator)")

        say("\n$ kubectl apply -f demo/budget.yaml")
        budget_doc = yaml.safe_load((DEMO / "budget.yaml").read_text())
        say(cp.kubectl("apply", "-f", str(DEMO / "budget.yaml")).stdout.strip())
        took = wait_converged(cp, fleet, timeout_seconds)
        # What each role's pods are capped at under the first budget (a raise back to it plans the same).
        caps = {t["name"]: t["capWatts"] for t in budget_status(cp)["status"]["targets"]}
        say(f"converged in {took:.1f}s\n\n$ kubectl get gpb -n {NAMESPACE}")
        say(cp.kubectl("get", "gpb", "-n", NAMESPACE).stdout.rstrip())
        say()
        print_gpus(fleet)

        patch = json.dumps({"spec": {"totalWatts": lower_to_watts}})
        with Sampler(fleet) as sampler:
            before, _ = fleet.applied_watts()
            say(f"\n$ kubectl patch gpb {BUDGET} -n {NAMESPACE} --type merge -p '{patch}'")
            cp.kubectl("patch", "gpb", BUDGET, "-n", NAMESPACE, "--type", "merge", "-p", patch)
            took = wait_converged(cp, fleet, timeout_seconds)
            after, _ = fleet.applied_watts()
        result = DemoResult(
            before_watts=before,
            peak_watts=sampler.peak_watts,
            after_watts=after,
            budget_watts=lower_to_watts,
            converge_seconds=took,
            samples=len(sampler.samples),
        )
        say(f"converged in {took:.1f}s; the GPUs' limits were read {result.samples} times meanwhile\n")
        say(f"$ kubectl get gpb -n {NAMESPACE}")
        say(cp.kubectl("get", "gpb", "-n", NAMESPACE).stdout.rstrip())
        say()
        print_gpus(fleet)
        say(
            f"\nfleet power while moving: started at {before:,} W, peak {result.peak_watts:,} W, "
            f"ended at {after:,} W; new budget {lower_to_watts:,} W"
        )

        # Back up: new replicas. Their pods carry readinessGates on gpupower.dev/PowerCapped
        # (demo/workloads.yaml), so no traffic reaches one before its GPUs hold its cap.
        raised_to = int(budget_doc["spec"]["totalWatts"])
        known = {pod.name for node in fleet.nodes for pod in node.simulator.steps()}
        patch = json.dumps({"spec": {"totalWatts": raised_to}})
        with Sampler(fleet) as raised, CapWatcher(fleet, caps, known) as watcher:
            say(f"\n$ kubectl patch gpb {BUDGET} -n {NAMESPACE} --type merge -p '{patch}'")
            cp.kubectl("patch", "gpb", BUDGET, "-n", NAMESPACE, "--type", "merge", "-p", patch)
            took = wait_converged(cp, fleet, timeout_seconds)
            wait_ready_pods(cp, timeout_seconds)
        new_replicas = watcher.replicas()
        result = replace(
            result,
            raised_peak_watts=raised.peak_watts,
            raised_budget_watts=raised_to,
            new_replicas=tuple(new_replicas),
        )
        say(f"converged in {took:.1f}s; fleet power peaked at {raised.peak_watts:,} W of {raised_to:,} W")
        print_new_replicas(new_replicas)
        if result.gated:
            say("every new replica turned Ready only once its GPUs held its cap (gpupower.dev/PowerCapped)")
        else:
            say("READY TOO EARLY: a new replica turned Ready before its GPUs held its cap, or none was added")
        if result.no_overshoot:
            say("no overshoot: the fleet never went above where it started, and ends within the new budget")
        else:
            say("OVERSHOOT: the fleet went above its starting power or ended above the budget")
        say(f"demo finished in {time.monotonic() - started:.1f}s")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--lower-to-watts", type=int, default=3500, help="the budget after lowering it")
    parser.add_argument("--timeout-seconds", type=float, default=40, help="for each convergence")
    args = parser.parse_args(argv)
    try:
        result = run_demo(args.lower_to_watts, args.timeout_seconds)
    except ControlPlaneUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0 if result.no_overshoot and result.gated else 1


if __name__ == "__main__":
    raise SystemExit(main())
