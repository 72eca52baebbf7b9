"""Scale benchmark: the real operator over 1,000 budgets and 10,000 pods on the real API server.

    .venv/bin/python bench/operator_scale.py [--budgets 1000] [--pods-per-budget 10] [--namespaces 10]

Starts the kit's API server and etcd (no controllers: the benchmark creates the
pods itself, so the numbers are the operator's, not the controller-manager's),
creates one paused-free Deployment per budget (its ``/scale`` gives replicas and
selector) with its pods, then starts ``python -m gpupower_operator`` under its
ServiceAccount and measures:

- the time until every budget's status is written, and until every budget is
  Ready (every pod carries its cap);
- the operator's peak RSS;
- the reconcile time per budget (the operator's own histogram);
- the API server's request count by verb and resource while the operator ran,
  from the API server's ``/metrics`` (a reconcile that lists what a watch
  already told it would show up here as LIST calls).

Targets from the issue: all planned within 60 s of start, under 300 MiB RSS.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in ("api", "operator", ""):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from kubernetes_asyncio import client, config  # noqa: E402

from demo.controlplane import ControlPlane, missing_prerequisite, running_control_plane, source_env  # noqa: E402
from tests.e2e.operator_harness import free_port  # noqa: E402
from tests.workloads import gpu_deployment  # noqa: E402

_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def budget_doc(namespace: str, name: str, pods: int) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "totalWatts": pods * 330,
            "safeDefaultWatts": 250,
            "targets": [
                {
                    "name": "workers",
                    "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": pods,
                    "maxReplicas": pods,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {
                        "points": [
                            {"watts": 200, "throughput": 10},
                            {"watts": 300, "throughput": 14},
                            {"watts": 400, "throughput": 16},
                        ]
                    },
                    "demand": pods * 13,
                }
            ],
        },
    }


def pod_doc(namespace: str, app: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-{index}", "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "registry.invalid/worker:1",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ]
        },
    }


async def call(api: client.ApiClient, path: str, method: str, body: Any = None) -> Any:
    return await api.call_api(
        path,
        method,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=body,
        response_types_map={200: "object", 201: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )


async def create_fleet(kubeconfig: Path, budgets: int, pods: int, namespaces: int, concurrency: int) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        gate = asyncio.Semaphore(concurrency)

        async def create(path: str, body: dict[str, Any]) -> None:
            async with gate:
                await call(api, path, "POST", body)

        names = [f"bench-{n}" for n in range(namespaces)]
        await asyncio.gather(*(create("/api/v1/namespaces", {"metadata": {"name": ns}}) for ns in names))
        jobs = []
        for index in range(budgets):
            ns = names[index % namespaces]
            app = f"llm-{index}"
            jobs.append(create(f"/apis/apps/v1/namespaces/{ns}/deployments", gpu_deployment(app, ns, pods)))
            for pod in range(pods):
                jobs.append(create(f"/api/v1/namespaces/{ns}/pods", pod_doc(ns, app, pod)))
        await asyncio.gather(*jobs)
        await asyncio.gather(
            *(
                create(
                    f"/apis/gpupower.dev/v1alpha1/namespaces/{names[i % namespaces]}/gpupowerbudgets",
                    budget_doc(names[i % namespaces], f"llm-{i}", pods),
                )
                for i in range(budgets)
            )
        )


def request_counts(plane: ControlPlane) -> Counter[tuple[str, str]]:
    text = plane.kubectl("get", "--raw", "/metrics", timeout=120).stdout
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        match = _REQUEST_LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        key = (
            labels.get("verb", "?"),
            labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else ""),
        )
        counts[key] += int(float(match["value"]))
    return counts


class ProgressWatch:
    """Watch every budget from a thread and note when each first has its status, and when it is Ready.

    A watch costs the API server one stream, where polling a list of 1,000 budgets every
    second would cost it (and this machine's two cores) far more than the operator does.
    """

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.written: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        with contextlib.suppress(aiohttp.ClientError, OSError):  # the control plane stopped
            self._loop.run_until_complete(self._watch())

    async def _watch(self) -> None:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            while True:
                response = await api.call_api(
                    "/apis/gpupower.dev/v1alpha1/gpupowerbudgets",
                    "GET",
                    query_params=[("watch", "true"), ("timeoutSeconds", 600)],
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(total=None, sock_read=700),
                )
                async with response:
                    async for line in response.content:
                        if line.strip():
                            self._note(json.loads(line).get("object") or {})

    def _note(self, item: dict[str, Any]) -> None:
        metadata = item.get("metadata") or {}
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        status = item.get("status") or {}
        if status.get("observedGeneration") != metadata.get("generation"):
            return
        now = time.monotonic() - self.t0
        self.written.setdefault(key, now)
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
            self.ready.setdefault(key, now)


def budget_progress(plane: ControlPlane) -> tuple[int, int, int]:
    """(budgets, with status at their generation, Ready=True)."""
    items = plane.get_json("gpb", "-A")["items"]
    written = ready = 0
    for item in items:
        status = item.get("status") or {}
        if status.get("observedGeneration") == item["metadata"].get("generation"):
            written += 1
            if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])):
                ready += 1
    return len(items), written, ready


def histogram(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                values[le.group(1)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_sum ") or line.startswith(name + "_count "):
            values[line.split(" ")[0].removeprefix(name + "_")] = float(line.rsplit(" ", 1)[1])
    return values


def quantile(buckets: dict[str, float], q: float) -> str:
    count = buckets.get("count", 0.0)
    if not count:
        return "-"
    for le, cumulative in sorted(
        ((k, v) for k, v in buckets.items() if k not in ("sum", "count")), key=lambda kv: float(kv[0])
    ):
        if cumulative >= q * count:
            return f"<= {le} s"
    return "> largest bucket"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=1000)
    parser.add_argument("--pods-per-budget", type=int, default=10)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout-seconds", type=float, default=300.0)
    args = parser.parse_args()
    problem = missing_prerequisite()
    if problem:
        print(problem, file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="gpupower-bench-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        plane = stack.enter_context(running_control_plane(directory / "envtest", controllers=False))
        operator: subprocess.Popen[bytes] | None = None
        try:
            for plural in ("gpupowerbudgets", "gpupowerprofileruns"):
                plane.kubectl("apply", "-f", str(ROOT / "crds" / f"{plural}.yaml"))
                plane.wait_established(f"{plural}.gpupower.dev", timeout_seconds=60)
            plane.kubectl("create", "namespace", "gpupower-system")
            plane.kubectl("apply", "-f", str(ROOT / "manifests" / "operator" / "rbac.yaml"))
            total_pods = args.budgets * args.pods_per_budget
            print(
                f"creating {args.budgets} budgets, {args.budgets} Deployments, {total_pods} pods ...",
                flush=True,
            )
            started = time.monotonic()
            asyncio.run(
                create_fleet(
                    plane.kubeconfig, args.budgets, args.pods_per_budget, args.namespaces, args.concurrency
                )
            )
            print(f"created in {time.monotonic() - started:.1f} s", flush=True)

            kubeconfig = plane.service_account_kubeconfig("gpupower-system", "gpupower-operator", directory)
            before = request_counts(plane)
            metrics_port = free_port()
            log_path = directory / "operator.log"
            with log_path.open("wb") as log:
                t0 = time.monotonic()
                operator = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gpupower_operator",
                        "--metrics-port",
                        str(metrics_port),
                        "--log-level",
                        "warning",
                    ],
                    env=source_env({"KUBECONFIG": str(kubeconfig)}),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            progress = ProgressWatch(plane.kubeconfig)
            progress.start(t0)
            process = psutil.Process(operator.pid)
            servers = [
                p
                for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] in ("kube-apiserver", "etcd", "envtest-etcd")
                and str(plane.run_dir) in " ".join(p.info["cmdline"] or [])
            ]
            server_cpu_before = sum(sum(p.cpu_times()[:2]) for p in servers)
            peak_rss = 0
            all_written_at = all_ready_at = None
            polls = 0
            while time.monotonic() - t0 < args.timeout_seconds:
                peak_rss = max(peak_rss, process.memory_info().rss)
                written, ready = len(progress.written), len(progress.ready)
                polls += 1
                if written == args.budgets and ready == args.budgets:
                    # Confirm with one list: every budget Ready at its generation.
                    _, _, listed_ready = budget_progress(plane)
                    if listed_ready == args.budgets:
                        all_written_at = max(progress.written.values())
                        all_ready_at = max(progress.ready.values())
                        break
                if polls % 10 == 0:
                    elapsed = time.monotonic() - t0
                    print(f"  {elapsed:5.1f} s: {written} statuses written, {ready} Ready", flush=True)
                time.sleep(0.5)
            for _ in range(5):  # settle: RSS after the burst
                peak_rss = max(peak_rss, process.memory_info().rss)
                time.sleep(0.2)
            operator_cpu_seconds = sum(process.cpu_times()[:2])
            server_cpu_seconds = sum(sum(p.cpu_times()[:2]) for p in servers) - server_cpu_before
            after = request_counts(plane)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
                operator_metrics = answer.read().decode()
        finally:
            if operator is not None:
                operator.terminate()
                try:
                    operator.wait(15)
                except subprocess.TimeoutExpired:
                    operator.kill()

    reconcile = histogram(operator_metrics, "gpupower_operator_reconcile_duration_seconds")
    delta = after - before
    print()
    print(f"budgets: {args.budgets}   pods: {total_pods}   namespaces: {args.namespaces}")
    print(
        f"all statuses written: {all_written_at:.1f} s after start"
        if all_written_at
        else "all statuses written: NOT within the timeout"
    )
    print(
        f"all budgets Ready (every pod capped): {all_ready_at:.1f} s after start"
        if all_ready_at
        else "all Ready: NOT within the timeout"
    )
    print(f"operator peak RSS: {peak_rss / 2**20:.0f} MiB")
    print(
        f"CPU until all Ready: operator {operator_cpu_seconds:.1f} s, "
        f"API server and etcd {server_cpu_seconds:.1f} s (2 cores shared)"
    )
    count = reconcile.get("count", 0.0)
    if count:
        print(
            f"reconciles: {count:.0f}, mean {reconcile['sum'] / count * 1000:.1f} ms per budget, "
            f"p50 {quantile(reconcile, 0.5)}, p99 {quantile(reconcile, 0.99)}"
        )
    print(
        "API server requests while the operator ran (the benchmark's own: 1 WATCH, 1-2 LIST gpupowerbudgets):"
    )
    for (verb, resource), value in sorted(delta.items(), key=lambda kv: -kv[1]):
        print(f"  {value:7d}  {verb:6s} {resource}")
    print(f"  {sum(delta.values()):7d}  total")
    return 0 if all_ready_at is not None else 1


if __name__ == "__main__":
    sys.exit(main())
