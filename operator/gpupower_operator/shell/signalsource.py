"""Per budget, the reads of Prometheus behind its signals: connections, Secrets, and the memory between reads.

:class:`SignalSource` reads Prometheus at most once per ``intervalSeconds`` per
budget, hands each reading to the pure :func:`gpupower_operator.core.signals.advance`
and keeps the memory it returns between reconciles.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_api.models import BudgetSpec, BudgetStatus, PrometheusSpec
from gpupower_operator.adapters.prometheus import (
    ConnectionSettings,
    MetricsReader,
    PrometheusClient,
    PrometheusError,
    single_value,
)
from gpupower_operator.core import promql
from gpupower_operator.core.conditions import ConditionUpdate
from gpupower_operator.core.signals import (
    Memory,
    Reading,
    Signals,
    TargetReading,
    Value,
    advance,
    no_url_signals,
    prometheus_settings,
    wants_prometheus,
)

log = logging.getLogger("gpupower.signals")


def read_budget(reader: MetricsReader, spec: BudgetSpec, namespace: str) -> Reading:
    """Run every query of a budget (blocking); the first failure stops the read."""
    prometheus = prometheus_settings(spec)
    targets: dict[str, TargetReading] = {}
    try:
        for target in spec.targets:
            queries = promql.target_queries(target, namespace, prometheus)

            def one(query: str | None, what: str) -> Value:
                return None if query is None else single_value(reader.vector(query), what)

            power = reader.vector(queries.power_watts)
            targets[target.name] = TargetReading(
                demand=one(queries.demand, f"{target.name} demand"),
                served=one(queries.served, f"{target.name} throughput"),
                ttft_seconds=one(queries.ttft_seconds, f"{target.name} TTFT"),
                inter_token_latency_seconds=one(
                    queries.inter_token_latency_seconds, f"{target.name} inter-token latency"
                ),
                power_watts=math.fsum(s.value for s in power) if power else None,
                gpus_reporting=len(power),
            )
    except PrometheusError as error:
        return Reading(error=str(error))
    return Reading(targets=targets)


SecretReader = Callable[[str, str, str], Awaitable[bytes]]
ReaderFactory = Callable[[ConnectionSettings], MetricsReader]


class SecretError(Exception):
    """A Secret (or its key) that the Prometheus section names and that cannot be read."""


def kubernetes_secret_reader(api: ApiClient) -> SecretReader:
    """Read one key of a Secret through the API (the operator's ServiceAccount needs ``get secrets``)."""
    core = CoreV1Api(api)

    async def read(namespace: str, name: str, key: str) -> bytes:
        try:
            secret = await core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            reason = f"status={error.status} reason={error.reason}"
            raise SecretError(f"secret {namespace}/{name}: {reason}") from None
        data = secret.data or {}
        if key not in data:
            raise SecretError(f"secret {namespace}/{name} has no key {key!r}")
        try:
            return base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(f"secret {namespace}/{name} key {key!r} is not base64") from None

    return read


class SignalSource:
    """Reads Prometheus for every budget that wants it, at most once per interval, and remembers."""

    def __init__(
        self,
        default_url: str | None,
        read_secret: SecretReader | None = None,
        reader_factory: ReaderFactory = PrometheusClient,
        clock: Callable[[], float] = time.monotonic,
        count_failure: Callable[[], None] | None = None,
    ) -> None:
        self.default_url = default_url
        self._count_failure = count_failure
        self._read_secret = read_secret
        self._reader_factory = reader_factory
        self._clock = clock
        self._memory: dict[tuple[str, str], Memory] = {}
        self._readers: dict[ConnectionSettings, MetricsReader] = {}
        self._ca_dir = Path(tempfile.mkdtemp(prefix="gpupower-prometheus-ca-"))

    async def _connection(self, namespace: str, prometheus: PrometheusSpec, url: str) -> ConnectionSettings:
        token: str | None = None
        ca_file: str | None = None
        if prometheus.bearer_token_secret_ref is not None:
            ref = prometheus.bearer_token_secret_ref
            token = (await self._secret(namespace, ref.name, ref.key)).decode().strip()
        if prometheus.ca_secret_ref is not None:
            ref = prometheus.ca_secret_ref
            pem = await self._secret(namespace, ref.name, ref.key)
            path = self._ca_dir / f"{hashlib.sha256(pem).hexdigest()[:16]}.pem"
            if not path.exists():
                path.write_bytes(pem)
            ca_file = str(path)
        return ConnectionSettings(
            url=url.rstrip("/"),
            bearer_token=token,
            ca_file=ca_file,
            insecure_skip_verify=prometheus.insecure_skip_verify,
            timeout_seconds=prometheus.timeout_seconds,
        )

    async def _secret(self, namespace: str, name: str, key: str) -> bytes:
        if self._read_secret is None:
            raise SecretError(f"secret {namespace}/{name}: the operator cannot read Secrets")
        try:
            return await self._read_secret(namespace, name, key)
        except SecretError:
            raise
        except (LookupError, OSError, ValueError, aiohttp.ClientError) as error:
            raise SecretError(f"secret {namespace}/{name} key {key}: {error}") from None

    async def signals(
        self, namespace: str, name: str, spec: BudgetSpec, old_status: BudgetStatus | None
    ) -> Signals | None:
        """The budget's signals now; None when the budget does not use Prometheus."""
        if not wants_prometheus(spec):
            self._memory.pop((namespace, name), None)
            return None
        prometheus = prometheus_settings(spec)
        url = prometheus.url or self.default_url
        if url is None:
            return no_url_signals(spec)
        key = (namespace, name)
        memory = self._memory.get(key, Memory())
        now = self._clock()
        if (
            memory.last_signals is not None
            and memory.last_read_seconds is not None
            and now - memory.last_read_seconds < prometheus.interval_seconds
            and set(memory.last_signals.targets) == {t.name for t in spec.targets}
        ):
            return memory.last_signals
        try:
            connection = await self._connection(namespace, prometheus, url)
        except SecretError as error:
            reading = Reading(error=str(error))
        else:
            reader = self._readers.get(connection)
            if reader is None:
                reader = self._readers[connection] = self._reader_factory(connection)
            reading = await asyncio.to_thread(read_budget, reader, spec, namespace)
        if reading.error is not None and self._count_failure is not None:
            self._count_failure()
        before = memory.last_signals.condition if memory.last_signals is not None else None
        memory, signals = advance(memory, spec, old_status, reading, now)
        self._memory[key] = memory
        self._log(namespace, name, before, signals, reading)
        return signals

    def forget(self, namespace: str, name: str) -> None:
        self._memory.pop((namespace, name), None)

    async def reader(self, namespace: str, spec: BudgetSpec) -> MetricsReader | None:
        """A reader of the budget's Prometheus (its url, else the operator's); None without a url.

        Raises :class:`SecretError` when a Secret the budget names cannot be read.
        """
        prometheus = prometheus_settings(spec)
        url = prometheus.url or self.default_url
        if url is None:
            return None
        connection = await self._connection(namespace, prometheus, url)
        reader = self._readers.get(connection)
        if reader is None:
            reader = self._readers[connection] = self._reader_factory(connection)
        return reader

    @staticmethod
    def _log(
        namespace: str, name: str, before: ConditionUpdate | None, signals: Signals, reading: Reading
    ) -> None:
        budget = f"{namespace}/{name}"
        after = signals.condition
        if after is not None and (before is None or before.status != after.status):
            log.info(
                "metrics_available budget=%s from=%s to=%s reason=%s message=%r",
                budget,
                before.status if before is not None else "Unknown",
                after.status,
                after.reason,
                after.message,
            )
        elif reading.error is not None:
            log.debug("prometheus read failed budget=%s error=%r", budget, reading.error)
        for target in signals.corrections_applied:
            factors = signals.targets[target].factors
            log.info(
                "corrections applied budget=%s target=%s power_factor=%.3f throughput_factor=%.3f "
                "why=drift persisted",
                budget,
                target,
                factors.power,
                factors.throughput,
            )
