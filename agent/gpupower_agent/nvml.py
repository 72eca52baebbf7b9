"""GPU power management behind a small interface: the real NVML (pynvml) and an in-memory fake.

Watts at the interface, milliwatts only inside the real adapter. The fake keeps
its GPUs' limits in a JSON file so that, like real GPUs, they survive an agent
restart or crash; tests and the demo read that file to see what the hardware holds.

MIG: a GPU in MIG mode is still one GPU here. Its MIG devices (the partitions
pods are given) have UUIDs of their own, ``MIG-...``; :meth:`PowerControl.physical_gpu`
names the GPU one is on. NVML sets power limits on the whole GPU only, so the
caps of every pod on any of its MIG devices meet on that GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gpupower_agent.atomicfile import write_json_atomically

log = logging.getLogger(__name__)


class NvmlErrorKind(StrEnum):
    NO_PERMISSION = "no_permission"
    NOT_SUPPORTED = "not_supported"
    GPU_LOST = "gpu_lost"
    UNINITIALIZED = "uninitialized"
    INVALID_ARGUMENT = "invalid_argument"
    DRIVER_NOT_LOADED = "driver_not_loaded"
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

    def running_pids(self, uuid: str) -> list[int]:
        """Processes on the GPU; on a GPU in MIG mode, those on all of its MIG devices."""
        ...

    def physical_gpu(self, device_uuid: str) -> str | None:
        """The GPU a device is on: a GPU's own UUID, a MIG device's parent; None when NVML knows neither.

        Raises :class:`NvmlError` when NVML cannot say.
        """
        ...


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


def _derived_uuid(prefix: str, seed: str) -> str:
    return f"{prefix}-{uuid_module.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16])}"


def fake_gpu_uuid(node_name: str, index: int) -> str:
    """The UUID the fake gives GPU ``index`` of ``node_name``; the demo's node simulator uses it too."""
    return _derived_uuid("GPU", f"{node_name}/{index}")


def fake_mig_uuid(node_name: str, gpu_index: int, mig_index: int) -> str:
    """The UUID of MIG device ``mig_index`` (its place in the GPU's ``migDevices``) of a fake GPU."""
    return _derived_uuid("MIG", f"{node_name}/{gpu_index}/mig/{mig_index}")


