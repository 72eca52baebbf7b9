"""The agent's command line: every flag has an environment-variable fallback (flag wins)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpupower_agent.cluster import DEFAULT_GPU_RESOURCE_NAMES
from gpupower_agent.mapping import MappingMode
from gpupower_agent.nvml import FakeGpuSpec, InvalidFakeGpusError, parse_fake_gpus
from gpupower_agent.podresources import DEFAULT_SOCKET

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A flag or environment variable with a bad value; the message names it."""


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    gpu_mapping: MappingMode
    pod_resources_socket: Path
    gpu_resource_names: tuple[str, ...]
    fake_gpus: FakeGpuSpec | None
    fake_gpu_state: Path | None
    fake_gpu_load: Path | None
    safe_default_watts: int
    state_file: Path
    metrics_port: int
    metrics_address: str
    namespace: str | None
    restore_on_exit: bool
    log_level: str
    resync_seconds: float
    api_unhealthy_seconds: float
    proc_root: Path
    device_poll_seconds: float = 0.2
    device_wait_seconds: float = 300.0
    draw_guard_seconds: float = 1.0


# flag, environment variable, default, help
_OPTIONS: tuple[tuple[str, str, str | None, str], ...] = (
    ("--node-name", "GPUPOWER_NODE_NAME", None, "this node's name (downward API spec.nodeName); required"),
    ("--gpu-mapping", "GPUPOWER_GPU_MAPPING", "auto", "auto | pod-resources | cgroup"),
    ("--pod-resources-socket", "GPUPOWER_POD_RESOURCES_SOCKET", str(DEFAULT_SOCKET), "kubelet socket"),
    ("--fake-gpus", "GPUPOWER_FAKE_GPUS", None, "COUNT:MODEL, replaces NVML with the fake (tests, demo)"),
    ("--fake-gpu-state", "GPUPOWER_FAKE_GPU_STATE", None, "JSON file where the fake GPUs keep their limits"),
    ("--fake-gpu-load", "GPUPOWER_FAKE_GPU_LOAD", None, "JSON {uuid: watts} the fake GPUs' workloads draw"),
    (
        "--gpu-resource-names",
        "GPUPOWER_GPU_RESOURCE_NAMES",
        ",".join(DEFAULT_GPU_RESOURCE_NAMES),
        "comma-separated resource names (shell patterns) whose PodResources devices are GPUs",
    ),
    ("--safe-default-watts", "GPUPOWER_SAFE_DEFAULT_WATTS", "200", "cap for pods no budget vouches for"),
    ("--state-file", "GPUPOWER_STATE_FILE", "/var/lib/gpupower/agent-state.json", "GPUs the agent capped"),
    ("--metrics-port", "GPUPOWER_METRICS_PORT", "9410", "port of /metrics and /healthz (0: any)"),
    ("--metrics-address", "GPUPOWER_METRICS_ADDRESS", "0.0.0.0", "address of /metrics and /healthz"),
    ("--namespace", "GPUPOWER_NAMESPACE", None, "watch one namespace only (default: all)"),
    ("--log-level", "GPUPOWER_LOG_LEVEL", "info", "debug | info | warning | error"),
    ("--resync-seconds", "GPUPOWER_RESYNC_SECONDS", "30", "full reconcile at least this often"),
    ("--api-unhealthy-seconds", "GPUPOWER_API_UNHEALTHY_SECONDS", "60", "API outage before /healthz fails"),
    ("--proc-root", "GPUPOWER_PROC_ROOT", "/proc", "host /proc for --gpu-mapping cgroup"),
    (
        "--device-poll-seconds",
        "GPUPOWER_DEVICE_POLL_SECONDS",
        "0.2",
        "re-read the GPU mapping this often while a pod awaits its GPUs; 0: follow only annotations "
        "and the resync (no wake on the kubelet's status changes)",
    ),
    (
        "--draw-guard-seconds",
        "GPUPOWER_DRAW_GUARD_SECONDS",
        "1",
        "the draw guard's reading period for oversubscribed budgets; 0 turns the guard off",
    ),
    (
        "--device-wait-seconds",
        "GPUPOWER_DEVICE_WAIT_SECONDS",
        "300",
        "how long a pod's GPUs are looked for at that pace before only the resync looks",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpupower-agent",
        description="Apply the per-GPU power caps planned by gpupower to this node's GPUs through NVML.",
    )
    for flag, env, default, help_text in _OPTIONS:
        shown = f" (env {env}; default {default})" if default is not None else f" (env {env})"
        parser.add_argument(flag, default=None, help=help_text + shown)
    parser.add_argument(
        "--no-restore-on-exit",
        action="store_true",
        default=None,
        help="leave caps in place on SIGTERM (env GPUPOWER_RESTORE_ON_EXIT=false)",
    )
    return parser


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be within {low}..{high}, got {value}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 86_400:
        raise ConfigError(f"{name}: must be within (0, 86400] seconds, got {value:g}")
    return value


def _poll_seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {text!r}") from None
    if not (value == 0 or 0.01 <= value <= 60):
        raise ConfigError(f"{name}: must be 0 (off) or within 0.01..60 seconds, got {value:g}")
    return value


# A resource name (domain/name), shell-pattern characters allowed.
_RESOURCE_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]._-]+/[A-Za-z0-9*?\[\]._-]+$")


