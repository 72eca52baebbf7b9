"""The tests' side of the stand-in ``libnvidia-ml.so.1`` (``nvmlstub.c``): build it, write and read its GPUs.

The library keeps its GPUs in a text file named by ``$NVML_STUB_STATE`` (the format is
described at the top of ``nvmlstub.c``); this module is the only Python that reads or
writes it. Edits hold the same ``flock`` as the library, so neither loses the other's.
A process finds the library the way pynvml looks for the real one,
``CDLL("libnvidia-ml.so.1")``, through ``LD_LIBRARY_PATH`` (see :func:`stub_env`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpupower_agent.nvml import GpuModel

STUB_DIR = Path(__file__).resolve().parent
SOURCE = STUB_DIR / "nvmlstub.c"
LIBRARY = STUB_DIR / "build" / "libnvidia-ml.so.1"
REPO = STUB_DIR.parents[1]

# What NVML calls the GPUs of the fake's models.
PRODUCT_NAMES = {
    "h100-sxm": "NVIDIA H100 80GB HBM3",
    "h100-pcie": "NVIDIA H100 PCIe",
    "a100-sxm": "NVIDIA A100-SXM4-80GB",
    "a100-pcie": "NVIDIA A100-PCIE-40GB",
    "l40s": "NVIDIA L40S",
}
MIG_CAPABLE = {"h100-sxm", "h100-pcie", "a100-sxm", "a100-pcie"}


def library() -> Path:
    """The built stand-in library (``make nvmlstub`` builds it when missing or older than its source)."""
    if not LIBRARY.exists() or LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
        result = subprocess.run(
            ["make", "-s", "-C", str(REPO), "nvmlstub"], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the NVML stand-in failed:\n{result.stdout}{result.stderr}")
    return LIBRARY


def stub_env(state_path: Path) -> dict[str, str]:
    """Environment for a process that should load the stand-in instead of the real NVML."""
    search = [str(library().parent)]
    if os.environ.get("LD_LIBRARY_PATH"):
        search.append(os.environ["LD_LIBRARY_PATH"])
    return {"LD_LIBRARY_PATH": os.pathsep.join(search), "NVML_STUB_STATE": str(state_path)}


@dataclass
class StubMig:
    uuid: str
    profile: str
    pids: list[int] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)


@dataclass
class StubGpu:
    uuid: str
    name: str
    min_mw: int
    max_mw: int
    default_mw: int
    limit_mw: int
    idle_mw: int
    load_mw: int | None = None
    lost: bool = False
    mig: str = "unsupported"  # or "disabled", "enabled"
    pids: list[int] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    migs: list[StubMig] = field(default_factory=list)

    @property
    def limit_watts(self) -> float:
        return self.limit_mw / 1000

    @classmethod
    def of_model(cls, uuid: str, model: GpuModel) -> StubGpu:
        constraints = model.constraints
        return cls(
            uuid=uuid,
            name=PRODUCT_NAMES[model.name],
            min_mw=constraints.min_watts * 1000,
            max_mw=constraints.max_watts * 1000,
            default_mw=constraints.default_watts * 1000,
            limit_mw=constraints.default_watts * 1000,
            idle_mw=round(model.idle_watts * 1000),
            mig="disabled" if model.name in MIG_CAPABLE else "unsupported",
        )


@dataclass
class StubState:
    gpus: list[StubGpu]
    generation: int = 0
    init_failures: int = 0
    init_error: str = "driver_not_loaded"


def _pids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_state(text: str) -> StubState:
    state = StubState(gpus=[])
    gpu: StubGpu | None = None
    mig: StubMig | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[gpu]":
            gpu, mig = StubGpu("", "", 0, 0, 0, 0, 0), None
            state.gpus.append(gpu)
            continue
        if line == "[mig]":
            assert gpu is not None, "a [mig] section before any [gpu]"
            mig = StubMig("", "")
            gpu.migs.append(mig)
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        target: StubGpu | StubMig | None = mig or gpu
        if key.startswith("fault.") and target is not None:
            target.faults[key.removeprefix("fault.")] = value
        elif key == "pids" and target is not None:
            target.pids = _pids(value)
        elif mig is not None:
            setattr(mig, key, value)
        elif gpu is not None:
            if key in ("uuid", "name", "mig"):
                setattr(gpu, key, value)
            elif key == "lost":
                gpu.lost = value not in ("", "0")
            else:
                setattr(gpu, key, int(value))
        elif key == "init_error":
            state.init_error = value
        else:
            setattr(state, key, int(value))
    return state


def format_state(state: StubState) -> str:
    lines = [
        "# NVML stand-in state (tests/nvmlstub): read and written by the tests and the library",
        f"generation = {state.generation}",
        f"init_failures = {state.init_failures}",
        f"init_error = {state.init_error}",
    ]
    for gpu in state.gpus:
        lines += [
            "",
            "[gpu]",
            f"uuid = {gpu.uuid}",
            f"name = {gpu.name}",
            f"min_mw = {gpu.min_mw}",
            f"max_mw = {gpu.max_mw}",
            f"default_mw = {gpu.default_mw}",
            f"limit_mw = {gpu.limit_mw}",
            f"idle_mw = {gpu.idle_mw}",
        ]
        if gpu.load_mw is not None:
            lines.append(f"load_mw = {gpu.load_mw}")
        lines += [f"lost = {int(gpu.lost)}", f"mig = {gpu.mig}", f"pids = {','.join(map(str, gpu.pids))}"]
        lines += [f"fault.{op} = {kind}" for op, kind in gpu.faults.items()]
        for mig in gpu.migs:
            lines += ["[mig]", f"uuid = {mig.uuid}", f"profile = {mig.profile}"]
            lines += [f"pids = {','.join(map(str, mig.pids))}"]
            lines += [f"fault.{op} = {kind}" for op, kind in mig.faults.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_state(path: Path, state: StubState) -> None:
    with _locked(path):
        _replace(path, state)


def _replace(path: Path, state: StubState) -> None:
    tmp = path.with_name(path.name + ".edit")
    tmp.write_text(format_state(state))
    tmp.replace(path)


def read_state(path: Path) -> StubState:
    return parse_state(path.read_text())


def edit_state(path: Path, change: Callable[[StubState], None]) -> StubState:
    """Read, change and write the state under the library's lock; returns the new state."""
    with _locked(path):
        state = read_state(path)
        change(state)
        _replace(path, state)
    return state
