"""GPU power management behind a small interface: the real NVML (pynvml) and an in-memory fake.

Watts at the interface, milliwatts only inside the real adapter. The fake keeps
its GPUs' limits in a JSON file so that, like real GPUs, they survive an agent
restart or crash; tests and the demo read that file to see what the hardware holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid as uuid_module
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gpupower_agent.atomicfile import write_json_atomically


class NvmlErrorKind(StrEnum):
    NO_PERMISSION = "no_permission"
    NOT_SUPPORTED = "not_supported"
    GPU_LOST = "gpu_lost"
    UNINITIALIZED = "uninitialized"
    OTHER = "other"


class NvmlError(Exception):
    """An NVML call that failed; ``kind`` is what the agent counts and decides on."""

    def __init__(
        self, kind: NvmlErrorKind, operation: str, uuid: str | None = None, detail: str = ""
    ) -> None:
        self.kind = kind
        self.operation = operation
        self.uuid = uuid
        where = f" gpu={uuid}" if uuid else ""
        super().__init__(f"nvml {operation} failed{where}: {kind.value}{': ' + detail if detail else ''}")


@dataclass(frozen=True)
class GpuConstraints:
    """What a GPU accepts as a power limit, and its factory default, in watts."""

    min_watts: int
    max_watts: int
    default_watts: int


@dataclass(frozen=True)
class Gpu:
    uuid: str
    index: int
    model: str
    constraints: GpuConstraints


class PowerControl(Protocol):
    """The NVML calls the agent needs."""

    @property
    def is_fake(self) -> bool: ...

    def gpus(self) -> list[Gpu]: ...

    def power_limit_watts(self, uuid: str) -> int: ...

    def set_power_limit_watts(self, uuid: str, watts: int) -> None: ...

    def power_usage_watts(self, uuid: str) -> float: ...

    def running_pids(self, uuid: str) -> list[int]: ...


# ---------------------------------------------------------------------------
# The fake


@dataclass(frozen=True)
class GpuModel:
    name: str
    constraints: GpuConstraints
    idle_watts: float


GPU_MODELS: dict[str, GpuModel] = {
    "h100-sxm": GpuModel("h100-sxm", GpuConstraints(200, 700, 700), 70.0),
    "h100-pcie": GpuModel("h100-pcie", GpuConstraints(200, 350, 350), 50.0),
    "a100-sxm": GpuModel("a100-sxm", GpuConstraints(100, 400, 400), 50.0),
    "a100-pcie": GpuModel("a100-pcie", GpuConstraints(150, 250, 250), 40.0),
    "l40s": GpuModel("l40s", GpuConstraints(100, 350, 350), 35.0),
}


class InvalidFakeGpusError(ValueError):
    """A ``--fake-gpus`` value that is not ``COUNT:MODEL``."""


@dataclass(frozen=True)
class FakeGpuSpec:
    count: int
    model: GpuModel


def parse_fake_gpus(value: str) -> FakeGpuSpec:
    """Parse ``--fake-gpus COUNT:MODEL`` (e.g. ``8:h100-sxm``)."""
    count_text, sep, model_name = value.partition(":")
    if not sep:
        raise InvalidFakeGpusError(f"--fake-gpus={value!r}: expected COUNT:MODEL, e.g. 8:h100-sxm")
    if not count_text.isdigit() or not 1 <= int(count_text) <= 64:
        raise InvalidFakeGpusError(f"--fake-gpus={value!r}: COUNT must be an integer in 1..64")
    if model_name not in GPU_MODELS:
        raise InvalidFakeGpusError(
            f"--fake-gpus={value!r}: unknown MODEL {model_name!r} (known: {', '.join(sorted(GPU_MODELS))})"
        )
    return FakeGpuSpec(int(count_text), GPU_MODELS[model_name])


def fake_gpu_uuid(node_name: str, index: int) -> str:
    """The UUID the fake gives GPU ``index`` of ``node_name``; the demo's node simulator uses it too."""
    digest = hashlib.sha256(f"{node_name}/{index}".encode()).digest()[:16]
    return f"GPU-{uuid_module.UUID(bytes=digest)}"


@dataclass
class _FakeGpuState:
    gpu: Gpu
    limit_watts: int
    pids: list[int] = field(default_factory=list)
    lost: bool = False


