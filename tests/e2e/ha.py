"""Two (or more) real operator replicas with leader election, each through its own recording proxy.

One proxy per process tells which process made each write. Used by the
failover test (``tests/e2e/test_operator_ha.py``) and the failover benchmark
(``bench/operator_failover.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.operator_harness import (
    ApiProxy,
    OperatorProcess,
    Recorded,
    install_operator_rbac,
    proxied_kubeconfig,
    upstream_of,
)
from tests.envtest import ControlPlane, wait_for

SYSTEM_NAMESPACE = "gpupower-system"
ACCOUNT = "gpupower-operator"
LEASE = "gpupower-operator"  # the name the shipped Role lets the operator update
LEASE_PATH = "/apis/coordination.k8s.io/"


def install(control_plane: ControlPlane) -> None:
    """The namespace and the operator's RBAC from manifests/ (leader election included); no old Lease."""
    install_operator_rbac(control_plane)
    control_plane.kubectl("delete", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "--ignore-not-found")


@dataclass
class Replica:
    """One operator process with its own proxy; ``identity`` is its name in the Lease."""

    identity: str
    proxy: ApiProxy
    operator: OperatorProcess

    def leading(self) -> bool | None:
        """True/False from the process's ``gpupower_operator_leader`` gauge; None when it does not answer."""
        status, text = self.operator.get("/metrics")
        if status != 200:
            return None
        for line in text.splitlines():
            if line.startswith("gpupower_operator_leader "):
                return float(line.split()[1]) == 1.0
        return None

    def writes(self, since: float = 0.0) -> list[Recorded]:
        """Every write this process made (arrived after ``since``), Lease renewals left out."""
        return [
            r
            for r in self.proxy.records
            if r.at > since and not r.path.startswith(LEASE_PATH) and not r.injected
        ]


def start_replicas(
    control_plane: ControlPlane, directory: Path, identities: tuple[str, ...], resync_seconds: float = 2.0
) -> list[Replica]:
    """Proxies and operator processes (not started yet), each under the operator's ServiceAccount."""
    replicas = []
    upstream = upstream_of(control_plane.kubeconfig)
    for identity in identities:
        proxy = ApiProxy(*upstream).start()
        subdirectory = directory / identity
        subdirectory.mkdir(parents=True, exist_ok=True)
        kubeconfig = proxied_kubeconfig(control_plane, SYSTEM_NAMESPACE, ACCOUNT, subdirectory, proxy.url)
        process = OperatorProcess(
            kubeconfig,
            subdirectory / "operator.log",
            resync_seconds=resync_seconds,
            extra_args=("--leader-elect", "--leader-election-identity", identity),
        )
        replicas.append(Replica(identity, proxy, process))
    return replicas


def lease_holder(control_plane: ControlPlane) -> str | None:
    result = control_plane.kubectl("get", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return (json.loads(result.stdout).get("spec") or {}).get("holderIdentity")


def planned_watts(control_plane: ControlPlane, namespace: str, name: str) -> int | None:
    """The budget the status plans for, once the status is for the current generation."""
    body: dict[str, Any] = control_plane.get_json("gpb", name, "-n", namespace)
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return None
    watts = status.get("budgetWatts")
    return int(watts) if watts is not None else None


def set_budget_watts(control_plane: ControlPlane, namespace: str, name: str, watts: int) -> float:
    """Patch ``spec.totalWatts``; return the time.monotonic() just before."""
    started = time.monotonic()
    patch = json.dumps({"spec": {"totalWatts": watts}})
    control_plane.kubectl("patch", "gpb", name, "-n", namespace, "--type=merge", "-p", patch)
    return started


def wait_planned(
    control_plane: ControlPlane, namespace: str, name: str, watts: int, timeout: float, interval: float = 0.1
) -> float:
    """Poll until the status plans ``watts``; return the time.monotonic() it was first seen."""
    seen: float = wait_for(
        lambda: planned_watts(control_plane, namespace, name) == watts and time.monotonic(),
        timeout=timeout,
        interval=interval,
        what=f"budget {namespace}/{name} planned at {watts} W",
    )
    return seen


def overlapping(replicas: list[tuple[str, list[Recorded]]]) -> list[str]:
    """Pairs of runs whose first-to-last write intervals overlap (each run: a name and its writes)."""
    spans = [(name, min(w.at for w in ws), max(w.at for w in ws)) for name, ws in replicas if ws]
    found = []
    for index, (a, a_first, a_last) in enumerate(spans):
        for b, b_first, b_last in spans[index + 1 :]:
            if a_first <= b_last and b_first <= a_last:
                found.append(f"{a} wrote {a_first:.3f}..{a_last:.3f}, {b} wrote {b_first:.3f}..{b_last:.3f}")
    return found
