"""The operator's configuration: command-line flags, each with an environment-variable fallback."""

from __future__ import annotations

import argparse
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
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
    liveness_endpoint: str | None = None  # kopf's own probe, e.g. http://0.0.0.0:8081/healthz
    enforcement_timeout_seconds: float = 60.0  # a pod unconfirmed this long: EnforcementStalled
    leader_election: LeaderElectionConfig | None = None  # None: standalone, always active


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Which Lease the replicas compete for, who this one is, and the timing (client-go's protocol)."""

    namespace: str = "gpupower-system"
    lease_name: str = "gpupower-operator"
    identity: str = ""
    lease_seconds: float = 8.0
    renew_deadline_seconds: float = 6.0
    retry_seconds: float = 1.0


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
        "--leader-elect",
        action="store_const",
        const="true",
        help="run as one of several replicas: only the holder of a Lease acts; env GPUPOWER_LEADER_ELECT",
    )
    p.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="namespace of the Lease (default gpupower-system); env GPUPOWER_LEADER_ELECTION_NAMESPACE",
    )
    p.add_argument(
        "--leader-election-lease",
        metavar="NAME",
        help="name of the Lease (default gpupower-operator); env GPUPOWER_LEADER_ELECTION_LEASE",
    )
    p.add_argument(
        "--leader-election-identity",
        metavar="ID",
        help="this replica's name in the Lease (default: hostname_random); "
        "env GPUPOWER_LEADER_ELECTION_IDENTITY",
    )
    p.add_argument(
        "--leader-election-lease-seconds",
        metavar="S",
        help="how long a holder's Lease lasts unrenewed (default 8); "
        "env GPUPOWER_LEADER_ELECTION_LEASE_SECONDS",
    )
    p.add_argument(
        "--leader-election-renew-deadline-seconds",
        metavar="S",
        help="the holder stops when it could not renew for this long (default 6); "
        "env GPUPOWER_LEADER_ELECTION_RENEW_DEADLINE_SECONDS",
    )
    p.add_argument(
        "--leader-election-retry-seconds",
        metavar="S",
        help="between two tries to acquire or renew (default 1); env GPUPOWER_LEADER_ELECTION_RETRY_SECONDS",
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
    liveness, _ = pick(args.liveness_endpoint, "GPUPOWER_LIVENESS_ENDPOINT")
    leader_election = _leader_election(args, pick)
    return OperatorConfig(
        namespaces=namespaces,
        resync_seconds=resync,
        metrics_port=port,
        prometheus_url=prometheus_url,
        log_level=level,
        liveness_endpoint=liveness,
        enforcement_timeout_seconds=enforcement_timeout,
        leader_election=leader_election,
    )


def _leader_election(
    args: argparse.Namespace, pick: Callable[[str | None, str], tuple[str | None, str]]
) -> LeaderElectionConfig | None:
    value, name = pick(args.leader_elect, "GPUPOWER_LEADER_ELECT")
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if value.lower() == "false":
        return None
    defaults = LeaderElectionConfig()
    namespace, _ = pick(args.leader_election_namespace, "GPUPOWER_LEADER_ELECTION_NAMESPACE")
    lease, _ = pick(args.leader_election_lease, "GPUPOWER_LEADER_ELECTION_LEASE")
    identity, _ = pick(args.leader_election_identity, "GPUPOWER_LEADER_ELECTION_IDENTITY")
    seconds: dict[str, float] = {}
    for field, var in (
        ("lease_seconds", "GPUPOWER_LEADER_ELECTION_LEASE_SECONDS"),
        ("renew_deadline_seconds", "GPUPOWER_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"),
        ("retry_seconds", "GPUPOWER_LEADER_ELECTION_RETRY_SECONDS"),
    ):
        value, name = pick(getattr(args, "leader_election_" + field), var)
        seconds[field] = _float(value, name, 0.1) if value is not None else getattr(defaults, field)
    # client-go's rule: a holder gives up before anyone may take over, and renews several times before that.
    if not seconds["lease_seconds"] > seconds["renew_deadline_seconds"] > seconds["retry_seconds"]:
        raise ConfigError(
            "--leader-election-lease-seconds > --leader-election-renew-deadline-seconds > "
            f"--leader-election-retry-seconds is required, got {seconds['lease_seconds']:g} > "
            f"{seconds['renew_deadline_seconds']:g} > {seconds['retry_seconds']:g}"
        )
    return LeaderElectionConfig(
        namespace=namespace or defaults.namespace,
        lease_name=lease or defaults.lease_name,
        identity=identity or f"{socket.gethostname()}_{secrets.token_hex(4)}",
        **seconds,
    )
