"""Publish the node's GPU power inventory on its own Node: a GET and, only when it differs, one PATCH.

Called on every pass of the agent's loop; it talks to the API only when the GPUs'
constraints changed since the last publication, every ``verify_seconds`` (someone
may have removed the labels), and after a failure (with backoff). The labels
describe hardware, so nothing removes them when the agent exits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from gpupower_agent.apiclient import ApiClient, HttpError, ProtocolError
from gpupower_agent.inventory import NodeInventory, inventory_patch, node_inventory
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import Gpu

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
