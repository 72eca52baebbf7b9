"""Leader election on a ``coordination.k8s.io`` Lease: one operator replica acts, the others stand by.

The protocol is client-go's (``k8s.io/client-go/tools/leaderelection``), so it
behaves as every controller-runtime manager beside gpupower does:

- A candidate reads the Lease every ``retry_seconds``. It takes the Lease when
  nobody holds it, or when the holder's record has not changed for
  ``leaseDurationSeconds`` *as this candidate measured it on its own clock*
  (no clock comparison between machines). Taking and renewing are updates
  with the ``resourceVersion`` read, so of two candidates only one wins.
- The holder renews every ``retry_seconds``. When it has not renewed for
  ``renew_deadline_seconds`` (shorter than the lease), it stops acting before
  anybody else may start: the process exits and Kubernetes restarts it as a
  candidate.
- A holder that stops on purpose (SIGTERM) releases the Lease, so the next
  replica takes over at its next read instead of waiting for the lease to run out.

:func:`decide` is the pure rule; :class:`LeaderElector` is the shell around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_operator.config import LeaderElectionConfig

log = logging.getLogger("gpupower_operator")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder (``None`` holder: free)."""

    holder: str | None
    lease_seconds: float
    transitions: int
    renew_time: str | None
    resource_version: str | None


class Action(Enum):
    TAKE = "take"  # free or expired: try to become the holder
    RENEW = "renew"  # we hold it: renew
    WAIT = "wait"  # someone else holds it and it has not expired


def decide(
    record: LeaseRecord | None, identity: str, unchanged_seconds: float, default_lease_seconds: float
) -> Action:
    """What a candidate does with the Lease it read, unchanged for ``unchanged_seconds`` by its own clock."""
    if record is None or not record.holder:
        return Action.TAKE
    if record.holder == identity:
        return Action.RENEW
    lease_seconds = record.lease_seconds if record.lease_seconds > 0 else default_lease_seconds
    return Action.TAKE if unchanged_seconds > lease_seconds else Action.WAIT


def _micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: client.V1Lease) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    renew = spec.renew_time
    return LeaseRecord(
        holder=spec.holder_identity or None,
        lease_seconds=float(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
        renew_time=renew.isoformat() if isinstance(renew, datetime) else (str(renew) if renew else None),
        resource_version=lease.metadata.resource_version if lease.metadata else None,
    )


class LeadershipLost(Exception):
    """The holder could not renew in time, or found another holder: it must stop acting now."""


class LeaderElector:
    """Compete for one Lease; hold it while renewing works; release it on a clean stop."""

    def __init__(
        self,
        api: client.ApiClient,
        config: LeaderElectionConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.identity = config.identity
        self._leases = client.CoordinationV1Api(api)
        self._clock = clock
        self._seen: tuple[LeaseRecord | None, float] | None = None
        self.leading = False

    @property
    def _timeout(self) -> float:
        # One request may not outlast the time left before the renew deadline.
        return max(self.config.retry_seconds, self.config.renew_deadline_seconds / 2)

    async def _read(self) -> LeaseRecord | None:
        try:
            lease = await self._leases.read_namespaced_lease(
                self.config.lease_name, self.config.namespace, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _record(lease)

    def _unchanged_seconds(self, record: LeaseRecord | None) -> float:
        """How long the Lease has looked the same to this process (0 when it just changed)."""
        now = self._clock()
        if self._seen is None or self._seen[0] != record:
            self._seen = (record, now)
        return now - self._seen[1]

    def _body(self, record: LeaseRecord | None, holder: str | None) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        taking = holder is not None and (record is None or record.holder != holder)
        transitions = (record.transitions if record else 0) + (
            1 if taking and record and record.holder else 0
        )
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.config.lease_seconds)) if holder else 1,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if taking:
            spec["acquireTime"] = now
        metadata: dict[str, Any] = {"name": self.config.lease_name, "namespace": self.config.namespace}
        if record is not None and record.resource_version:
            metadata["resourceVersion"] = record.resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _write(self, record: LeaseRecord | None, holder: str | None) -> bool:
        """Create or update the Lease with ``holder``; False when another replica wrote it first."""
        # A plain dict body: the client would write a datetime without microseconds when they are 0,
        # which the API server refuses as a MicroTime.
        body: Any = self._body(record, holder)
        try:
            if record is None:
                written = await self._leases.create_namespaced_lease(
                    self.config.namespace, body, _request_timeout=self._timeout
                )
            else:
                written = await self._leases.replace_namespaced_lease(
                    self.config.lease_name, self.config.namespace, body, _request_timeout=self._timeout
                )
        except ApiException as error:
            if error.status in (409, 422):  # someone else's write came first (or created it meanwhile)
                return False
            raise
        self._seen = (_record(written), self._clock())
        return True

    async def try_once(self) -> bool:
        """One read (and maybe one write): True when this replica holds the Lease afterwards."""
        record = await self._read()
        unchanged = self._unchanged_seconds(record)
        action = decide(record, self.identity, unchanged, self.config.lease_seconds)
        if action is Action.WAIT:
            return False
        if action is Action.TAKE and record is not None and record.holder:
            log.info(
                "lease expired lease=%s/%s holder=%s unchanged_seconds=%.1f",
                self.config.namespace,
                self.config.lease_name,
                record.holder,
                unchanged,
            )
        return await self._write(record, self.identity)

    async def acquire(self) -> None:
        """Return once this replica holds the Lease (retrying every ``retry_seconds`` meanwhile)."""
        log.info(
            "standing by lease=%s/%s identity=%s",
            self.config.namespace,
            self.config.lease_name,
            self.identity,
        )
        while True:
            try:
                if await self.try_once():
                    break
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                log.warning("lease read failed lease=%s error=%s", self.config.lease_name, error)
            await asyncio.sleep(self.config.retry_seconds)
        self.leading = True
        log.info(
            "leading lease=%s/%s identity=%s", self.config.namespace, self.config.lease_name, self.identity
        )

    async def hold(self) -> None:
        """Renew every ``retry_seconds``; raise :class:`LeadershipLost` when that fails past the deadline."""
        renewed = self._clock()
        while True:
            await asyncio.sleep(self.config.retry_seconds)
            try:
                if await self.try_once():
                    renewed = self._clock()
                    continue
                holder = self._seen[0].holder if self._seen and self._seen[0] else None
                if holder and holder != self.identity:
                    raise LeadershipLost(f"the Lease is now held by {holder}")
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                log.warning("lease renew failed lease=%s error=%s", self.config.lease_name, error)
            if self._clock() - renewed > self.config.renew_deadline_seconds:
                raise LeadershipLost(
                    f"not renewed for {self._clock() - renewed:.1f}s "
                    f"(deadline {self.config.renew_deadline_seconds:g}s)"
                )

    async def release(self) -> None:
        """Give the Lease up (a clean stop), so that a standby replica takes over at its next read."""
        if not self.leading:
            return
        self.leading = False
        try:
            record = await self._read()
            if record is not None and record.holder == self.identity and await self._write(record, None):
                log.info("lease released lease=%s/%s", self.config.namespace, self.config.lease_name)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("lease release failed lease=%s error=%s", self.config.lease_name, error)
