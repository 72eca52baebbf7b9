"""Publish on the agent's own Node: its GPU power inventory, and what its GPUs hold for its power domains.

The inventory: called on every pass of the agent's loop; it talks to the API only
when the GPUs' constraints changed since the last publication, every
``verify_seconds`` (someone may have removed the labels), and after a failure
(with backoff). The labels describe hardware, so nothing removes them when the
agent exits.

What the GPUs hold (``gpupower.dev/gpu-power-held``, while the node is in a
power domain): after each reconcile the agent hands over the sums read back from
NVML; the annotation is patched, in its own task so a slow API server never
delays a cap, only when its text differs from what the watched Node carries
(and not again while the watch has not echoed a patch back), and removed when
the node leaves every domain. A failed patch is logged once, counted and
retried with backoff; it never stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from gpupower_agent.agent import wait_for_wake
from gpupower_agent.apiclient import ApiClient, HttpError, ProtocolError
from gpupower_agent.cluster import NodeView
from gpupower_agent.inventory import NodeInventory, inventory_patch, node_inventory
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import Gpu
from gpupower_api.contract import GPU_POWER_HELD_ANNOTATION, NodeHeld, format_held_report

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
VERIFY_SECONDS = 300.0
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0


class InventoryPublisher:
    """Keeps the Node's inventory labels and annotation equal to what the GPUs report."""

    def __init__(
        self,
        api: ApiClient,
        node_name: str,
        metrics: AgentMetrics,
        verify_seconds: float = VERIFY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._path = f"/api/v1/nodes/{node_name}"
        self._node_name = node_name
        self._metrics = metrics
        self._verify_seconds = verify_seconds
        self._clock = clock
        self._published: NodeInventory | None = None
        self._next_check = 0.0
        self._retry_seconds = RETRY_MIN_SECONDS
        self._last_error: str | None = None

    async def publish(self, gpus: Sequence[Gpu]) -> bool:
        """Bring the Node in line with ``gpus`` when due; True when the Node carries it afterwards."""
        desired = node_inventory(gpus)
        now = self._clock()
        if now < self._next_check and (desired == self._published or self._last_error is not None):
            return self._last_error is None  # up to date, or backing off after a failure
        return await self._publish(desired, now)

    async def _publish(self, desired: NodeInventory, now: float) -> bool:
        try:
            node = await self._api.get_json(self._path, {}, REQUEST_TIMEOUT_SECONDS)
            metadata = node.get("metadata") or {}
            patch = inventory_patch(desired, metadata.get("labels") or {}, metadata.get("annotations") or {})
            if patch is not None:
                await self._api.merge_patch(self._path, patch, REQUEST_TIMEOUT_SECONDS)
                log.info(
                    "event=node_inventory_published node=%s %s labels_changed=%d annotation_changed=%s",
                    self._node_name,
                    desired.summary,
                    len(patch["metadata"].get("labels", {})),
                    "annotations" in patch["metadata"],
                )
            elif self._published is None:
                log.info("event=node_inventory_current node=%s %s", self._node_name, desired.summary)
        except (HttpError, ProtocolError, OSError, TimeoutError, ValueError, AttributeError) as error:
            text = str(error) or type(error).__name__
            self._metrics.api_errors_total.labels("nodes").inc()
            if text != self._last_error:
                log.warning(
                    "event=node_inventory_failed node=%s error=%r retry_in_seconds=%.0f",
                    self._node_name,
                    text[:300],
                    self._retry_seconds,
                )
            self._last_error = text
            self._next_check = now + self._retry_seconds
            self._retry_seconds = min(self._retry_seconds * 2, RETRY_MAX_SECONDS)
            return False
        if self._last_error is not None:
            log.info("event=node_inventory_recovered node=%s", self._node_name)
        self._last_error = None
        self._retry_seconds = RETRY_MIN_SECONDS
        self._published = desired
        self._next_check = now + self._verify_seconds
        return True


ECHO_SECONDS = 5.0
HELD_RETRY_MAX_SECONDS = 60.0
IDLE_SECONDS = 60.0


class HeldReportPublisher:
    """Keeps the Node's ``gpupower.dev/gpu-power-held`` annotation equal to what the GPUs hold."""

    def __init__(
        self,
        api: ApiClient,
        node_name: str,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        echo_seconds: float = ECHO_SECONDS,
    ) -> None:
        self._api = api
        self._path = f"/api/v1/nodes/{node_name}"
        self._node_name = node_name
        self._metrics = metrics
        self._clock = clock
        self._echo_seconds = echo_seconds
        self._desired: str | None = None
        self._due = False
        self._sent: tuple[str | None, float] | None = None  # the text last patched (None: removed), when
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error: str | None = None
        self._wake = asyncio.Event()
        self._running = True
        self._sending = asyncio.Lock()  # one patch at a time: the exit's flush and the task's

    def update(self, held: NodeHeld | None, node: NodeView | None) -> None:
        """Take what the GPUs hold after a reconcile (None: the node is in no domain) and the Node as watched
        (None: not readable; then what was last patched stands for it)."""
        desired = None if held is None else format_held_report(held)
        self._desired = desired
        carried = node.held_report if node is not None else (self._sent[0] if self._sent else None)
        sent = self._sent
        awaiting_echo = (
            sent is not None and sent[0] == desired and self._clock() - sent[1] < self._echo_seconds
        )
        self._due = desired != carried and not awaiting_echo
        if self._due:
            self._wake.set()

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    async def run(self) -> None:
        """Patch what is due until stopped."""
        while self._running:
            now = self._clock()
            if not self._due:
                await wait_for_wake(self._wake, IDLE_SECONDS)
            elif now < self._next_attempt:
                await wait_for_wake(self._wake, self._next_attempt - now)
            else:
                await self.flush()
                continue
            self._wake.clear()

    async def flush(self) -> None:
        """Send the patch if one is due (at once, whatever the backoff says)."""
        async with self._sending:
            if self._due:
                await self._send(self._desired)

    async def _send(self, text: str | None) -> None:
        patch = {"metadata": {"annotations": {GPU_POWER_HELD_ANNOTATION: text}}}
        try:
            await self._api.merge_patch(self._path, patch, REQUEST_TIMEOUT_SECONDS)
        except (HttpError, ProtocolError, OSError, TimeoutError, ValueError) as error:
            self._failed(str(error) or type(error).__name__)
            return
        self._sent = (text, self._clock())
        if self._desired == text:
            self._due = False
        result = "removed" if text is None else "set"
        self._metrics.held_report_patches_total.labels(result).inc()
        if self._last_error is not None:
            log.info("event=node_held_recovered node=%s", self._node_name)
        self._failures, self._next_attempt, self._last_error = 0, 0.0, None
        if text is None:
            log.info("event=node_held_removed node=%s why=in_no_domain", self._node_name)
        else:
            log.info("event=node_held_published node=%s held=%s", self._node_name, text)

    def _failed(self, error: str) -> None:
        self._metrics.held_report_patches_total.labels("failed").inc()
        self._metrics.api_errors_total.labels("nodes").inc()
        self._failures += 1
        delay = min(RETRY_MIN_SECONDS * 2 ** (self._failures - 1), HELD_RETRY_MAX_SECONDS)
        self._next_attempt = self._clock() + delay
        if error != self._last_error:
            log.warning(
                "event=node_held_failed node=%s error=%r retry_in_seconds=%.0f",
                self._node_name,
                error[:300],
                delay,
            )
        self._last_error = error