class FakeNvml:
    """N GPUs of one model in memory, with limits persisted to ``state_path`` and injectable errors.

    Errors are injected per operation (``"set"``, ``"get"``, ``"usage"``, ``"processes"``) and
    optionally per GPU; each injection fails that many calls (``times=None``: until cleared).

    Another process (a test, the demo) can act on the hardware through the state file, as an
    administrator would with ``nvidia-smi``: a changed ``limitWatts`` is taken as the GPU's new
    limit, ``"faults": {"set": "no_permission"}`` on a GPU makes that operation fail until
    the entry is removed, and ``"pids": [...]`` are the processes NVML reports running on it
    (for ``--gpu-mapping cgroup``), ``"lost": true`` makes the GPU vanish (as after an Xid
    error) until removed, and another ``"model"`` puts a GPU of that model in its slot (same
    UUID, new constraints). The fake notices the change at its next call.
    """

    def __init__(self, node_name: str, spec: FakeGpuSpec, state_path: Path | None = None) -> None:
        self._state_path = state_path
        self._gpus: dict[str, _FakeGpuState] = {}
        self._errors: dict[tuple[str, str | None], tuple[NvmlErrorKind, int | None]] = {}
        self._file_faults: dict[tuple[str, str], NvmlErrorKind] = {}
        self._file_stamp: tuple[int, int, int] | None = None
        for index in range(spec.count):
            uuid = fake_gpu_uuid(node_name, index)
            gpu = Gpu(uuid=uuid, index=index, model=spec.model.name, constraints=spec.model.constraints)
            self._gpus[uuid] = _FakeGpuState(gpu=gpu, limit_watts=spec.model.constraints.default_watts)
        self._idle_watts = spec.model.idle_watts
        self._load()
        self._save()

    def _stamp(self) -> tuple[int, int, int] | None:
        if self._state_path is None:
            return None
        try:
            stat = self._state_path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _load(self) -> None:
        """Take limits and faults from the state file; an unreadable file changes nothing."""
        if self._state_path is None:
            return
        self._file_stamp = self._stamp()
        try:
            raw = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(raw, list):
            return
        faults: dict[tuple[str, str], NvmlErrorKind] = {}
        for item in raw:
            if not isinstance(item, dict) or item.get("uuid") not in self._gpus:
                continue
            state = self._gpus[item["uuid"]]
            limit = item.get("limitWatts")
            if isinstance(limit, int) and not isinstance(limit, bool):
                constraints = state.gpu.constraints
                state.limit_watts = min(max(limit, constraints.min_watts), constraints.max_watts)
            model = GPU_MODELS.get(str(item.get("model")))
            if model is not None and model.name != state.gpu.model:
                state.gpu = Gpu(state.gpu.uuid, state.gpu.index, model.name, model.constraints)
                constraints = model.constraints
                state.limit_watts = min(max(state.limit_watts, constraints.min_watts), constraints.max_watts)
            state.lost = item.get("lost") is True
            pids = item.get("pids")
            if isinstance(pids, list):
                state.pids = [pid for pid in pids if isinstance(pid, int) and not isinstance(pid, bool)]
            item_faults = item.get("faults")
            if isinstance(item_faults, dict):
                for operation, kind in item_faults.items():
                    if kind in NvmlErrorKind.__members__.values():
                        faults[(str(operation), state.gpu.uuid)] = NvmlErrorKind(kind)
        self._file_faults = faults

    def _refresh(self) -> None:
        if self._state_path is not None and self._stamp() != self._file_stamp:
            self._load()

    def _save(self) -> None:
        if self._state_path is None:
            return
        gpus: list[dict[str, Any]] = []
        for state in sorted(self._gpus.values(), key=lambda s: s.gpu.index):
            entry: dict[str, Any] = {
                "uuid": state.gpu.uuid,
                "index": state.gpu.index,
                "model": state.gpu.model,
                "limitWatts": state.limit_watts,
            }
            faults = {
                op: kind.value for (op, uuid), kind in self._file_faults.items() if uuid == state.gpu.uuid
            }
            if faults:
                entry["faults"] = faults
            if state.pids:
                entry["pids"] = list(state.pids)
            if state.lost:
                entry["lost"] = True
            gpus.append(entry)
        write_json_atomically(self._state_path, gpus, indent=2)
        self._file_stamp = self._stamp()

    # -- error injection, for tests and the demo

    def inject_error(
        self, operation: str, kind: NvmlErrorKind, uuid: str | None = None, times: int | None = None
    ) -> None:
        self._errors[(operation, uuid)] = (kind, times)

    def clear_errors(self) -> None:
        self._errors.clear()

    def set_running_pids(self, uuid: str, pids: list[int]) -> None:
        self._state(uuid, "processes").pids = list(pids)

    def _maybe_fail(self, operation: str, uuid: str | None) -> None:
        self._refresh()
        if uuid is not None and (operation, uuid) in self._file_faults:
            kind = self._file_faults[(operation, uuid)]
            raise NvmlError(kind, operation, uuid, "injected through the fake's state file")
        for key in ((operation, uuid), (operation, None)):
            if key not in self._errors:
                continue
            kind, times = self._errors[key]
            if times is not None:
                if times <= 1:
                    del self._errors[key]
                else:
                    self._errors[key] = (kind, times - 1)
            raise NvmlError(kind, operation, uuid, "injected by the fake")

    def _state(self, uuid: str, operation: str) -> _FakeGpuState:
        state = self._gpus.get(uuid)
        if state is None or state.lost:
            raise NvmlError(NvmlErrorKind.GPU_LOST, operation, uuid, "no such GPU")
        return state

    # -- PowerControl

    @property
    def is_fake(self) -> bool:
        return True

    def gpus(self) -> list[Gpu]:
        self._refresh()
        present = (s for s in self._gpus.values() if not s.lost)
        return [s.gpu for s in sorted(present, key=lambda s: s.gpu.index)]

    def power_limit_watts(self, uuid: str) -> int:
        self._maybe_fail("get", uuid)
        return self._state(uuid, "get").limit_watts

    def set_power_limit_watts(self, uuid: str, watts: int) -> None:
        self._maybe_fail("set", uuid)
        state = self._state(uuid, "set")
        constraints = state.gpu.constraints
        if not constraints.min_watts <= watts <= constraints.max_watts:
            # What real NVML answers for a limit outside the constraints.
            raise NvmlError(NvmlErrorKind.OTHER, "set", uuid, f"invalid argument: {watts} W")
        state.limit_watts = watts
        self._save()

    def power_usage_watts(self, uuid: str) -> float:
        self._maybe_fail("usage", uuid)
        state = self._state(uuid, "usage")
        busy = 0.85 * state.limit_watts if state.pids else self._idle_watts
        return float(min(busy, state.limit_watts))

    def running_pids(self, uuid: str) -> list[int]:
        self._maybe_fail("processes", uuid)
        return list(self._state(uuid, "processes").pids)


