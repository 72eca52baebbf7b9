"""The operator's configuration: command-line flags, each with an environment-variable fallback."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A flag or environment variable with an unusable value; the message names it."""


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    resync_seconds: float = 30.0
    metrics_port: int = 8080
    prometheus_url: str | None = None
    log_level: str = "info"
    peering: str | None = None  # None: standalone
    liveness_endpoint: str | None = None  # kopf's own probe, e.g. http://0.0.0.0:8081/healthz
    enforcement_timeout_seconds: float = 60.0  # a pod unconfirmed this long: EnforcementStalled


def _float(value: str, name: str, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {value!r}") from None
    if not number >= minimum:
        raise ConfigError(f"{name}: must be at least {minimum:g}, got {value!r}")
    return number


def _port(value: str, name: str) -> int:
    if not value.isdecimal() or not 0 <= int(value) <= 65535:
        raise ConfigError(f"{name}: expected a port number 0..65535, got {value!r}")
    return int(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpupower-operator",
        description="Keep GPU inference fleets inside their GpuPowerBudgets.",
    )
    p.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to watch (repeatable); env GPUPOWER_NAMESPACES (comma-separated); default: all",
    )
    p.add_argument(
        "--resync-seconds",
        metavar="S",
        help="periodic reconcile of every budget; env GPUPOWER_RESYNC_SECONDS",
    )
    p.add_argument(
        "--metrics-port", metavar="P", help="port of /metrics and /healthz; env GPUPOWER_METRICS_PORT"
    )
    p.add_argument(
        "--prometheus-url", metavar="URL", help="Prometheus for live demand; env GPUPOWER_PROMETHEUS_URL"
    )
    p.add_argument("--log-level", metavar="L", help=f"one of {', '.join(LOG_LEVELS)}; env GPUPOWER_LOG_LEVEL")
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="kopf peering object for HA (default: standalone); env GPUPOWER_PEERING",
    )
    p.add_argument(
        "--enforcement-timeout-seconds",
        metavar="S",
        help="how long a pod's caps may stay unconfirmed by its agent before EnforcementStalled "
        "(raises keep waiting); env GPUPOWER_ENFORCEMENT_TIMEOUT_SECONDS",
    )
    p.add_argument(
        "--liveness-endpoint",
        metavar="URL",
        help="kopf's own liveness probe, e.g. http://0.0.0.0:8081/healthz; env GPUPOWER_LIVENESS_ENDPOINT",
    )
    return p


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> OperatorConfig:
    """Flags win over environment variables, which win over defaults; bad values raise ConfigError."""
    args = parser().parse_args(argv)
    defaults = OperatorConfig()

    def pick(flag: str | None, var: str) -> tuple[str | None, str]:
        if flag is not None:
            return flag, "--" + var.removeprefix("GPUPOWER_").lower().replace("_", "-")
        value = env.get(var)
        return (value if value not in (None, "") else None), var

    if args.namespaces:
        namespaces = tuple(ns for ns in args.namespaces if ns)
    else:
        namespaces = tuple(ns.strip() for ns in env.get("GPUPOWER_NAMESPACES", "").split(",") if ns.strip())

    value, name = pick(args.resync_seconds, "GPUPOWER_RESYNC_SECONDS")
    resync = _float(value, name, 0.1) if value is not None else defaults.resync_seconds
    value, name = pick(args.metrics_port, "GPUPOWER_METRICS_PORT")
    port = _port(value, name) if value is not None else defaults.metrics_port
    value, name = pick(args.log_level, "GPUPOWER_LOG_LEVEL")
    level = (value or defaults.log_level).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    value, name = pick(args.enforcement_timeout_seconds, "GPUPOWER_ENFORCEMENT_TIMEOUT_SECONDS")
    enforcement_timeout = (
        _float(value, name, 1.0) if value is not None else defaults.enforcement_timeout_seconds
    )
    prometheus_url, _ = pick(args.prometheus_url, "GPUPOWER_PROMETHEUS_URL")
    peering, _ = pick(args.peering, "GPUPOWER_PEERING")
    liveness, _ = pick(args.liveness_endpoint, "GPUPOWER_LIVENESS_ENDPOINT")
    return OperatorConfig(
        namespaces=namespaces,
        resync_seconds=resync,
        metrics_port=port,
        prometheus_url=prometheus_url,
        log_level=level,
        peering=peering,
        liveness_endpoint=liveness,
        enforcement_timeout_seconds=enforcement_timeout,
    )