def _resource_names(name: str, text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ConfigError(f"{name}: expected at least one resource name, e.g. nvidia.com/gpu")
    for resource in names:
        if not _RESOURCE_PATTERN.match(resource):
            raise ConfigError(f"{name}: {resource!r} is not a resource name like nvidia.com/mig-*")
    return names


def _bool_env(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {text!r}")


def parse_config(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> AgentConfig:
    """Flags first, then environment variables, then defaults; :class:`ConfigError` names a bad one."""
    args = vars(_parser().parse_args(list(argv)))
    values: dict[str, tuple[str, str | None]] = {}
    for flag, env, default, _ in _OPTIONS:
        attr = flag.removeprefix("--").replace("-", "_")
        if args[attr] is not None:
            values[attr] = (flag, args[attr])
        elif environ.get(env):
            values[attr] = (env, environ[env])
        else:
            values[attr] = (flag, default)

    def value(attr: str) -> tuple[str, str]:
        name, text = values[attr]
        if text is None:
            raise ConfigError(f"{name}: required")
        return name, text

    node_name = value("node_name")[1].strip()
    if not node_name:
        raise ConfigError("--node-name: required")
    mapping_name, mapping_text = value("gpu_mapping")
    try:
        mapping = MappingMode(mapping_text)
    except ValueError:
        choices = ", ".join(m.value for m in MappingMode)
        raise ConfigError(f"{mapping_name}: expected one of {choices}, got {mapping_text!r}") from None
    fake_gpus: FakeGpuSpec | None = None
    if values["fake_gpus"][1]:
        try:
            fake_gpus = parse_fake_gpus(values["fake_gpus"][1])
        except InvalidFakeGpusError as error:
            raise ConfigError(str(error)) from None
    fake_state_text = values["fake_gpu_state"][1]
    fake_load_text = values["fake_gpu_load"][1]
    for attr, text in (("fake_gpu_state", fake_state_text), ("fake_gpu_load", fake_load_text)):
        if text and fake_gpus is None:
            raise ConfigError(f"{values[attr][0]}: only meaningful with --fake-gpus")
    level_name, level = value("log_level")
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"{level_name}: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if args["no_restore_on_exit"]:
        restore = False
    elif environ.get("GPUPOWER_RESTORE_ON_EXIT"):
        restore = _bool_env("GPUPOWER_RESTORE_ON_EXIT", environ["GPUPOWER_RESTORE_ON_EXIT"])
    else:
        restore = True
    namespace = (values["namespace"][1] or "").strip() or None
    return AgentConfig(
        node_name=node_name,
        gpu_mapping=mapping,
        pod_resources_socket=Path(value("pod_resources_socket")[1]),
        gpu_resource_names=_resource_names(*value("gpu_resource_names")),
        fake_gpus=fake_gpus,
        fake_gpu_state=Path(fake_state_text) if fake_state_text else None,
        fake_gpu_load=Path(fake_load_text) if fake_load_text else None,
        safe_default_watts=_int(*value("safe_default_watts"), 1, 10_000),
        state_file=Path(value("state_file")[1]),
        metrics_port=_int(*value("metrics_port"), 0, 65_535),
        metrics_address=value("metrics_address")[1],
        namespace=namespace,
        restore_on_exit=restore,
        log_level=level.lower(),
        resync_seconds=_seconds(*value("resync_seconds")),
        api_unhealthy_seconds=_seconds(*value("api_unhealthy_seconds")),
        proc_root=Path(value("proc_root")[1]),
        device_poll_seconds=_poll_seconds(*value("device_poll_seconds")),
        device_wait_seconds=_seconds(*value("device_wait_seconds")),
        draw_guard_seconds=_poll_seconds(*value("draw_guard_seconds")),
    )
