"""Write the ``gpupower.dev/PowerCapped`` condition on pods, only when it changes, off the capping path.

The reconcile loop hands the reporter the condition every pod should carry; the
reporter patches the pods' status subresource (a strategic merge patch of one
condition: the kubelet's conditions stay) in its own task, so a slow or
unreachable API server never delays a GPU's cap. A condition equal to what the
pod already carries is not patched. A patch the watch has not echoed back yet is
not repeated until ``echo_seconds`` have passed (then the pod's own copy wins:
someone may have overwritten it). A failed patch is logged, counted and retried
with backoff. Each patch names the pod's UID, so a pod recreated under the same
name never receives its predecessor's condition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gpupower_agent.agent import wait_for_wake
from gpupower_agent.apiclient import STRATEGIC_MERGE_PATCH, ApiClient, HttpError, ProtocolError
from gpupower_agent.cluster import PodKey, PodView
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.powercapped import PodCondition
from gpupower_api.contract import POWER_CAPPED_CONDITION

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 5.0
ECHO_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
CONCURRENT_PATCHES = 8
IDLE_SECONDS = 60.0


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Pending:
    uid: str
    condition: PodCondition
    transition_time: str


def condition_patch(uid: str, condition: PodCondition, transition_time: str) -> dict[str, Any]:
    """The strategic merge patch of a pod's status that sets this one condition."""
    return {
        "metadata": {"uid": uid},
        "status": {
            "conditions": [
                {
                    "type": POWER_CAPPED_CONDITION,
                    "status": condition.status_text,
                    "reason": condition.reason.value,
                    "message": condition.message,
                    "lastTransitionTime": transition_time,
                    "lastProbeTime": None,
                }
            ]
        },
    }


def _carries(pod: PodView, condition: PodCondition) -> bool:
    reported = pod.power_capped
    return (
        reported is not None
        and reported.status == condition.status_text
        and reported.reason == condition.reason.value
        and reported.message == condition.message
    )


class ConditionReporter:
    """Keeps every managed pod's PowerCapped condition equal to what the agent last decided."""

    def __init__(
        self,
        api: ApiClient,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        utc: Callable[[], str] = utc_now,
        echo_seconds: float = ECHO_SECONDS,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._clock = clock
        self._utc = utc
        self._echo_seconds = echo_seconds
        self._pending: dict[PodKey, _Pending] = {}
        self._sent: dict[PodKey, tuple[str, PodCondition, float]] = {}  # uid, condition, when
        self._failures: dict[PodKey, tuple[int, float]] = {}  # failures, next attempt
        self._wake = asyncio.Event()
        self._running = True

    def update(self, desired: Mapping[PodKey, PodCondition], pods: Mapping[PodKey, PodView]) -> None:
        """Take the conditions the pods should carry now (from one reconcile)."""
        now = self._clock()
        pending: dict[PodKey, _Pending] = {}
        for key, condition in desired.items():
            pod = pods.get(key)
            if pod is None or _carries(pod, condition):
                self._sent.pop(key, None)
                continue
            sent = self._sent.get(key)
            if (
                sent is not None
                and sent[0] == pod.uid
                and sent[1] == condition
                and now - sent[2] < self._echo_seconds
            ):
                continue
            reported = pod.power_capped
            keeps_status = reported is not None and reported.status == condition.status_text
            transition = (reported.last_transition_time if keeps_status and reported else None) or self._utc()
            pending[key] = _Pending(pod.uid, condition, transition)
        self._pending = pending
        for key in list(self._sent):
            if key not in pods:
                del self._sent[key]
        for key in list(self._failures):
            if key not in pending:
                del self._failures[key]
        if pending:
            self._wake.set()

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    def _due(self, now: float) -> list[tuple[PodKey, _Pending]]:
        return [
            (key, item)
            for key, item in self._pending.items()
            if key not in self._failures or self._failures[key][1] <= now
        ]

    async def run(self) -> None:
        """Patch what is pending until stopped."""
        while self._running:
            now = self._clock()
            due = self._due(now)
            if not due:
                retry = min((at for _, at in self._failures.values()), default=now + IDLE_SECONDS)
                await wait_for_wake(self._wake, retry - now)
                self._wake.clear()
                continue
            await self.flush(due)

    async def flush(self, due: list[tuple[PodKey, _Pending]] | None = None) -> None:
        """Send the pending patches (all of them, or ``due``), a few at a time."""
        items = list(self._pending.items()) if due is None else due
        gate = asyncio.Semaphore(CONCURRENT_PATCHES)

        async def one(key: PodKey, item: _Pending) -> None:
            async with gate:
                await self._patch(key, item)

        await asyncio.gather(*(one(key, item) for key, item in items))

    async def _patch(self, key: PodKey, item: _Pending) -> None:
        path = f"/api/v1/namespaces/{key.namespace}/pods/{key.name}/status"
        body = condition_patch(item.uid, item.condition, item.transition_time)
        try:
            await self._api.merge_patch(path, body, REQUEST_TIMEOUT_SECONDS, STRATEGIC_MERGE_PATCH)
        except HttpError as error:
            if error.status in (404, 409, 422):
                # Gone, or another pod under the same name now: nothing to report on this one.
                self._metrics.condition_patches_total.labels("gone").inc()
                self._forget(key, item)
                return
            self._failed(key, item, f"HTTP {error.status}: {error.body[:200]}")
            return
        except (ProtocolError, OSError, TimeoutError, ValueError) as error:
            self._failed(key, item, str(error) or type(error).__name__)
            return
        self._metrics.condition_patches_total.labels("ok").inc()
        self._forget(key, item)
        self._sent[key] = (item.uid, item.condition, self._clock())
        log.info(
            "event=pod_condition_set pod=%s condition=%s status=%s reason=%s message=%r",
            key,
            POWER_CAPPED_CONDITION,
            item.condition.status_text,
            item.condition.reason.value,
            item.condition.message,
        )

    def _forget(self, key: PodKey, item: _Pending) -> None:
        if self._pending.get(key) is item:
            del self._pending[key]
        self._failures.pop(key, None)

    def _failed(self, key: PodKey, item: _Pending, error: str) -> None:
        self._metrics.condition_patches_total.labels("failed").inc()
        failures = self._failures.get(key, (0, 0.0))[0] + 1
        delay = min(RETRY_MIN_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
        self._failures[key] = (failures, self._clock() + delay)
        if failures == 1:
            log.warning(
                "event=pod_condition_failed pod=%s reason=%s error=%r retry_in_seconds=%.1f",
                key,
                item.condition.reason.value,
                error,
                delay,
            )
