"""The agent's state file: the UUIDs of the GPUs it has capped, written atomically.

On start the agent restores the default limit on GPUs it capped before that now
have no managed pod (their pods went away while it was down). A missing file
means a first start; an empty, truncated or wrong-shaped one is reported and
treated as "no GPUs known", never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpupower_agent.atomicfile import write_json_atomically

STATE_VERSION = 1


class CorruptStateError(ValueError):
    """A state file that cannot be read as the agent's state."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(f"state file {path}: {detail}")


@dataclass(frozen=True)
class AgentState:
    node_name: str
    managed_gpu_uuids: frozenset[str]


def load_state(path: Path) -> AgentState | None:
    """The saved state; None when the file does not exist; :class:`CorruptStateError` when unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CorruptStateError(path, f"cannot read: {error}") from error
    if not text.strip():
        raise CorruptStateError(path, "empty")
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise CorruptStateError(path, f"not JSON ({error})") from error
    if not isinstance(raw, dict):
        raise CorruptStateError(path, f"expected an object, got {type(raw).__name__}")
    if raw.get("version") != STATE_VERSION:
        raise CorruptStateError(path, f"version: expected {STATE_VERSION}, got {raw.get('version')!r}")
    node_name = raw.get("nodeName")
    if not isinstance(node_name, str):
        raise CorruptStateError(path, "nodeName: expected a string")
    uuids = raw.get("managedGpus")
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise CorruptStateError(path, "managedGpus: expected a list of GPU UUID strings")
    return AgentState(node_name=node_name, managed_gpu_uuids=frozenset(uuids))


def save_state(path: Path, node_name: str, managed_gpu_uuids: Iterable[str]) -> None:
    """Write the state atomically: a reader sees the old file or the new one, never half of one."""
    payload = {"version": STATE_VERSION, "nodeName": node_name, "managedGpus": sorted(managed_gpu_uuids)}
    write_json_atomically(path, payload)
