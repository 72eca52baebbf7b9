"""``gpupower-agent``: wire NVML, the GPU mapping, the API watches and the metrics server, then run."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

from gpupower_agent.agent import Agent, Reconciled, wait_for_wake
from gpupower_agent.apiclient import ApiClient, KubeConfigError, load_credentials
from gpupower_agent.cgroups import CgroupMapping
from gpupower_agent.config import AgentConfig, ConfigError, parse_config
from gpupower_agent.kube import ApiHealth, budget_informer, domain_informer, node_informer, pod_informer
from gpupower_agent.mapping import GpuMapping, MappingMode
from gpupower_agent.metrics import AgentMetrics, start_http_server
from gpupower_agent.nvml import FakeNvml, NvmlError, PowerControl, RealNvml
from gpupower_agent.placement import Placement
from gpupower_agent.podresources import PodResourcesMapping, pod_resources_answers
from gpupower_agent.powercapped import stopped_conditions
from gpupower_agent.publisher import HeldReportPublisher, InventoryPublisher
from gpupower_agent.reporter import ConditionReporter

log = logging.getLogger("gpupower_agent")

NVML_INIT_RETRY_MAX_SECONDS = 30.0
TASK_STOP_TIMEOUT_SECONDS = 3.0
# On exit, how long the agent tries to tell its pods that their GPUs are no longer capped.
EXIT_REPORT_SECONDS = 3.0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # Libraries' debug output is per call, not per decision: keep it out of the agent's log.
    for noisy in ("asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def open_nvml(config: AgentConfig, stop: asyncio.Event) -> PowerControl | None:
    """The fake when ``--fake-gpus`` is given, else real NVML (retried with backoff until it loads)."""
    if config.fake_gpus is not None:
        log.warning(
            "event=nvml_fake gpus=%d model=%s state_file=%s load_file=%s note=%r",
            config.fake_gpus.count,
            config.fake_gpus.model.name,
            config.fake_gpu_state,
            config.fake_gpu_load,
            "NVML replaced by the in-memory fake; no hardware is touched",
        )
        return FakeNvml(config.node_name, config.fake_gpus, config.fake_gpu_state, config.fake_gpu_load)
    delay = 1.0
    while not stop.is_set():
        try:
            return RealNvml()
        except NvmlError as error:
            log.error(
                "event=nvml_init_failed kind=%s error=%r retry_in_seconds=%.0f", error.kind, str(error), delay
            )
        await wait_for_wake(stop, delay)
        delay = min(delay * 2, NVML_INIT_RETRY_MAX_SECONDS)
    return None


async def open_mapping(config: AgentConfig, nvml: PowerControl, metrics: AgentMetrics) -> GpuMapping:
    mode = config.gpu_mapping
    if mode is MappingMode.AUTO:
        answers = await pod_resources_answers(config.pod_resources_socket)
        mode = MappingMode.POD_RESOURCES if answers else MappingMode.CGROUP
        log.info(
            "event=gpu_mapping_chosen mode=%s socket=%s socket_answers=%s",
            mode.value,
            config.pod_resources_socket,
            answers,
        )
    if mode is MappingMode.POD_RESOURCES:
        return PodResourcesMapping(
            config.pod_resources_socket,
            resolver=nvml,
            resource_names=config.gpu_resource_names,
            on_unmapped=lambda device: metrics.unmapped_devices_total.labels(device.resource).inc(),
        )
    return CgroupMapping(nvml, config.proc_root)


async def run(config: AgentConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    wake = asyncio.Event()

    def request_stop(signum: int) -> None:
        log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
        stop.set()
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)

    nvml = await open_nvml(config, stop)
    if nvml is None:
        return 0
    metrics = AgentMetrics()
    mapping = await open_mapping(config, nvml, metrics)
    gpus = nvml.gpus()
    metrics.info.labels(
        config.node_name,
        "fake" if nvml.is_fake else "real",
        gpus[0].model if gpus else "none",
        mapping.source,
    ).set(1)
    health = ApiHealth(config.api_unhealthy_seconds)

    def healthy() -> tuple[bool, str]:
        seconds = health.unreachable_seconds()
        metrics.api_unreachable_seconds.set(seconds)
        if health.healthy():
            return True, "ok"
        return False, f"kubernetes api unreachable for {seconds:.0f}s (caps kept)"

    server, port = await start_http_server(metrics, config.metrics_port, healthy, config.metrics_address)
    log.info("event=metrics_listening address=%s port=%d", config.metrics_address, port)

    agent = Agent(
        config.node_name,
        nvml,
        mapping,
        metrics,
        config.safe_default_watts,
        config.state_file,
        device_wait_seconds=config.device_wait_seconds,
        draw_guard=config.draw_guard_seconds > 0,
    )
    agent.load_state()

    try:
        api = ApiClient(load_credentials())
    except KubeConfigError as error:
        log.error("event=kubeconfig_invalid error=%r", str(error))
        server.close()
        return 1

    def on_api_error(resource: str) -> None:
        metrics.api_errors_total.labels(resource).inc()

    follow_kubelet = config.device_poll_seconds > 0
    pods = pod_informer(
        api,
        config.node_name,
        config.namespace,
        wake.set,
        health,
        on_api_error,
        follow_kubelet=follow_kubelet,
        gpu_resources=config.gpu_resource_names,
    )
    budgets = budget_informer(api, config.namespace, wake.set, health, on_api_error)
    # Where the node sits among the power domains: the domains (cluster-scoped) and its own Node's labels.
    domains = domain_informer(api, wake.set, health, on_api_error)
    node = node_informer(api, config.node_name, wake.set, health, on_api_error)
    informers = (pods, budgets, domains, node)
    placement = Placement(config.node_name, metrics)
    publisher = InventoryPublisher(api, config.node_name, metrics)
    held_publisher = HeldReportPublisher(api, config.node_name, metrics)
    reporter = ConditionReporter(api, metrics)
    tasks = [
        *(asyncio.create_task(informer.run()) for informer in informers),
        asyncio.create_task(reporter.run()),
        asyncio.create_task(held_publisher.run()),
    ]
    log.info(
        "event=started node=%s gpus=%d namespace=%s resync_seconds=%g restore_on_exit=%s "
        "device_poll_seconds=%g",
        config.node_name,
        len(gpus),
        config.namespace or "*",
        config.resync_seconds,
        config.restore_on_exit,
        config.device_poll_seconds,
    )
    next_resync = time.monotonic()
    guard_period = config.draw_guard_seconds
    next_guard_reading = time.monotonic()
    last: Reconciled | None = None
    try:
        while not stop.is_set():
            now = time.monotonic()
            deadline = min(next_resync, agent.next_retry_at() or next_resync)
            if follow_kubelet and agent.looking_for_devices():
                # The kubelet allocates a pod's GPUs after the pod is bound: look again soon.
                deadline = min(deadline, now + config.device_poll_seconds)
            if guard_period > 0 and agent.guarding():
                deadline = min(deadline, next_guard_reading)
            await wait_for_wake(wake, deadline - now)
            wake.clear()
            if stop.is_set():
                break
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + config.resync_seconds
            try:
                present = nvml.gpus()
            except NvmlError as error:
                metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
                log.warning(
                    "event=nvml_error op=%s kind=%s action=keep_inventory", error.operation, error.kind
                )
            else:
                agent.refresh_gpus(present)
                await publisher.publish(present)
            # Until the domains and the Node are known too, a parked GPU must not look idle outside any.
            if all(informer.synced for informer in informers):
                reading = guard_period > 0 and time.monotonic() >= next_guard_reading
                if reading:
                    next_guard_reading = time.monotonic() + guard_period
                try:
                    place = placement.place(domains.items, node.items.get(config.node_name))
                    result = await agent.reconcile(
                        list(pods.items.values()),
                        list(budgets.items.values()),
                        guard_reading=reading,
                        place=place,
                    )
                except Exception:
                    # A bug must not end the agent: exiting would restore defaults and uncap every GPU.
                    metrics.reconcile_errors_total.inc()
                    log.exception("event=reconcile_failed action=keep_caps")
                else:
                    if result is not None:
                        last = result
                        reporter.update(result.conditions, pods.items)
                        held_publisher.update(result.held, node.items.get(config.node_name))
    finally:
        # Restore first: nothing that follows may delay giving the GPUs their defaults back.
        if config.restore_on_exit:
            restored = agent.restore_all()
            if last is not None:
                reporter.update(stopped_conditions(last.plan.decisions, restored), pods.items)
                # In a domain the operator counts what the GPUs hold: now their defaults.
                held = agent.held_now()
                if held is not None:
                    held_publisher.update(held, node.items.get(config.node_name))
                try:
                    await asyncio.wait_for(
                        asyncio.gather(reporter.flush(), held_publisher.flush()), EXIT_REPORT_SECONDS
                    )
                except TimeoutError:
                    log.warning("event=exit_report_timeout seconds=%g", EXIT_REPORT_SECONDS)
        else:
            log.info("event=exit_without_restore managed_gpus=%d", len(agent.managed))
        reporter.stop()
        held_publisher.stop()
        for informer in informers:
            informer.stop()
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT_SECONDS)
        if stuck:
            log.warning("event=watch_stop_timeout tasks=%d", len(stuck))
        await mapping.close()
        server.close()
        if isinstance(nvml, RealNvml):
            nvml.shutdown()
        log.info("event=stopped node=%s", config.node_name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        print(f"gpupower-agent: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    return asyncio.run(run(config))