class _WatchedFile:
    """A file another process edits: tells cheaply (one stat) whether it changed since last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def _current(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def changed(self) -> bool:
        return self._current() != self._stamp

    def mark_read(self) -> None:
        self._stamp = self._current()


@dataclass
class _FakeGpuState:
    gpu: Gpu
    limit_watts: int
    pids: list[int] = field(default_factory=list)
    lost: bool = False
    mig_profiles: list[str] | None = None  # None: MIG mode off


class FakeNvml:
    """N GPUs of one model in memory, with limits persisted to ``state_path`` and injectable errors.

    Errors are injected per operation (``"set"``, ``"get"``, ``"usage"``, ``"processes"``,
    ``"mig"``: resolving a MIG device of the GPU) and optionally per GPU; each injection fails
    that many calls (``times=None``: until cleared).

    Another process (a test, the demo) can act on the hardware through the state file, as an
    administrator would with ``nvidia-smi``: a changed ``limitWatts`` is taken as the GPU's new
    limit, ``"faults": {"set": "no_permission"}`` on a GPU makes that operation fail until
    the entry is removed, and ``"pids": [...]`` are the processes NVML reports running on it
    (for ``--gpu-mapping cgroup``; on a GPU in MIG mode, those of all its MIG devices),
    ``"lost": true`` makes the GPU vanish (as after an Xid error) until removed, another
    ``"model"`` puts a GPU of that model in its slot (same UUID, new constraints), and
    ``"migDevices": ["1g.10gb", ...]`` puts the GPU in MIG mode with one MIG device per entry
    (the profile names are labels; the UUIDs are :func:`fake_mig_uuid` of the entry's place).
    The fake notices the change at its next call.

    ``load_path`` is a JSON object ``{GPU uuid: watts}``: what the workload on each GPU would
    draw uncapped. A GPU reports ``min(limit, load)``, or its model's idle power without an
    entry; the file is re-read when it changes.
    """

    def __init__(
        self,
        node_name: str,
        spec: FakeGpuSpec,
        state_path: Path | None = None,
        load_path: Path | None = None,
    ) -> None:
        self._node_name = node_name
        self._state_file = _WatchedFile(state_path) if state_path is not None else None
        self._load_file = _WatchedFile(load_path) if load_path is not None else None
        self._gpus: dict[str, _FakeGpuState] = {}
        self._errors: dict[tuple[str, str | None], tuple[NvmlErrorKind, int | None]] = {}
        self._file_faults: dict[tuple[str, str], NvmlErrorKind] = {}
        self._mig_parents: dict[str, str] = {}
        self._loads: dict[str, float] = {}
        self._load_problem: str | None = None
        for index in range(spec.count):
            uuid = fake_gpu_uuid(node_name, index)
            gpu = Gpu(uuid=uuid, index=index, model=spec.model.name, constraints=spec.model.constraints)
            self._gpus[uuid] = _FakeGpuState(gpu=gpu, limit_watts=spec.model.constraints.default_watts)
        self._idle_watts = spec.model.idle_watts
        self._load()
        self._save()

    def _load(self) -> None:
        """Take limits and faults from the state file; an unreadable file changes nothing."""
        if self._state_file is None:
            return
        self._state_file.mark_read()
        try:
            raw = json.loads(self._state_file.path.read_text())
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
            profiles = item.get("migDevices")
            state.mig_profiles = (
                [str(profile) for profile in profiles] if isinstance(profiles, list) else None
            )
            item_faults = item.get("faults")
            if isinstance(item_faults, dict):
                for operation, kind in item_faults.items():
                    if kind in NvmlErrorKind.__members__.values():
                        faults[(str(operation), state.gpu.uuid)] = NvmlErrorKind(kind)
        self._file_faults = faults
        self._index_mig_devices()

    def _index_mig_devices(self) -> None:
        self._mig_parents = {
            fake_mig_uuid(self._node_name, state.gpu.index, position): state.gpu.uuid
            for state in self._gpus.values()
            for position in range(len(state.mig_profiles or ()))
        }

    def _read_loads(self) -> None:
        """Take the workloads' uncapped draw from the load file; keep the last good one if unreadable."""
        if self._load_file is None or not self._load_file.changed():
            return
        self._load_file.mark_read()
        path = self._load_file.path
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as error:
            self._report_load_problem(f"unreadable ({error}); keeping the previous loads")
            return
        if not isinstance(raw, dict):
            self._report_load_problem("not a JSON object {uuid: watts}; keeping the previous loads")
            return
        loads: dict[str, float] = {}
        ignored: list[str] = []
        for uuid, watts in raw.items():
            if (
                uuid in self._gpus
                and isinstance(watts, int | float)
                and not isinstance(watts, bool)
                and watts >= 0
            ):
                loads[uuid] = float(watts)
            else:
                ignored.append(str(uuid))
        self._loads = loads
        self._report_load_problem(
            f"entries ignored (no such GPU, or not watts >= 0): {ignored}" if ignored else None
        )

    def _report_load_problem(self, problem: str | None) -> None:
        if problem is not None and problem != self._load_problem:
            log.warning("event=fake_gpu_load_invalid path=%s problem=%r", self._load_path_text(), problem)
        self._load_problem = problem

    def _load_path_text(self) -> str:
        return str(self._load_file.path) if self._load_file is not None else "-"

    def _refresh(self) -> None:
        if self._state_file is not None and self._state_file.changed():
            self._load()

    def _save(self) -> None:
        if self._state_file is None:
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
            if state.mig_profiles is not None:
                entry["migDevices"] = list(state.mig_profiles)
            gpus.append(entry)
        write_json_atomically(self._state_file.path, gpus, indent=2)
        self._state_file.mark_read()

    # -- error injection and hardware changes, for tests and the demo

    def inject_error(
        self, operation: str, kind: NvmlErrorKind, uuid: str | None = None, times: int | None = None
    ) -> None:
        self._errors[(operation, uuid)] = (kind, times)

    def clear_errors(self) -> None:
        self._errors.clear()

    def set_running_pids(self, uuid: str, pids: list[int]) -> None:
        self._state(uuid, "processes").pids = list(pids)

    def set_mig_devices(self, uuid: str, profiles: Sequence[str] | None) -> list[str]:
        """Partition a GPU into MIG devices (None: MIG mode off); returns their UUIDs."""
        state = self._state(uuid, "mig")
        state.mig_profiles = None if profiles is None else list(profiles)
        self._index_mig_devices()
        self._save()
        return [fake_mig_uuid(self._node_name, state.gpu.index, i) for i in range(len(profiles or ()))]

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
            raise NvmlError(
                NvmlErrorKind.INVALID_ARGUMENT,
                "set",
                uuid,
                f"{watts} W outside {constraints.min_watts}..{constraints.max_watts} W",
            )
        state.limit_watts = watts
        self._save()

    def power_usage_watts(self, uuid: str) -> float:
        self._maybe_fail("usage", uuid)
        state = self._state(uuid, "usage")
        self._read_loads()
        load = self._loads.get(uuid)
        return self._idle_watts if load is None else min(float(state.limit_watts), load)

    def running_pids(self, uuid: str) -> list[int]:
        self._maybe_fail("processes", uuid)
        return list(self._state(uuid, "processes").pids)

    def physical_gpu(self, device_uuid: str) -> str | None:
        self._refresh()
        parent = self._mig_parents.get(device_uuid)
        if parent is not None:
            self._maybe_fail("mig", parent)
        uuid = parent or device_uuid
        state = self._gpus.get(uuid)
        return uuid if state is not None and not state.lost else None


# ---------------------------------------------------------------------------
# The real NVML


def _error_kind(code: int) -> NvmlErrorKind:
    import pynvml

    return {
        pynvml.NVML_ERROR_NO_PERMISSION: NvmlErrorKind.NO_PERMISSION,
        pynvml.NVML_ERROR_NOT_SUPPORTED: NvmlErrorKind.NOT_SUPPORTED,
        pynvml.NVML_ERROR_GPU_IS_LOST: NvmlErrorKind.GPU_LOST,
        pynvml.NVML_ERROR_UNINITIALIZED: NvmlErrorKind.UNINITIALIZED,
        pynvml.NVML_ERROR_INVALID_ARGUMENT: NvmlErrorKind.INVALID_ARGUMENT,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED: NvmlErrorKind.DRIVER_NOT_LOADED,
    }.get(code, NvmlErrorKind.OTHER)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def constraints_from_milliwatts(min_mw: int, max_mw: int, default_mw: int) -> GpuConstraints:
    """Whole watts the GPU accepts: the minimum rounded up, the maximum down, so every cap fits NVML.

    A GPU whose limits are not whole watts (NVML reports milliwatts) would otherwise be sent
    a cap just outside its range, which NVML refuses.
    """
    low, high = math.ceil(min_mw / 1000), math.floor(max_mw / 1000)
    return GpuConstraints(low, high, min(max(round(default_mw / 1000), low), high))


def limit_from_milliwatts(milliwatts: int) -> int:
    """A limit read back, rounded up: a GPU holding a fraction of a watt above its cap gets it set again."""
    return math.ceil(milliwatts / 1000)


MIG_PARENT_CACHE_SIZE = 4096


class RealNvml:
    """The host's GPUs through pynvml (nvidia-ml-py)."""

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        self._handles: dict[str, Any] = {}
        self._gpus: list[Gpu] = []
        # A MIG device's parent never changes (a re-created MIG device gets a new UUID): asked once.
        self._mig_parents: dict[str, str] = {}
        self._unanswered: dict[int, str] = {}
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlError(_error_kind(error.value), "init", None, str(error)) from error
        try:
            self._scan()
        except NvmlError:
            self.shutdown()
            raise

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
            log.info("event=nvml_reinitialised gpus=%d", count)
        handles: dict[str, Any] = {}
        gpus: list[Gpu] = []
        unanswered: dict[int, str] = {}
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                name = _text(pynvml.nvmlDeviceGetName(handle))
                min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                default_mw = pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
            except pynvml.NVMLError as error:
                unanswered[index] = f"{_error_kind(error.value).value}: {error}"
                continue
            handles[uuid] = handle
            gpus.append(Gpu(uuid, index, name, constraints_from_milliwatts(min_mw, max_mw, default_mw)))
        self._report_unanswered(unanswered)
        self._handles = handles
        self._gpus = gpus

    def _report_unanswered(self, unanswered: dict[int, str]) -> None:
        """Say once when a GPU stops answering the scan (it is left out) and once when it answers again."""
        for index, problem in sorted(unanswered.items()):
            if self._unanswered.get(index) != problem:
                log.warning("event=gpu_unanswered index=%d error=%r action=left_out", index, problem)
        for index in sorted(self._unanswered.keys() - unanswered.keys()):
            log.info("event=gpu_answers_again index=%d", index)
        self._unanswered = unanswered

    def _handle(self, operation: str, uuid: str) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            raise NvmlError(NvmlErrorKind.GPU_LOST, operation, uuid, "no such GPU")
        return handle

    def _call(self, operation: str, uuid: str, fn: Any, *args: Any, handle: Any = None) -> Any:
        try:
            return fn(self._handle(operation, uuid) if handle is None else handle, *args)
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
        return limit_from_milliwatts(self._call("get", uuid, self._nvml.nvmlDeviceGetPowerManagementLimit))

    def set_power_limit_watts(self, uuid: str, watts: int) -> None:
        self._call("set", uuid, self._nvml.nvmlDeviceSetPowerManagementLimit, watts * 1000)

    def power_usage_watts(self, uuid: str) -> float:
        return float(self._call("usage", uuid, self._nvml.nvmlDeviceGetPowerUsage)) / 1000.0

    def running_pids(self, uuid: str) -> list[int]:
        """NVML's compute processes; in MIG mode the GPU's handle answers for all its MIG devices.

        That aggregate needs privileges the agent has (``CAP_SYS_ADMIN``); where NVML still
        refuses it, each MIG device is asked in turn.
        """
        pynvml = self._nvml
        try:
            processes = self._call("processes", uuid, pynvml.nvmlDeviceGetComputeRunningProcesses)
        except NvmlError as error:
            if error.kind is not NvmlErrorKind.NO_PERMISSION or not self._mig_enabled(uuid):
                raise
            processes = [
                process
                for handle in self._mig_handles(uuid)
                for process in self._call(
                    "processes", uuid, pynvml.nvmlDeviceGetComputeRunningProcesses, handle=handle
                )
            ]
        return list(dict.fromkeys(int(process.pid) for process in processes))

    def _mig_enabled(self, uuid: str) -> bool:
        pynvml = self._nvml
        try:
            current, _pending = self._call("mig", uuid, pynvml.nvmlDeviceGetMigMode)
        except NvmlError as error:
            if error.kind is NvmlErrorKind.NOT_SUPPORTED:  # a GPU without MIG
                return False
            raise
        return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)

    def _mig_handles(self, uuid: str) -> list[Any]:
        pynvml = self._nvml
        handles: list[Any] = []
        for index in range(self._call("mig", uuid, pynvml.nvmlDeviceGetMaxMigDeviceCount)):
            try:
                handles.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(self._handle("mig", uuid), index))
            except pynvml.NVMLError as error:
                if error.value != pynvml.NVML_ERROR_NOT_FOUND:  # NOT_FOUND: no MIG device in that slot
                    raise NvmlError(_error_kind(error.value), "mig", uuid, str(error)) from error
        return handles

    def physical_gpu(self, device_uuid: str) -> str | None:
        if device_uuid in self._handles:
            return device_uuid
        parent = self._mig_parents.get(device_uuid)
        if parent is None and device_uuid.startswith("MIG-"):
            parent = self._ask_mig_parent(device_uuid)
        return parent if parent in self._handles else None

    def _ask_mig_parent(self, mig_uuid: str) -> str | None:
        pynvml = self._nvml
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(mig_uuid)
            if not pynvml.nvmlDeviceIsMigDeviceHandle(handle):
                return None
            parent = _text(
                pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle))
            )
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_NOT_FOUND:
                return None
            raise NvmlError(_error_kind(error.value), "mig", mig_uuid, str(error)) from error
        if len(self._mig_parents) >= MIG_PARENT_CACHE_SIZE:
            self._mig_parents.clear()
        self._mig_parents[mig_uuid] = parent
        return parent

    def shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            return
