"""``gpupower-operator``: start kopf with the gpupower handlers, and serve /metrics and /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from aiohttp import web
from kubernetes_asyncio import client

from gpupower_operator.adapters.kube import KubeCluster, connection_info, load_configuration
from gpupower_operator.config import ConfigError, OperatorConfig, parse_config
from gpupower_operator.shell import budgets, profileruns
from gpupower_operator.shell.domains import domains_path, namespaces_path
from gpupower_operator.shell.leadership import LeaderElector
from gpupower_operator.shell.metrics import OperatorMetrics, metrics_app
from gpupower_operator.shell.podwatch import PodWatch, nodes_path
from gpupower_operator.shell.signalsource import SignalSource, kubernetes_secret_reader

log = logging.getLogger("gpupower_operator")

FINALIZER = "gpupower.dev/finalizer"


def kopf_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # One active replica is chosen by our Lease (gpupower_operator.shell.leadership), not by kopf's peering:
    # kopf runs only in the replica that holds the Lease.
    settings.peering.standalone = True
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gpupower.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gpupower.dev", key="last-handled-configuration"
    )
    # Our own Events are posted explicitly; kopf's per-handler log lines stay in the log.
    settings.posting.level = logging.WARNING
    # The resources are fixed: no need to watch CRDs (nor to be allowed to).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.queueing.batch_window = 0.05
    # kopf opens one connection per concurrent request; bound its concurrent workers so that
    # a thousand budgets appearing at once do not mean a thousand TLS connections.
    # A per-object worker holds its slot while idle: release it quickly.
    settings.queueing.worker_limit = 32
    settings.queueing.idle_timeout = 0.2
    return settings


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # kopf logs every event at debug; keep it one level quieter than ours unless debugging.
    logging.getLogger("kopf").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def run(config: OperatorConfig) -> None:
    configuration = await load_configuration()
    api = client.ApiClient(configuration)
    metrics = OperatorMetrics()
    signal_source = SignalSource(
        config.prometheus_url,
        read_secret=kubernetes_secret_reader(api),
        count_failure=metrics.errors.labels("prometheus").inc,
    )
    runtime = budgets.Runtime(
        KubeCluster(api),
        metrics,
        config.resync_seconds,
        signals=signal_source,
        enforcement_timeout_seconds=config.enforcement_timeout_seconds,
    )
    registry = kopf.OperatorRegistry()

    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection_info(configuration)

    budgets.register(registry, runtime, login)
    profileruns.register(registry, profileruns.Measurements(runtime, api))
    pod_watch = PodWatch(api, config.namespaces, runtime.on_pod)
    runtime.pods_synced = pod_watch.synced
    watching = asyncio.create_task(pod_watch.run(), name="pod-watch")
    # The nodes' GPU power limits (labels the agents publish), for each target's effective cap range.
    node_watch = PodWatch(api, [], runtime.on_node, path_of=nodes_path)
    runtime.nodes_synced = node_watch.synced
    watching_nodes = asyncio.create_task(node_watch.run(), name="node-watch")
    # The power domains and the namespaces' labels (their namespaceSelectors), for the allocation.
    domains = runtime.domain_runtime
    domain_watch = PodWatch(api, [], domains.on_domain, path_of=domains_path)
    domains.domains_synced = domain_watch.synced
    domains.nodes_synced = node_watch.synced
    namespace_watch = PodWatch(api, [], domains.on_namespace, path_of=namespaces_path)
    domains.namespaces_synced = namespace_watch.synced
    watches = [
        watching,
        watching_nodes,
        asyncio.create_task(domain_watch.run(), name="domain-watch"),
        asyncio.create_task(namespace_watch.run(), name="namespace-watch"),
    ]
    ready = asyncio.Event()
    elector = LeaderElector(api, config.leader_election) if config.leader_election else None

    def healthy() -> bool:
        # A standby replica is healthy while it waits: only the active one needs kopf to be ready.
        return ready.is_set() or (elector is not None and not elector.leading)

    app = metrics_app(metrics, healthy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=config.metrics_port)
    await site.start()
    log.info(
        "starting namespaces=%s resync_seconds=%g metrics_port=%d leader_election=%s server=%s",
        ",".join(config.namespaces) or "*",
        config.resync_seconds,
        config.metrics_port,
        elector.identity if elector else "off",
        configuration.host,
    )
    try:
        if elector is not None:
            metrics.leader.set(0)
            await elector.acquire()
        metrics.leader.set(1)
        # The allocator writes domain statuses: only while this replica leads, like kopf's handlers.
        watches.append(asyncio.create_task(domains.run(), name="domain-allocator"))
        operating = asyncio.ensure_future(
            kopf.operator(
                registry=registry,
                settings=kopf_settings(config),
                standalone=True,
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                liveness_endpoint=config.liveness_endpoint,
                ready_flag=ready,
            )
        )
        if elector is not None:
            await _operate_while_leading(operating, elector)
        else:
            await operating
    finally:
        for task in watches:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await api.close()
        log.info("stopped")


async def _operate_while_leading(operating: asyncio.Future[None], elector: LeaderElector) -> None:
    """Run kopf while the Lease is ours. Losing it ends the process at once: no write may follow."""
    holding = asyncio.ensure_future(elector.hold())
    await asyncio.wait({operating, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding.done():
        error = holding.exception()
        log.error(
            "leadership lost identity=%s error=%s; exiting so that another replica acts",
            elector.identity,
            error,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)
    holding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holding
    await elector.release()
    operating.result()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv, os.environ)
    except ConfigError as error:
        print(f"gpupower-operator: error: {error}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