# ---------------------------------------------------------------------------
# The real NVML


def _error_kind(code: int) -> NvmlErrorKind:
    import pynvml

    return {
        pynvml.NVML_ERROR_NO_PERMISSION: NvmlErrorKind.NO_PERMISSION,
        pynvml.NVML_ERROR_NOT_SUPPORTED: NvmlErrorKind.NOT_SUPPORTED,
        pynvml.NVML_ERROR_GPU_IS_LOST: NvmlErrorKind.GPU_LOST,
        pynvml.NVML_ERROR_UNINITIALIZED: NvmlErrorKind.UNINITIALIZED,
    }.get(code, NvmlErrorKind.OTHER)


def _milliwatts_to_watts(milliwatts: int) -> int:
    return round(milliwatts / 1000)


class RealNvml:
    """The host's GPUs through pynvml (nvidia-ml-py)."""

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        self._handles: dict[str, Any] = {}
        self._gpus: list[Gpu] = []
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlError(_error_kind(error.value), "init", None, str(error)) from error
        self._scan()

    def _scan(self) -> None:
        """Enumerate the GPUs and their constraints now; a GPU that does not answer is left out (lost)."""
        pynvml = self._nvml
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError:
            # NVML itself stopped answering (a driver reload): initialise it again, once per scan.
            try:
                with contextlib.suppress(pynvml.NVMLError):
                    pynvml.nvmlShutdown()
                pynvml.nvmlInit()
                count = pynvml.nvmlDeviceGetCount()
            except pynvml.NVMLError as error:
                raise NvmlError(_error_kind(error.value), "scan", None, str(error)) from error
        handles: dict[str, Any] = {}
        gpus: list[Gpu] = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                name = pynvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                default_mw = pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
            except pynvml.NVMLError:
                continue
            constraints = GpuConstraints(
                min_watts=_milliwatts_to_watts(min_mw),
                max_watts=_milliwatts_to_watts(max_mw),
                default_watts=_milliwatts_to_watts(default_mw),
            )
            handles[uuid] = handle
            gpus.append(Gpu(uuid=uuid, index=index, model=name, constraints=constraints))
        self._handles = handles
        self._gpus = gpus

    def _call(self, operation: str, uuid: str, fn: Any, *args: Any) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            raise NvmlError(NvmlErrorKind.GPU_LOST, operation, uuid, "no such GPU")
        try:
            return fn(handle, *args)
        except self._nvml.NVMLError as error:
            raise NvmlError(_error_kind(error.value), operation, uuid, str(error)) from error

    @property
    def is_fake(self) -> bool:
        return False

    def gpus(self) -> list[Gpu]:
        """The GPUs present now: re-enumerated, so a lost, replaced or re-attached GPU shows."""
        self._scan()
        return list(self._gpus)

    def power_limit_watts(self, uuid: str) -> int:
        milliwatts = self._call("get", uuid, self._nvml.nvmlDeviceGetPowerManagementLimit)
        return _milliwatts_to_watts(milliwatts)

    def set_power_limit_watts(self, uuid: str, watts: int) -> None:
        self._call("set", uuid, self._nvml.nvmlDeviceSetPowerManagementLimit, watts * 1000)

    def power_usage_watts(self, uuid: str) -> float:
        return float(self._call("usage", uuid, self._nvml.nvmlDeviceGetPowerUsage)) / 1000.0

    def running_pids(self, uuid: str) -> list[int]:
        processes = self._call("processes", uuid, self._nvml.nvmlDeviceGetComputeRunningProcesses)
        return [int(p.pid) for p in processes]

    def shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            return
