"""Generate the CustomResourceDefinitions (GpuPowerBudget, GpuPowerDomain) from the pydantic models.

``python -m gpupower_api.crd [DIR]`` writes one CRD per kind into DIR (``make
crds`` runs it with ``crds/``); a test regenerates them and fails on any
difference with ``crds/``.

The pydantic JSON Schema is rewritten into a structural OpenAPI v3 schema as
Kubernetes wants it: references inlined, ``anyOf: [X, null]`` folded into X,
exclusive bounds turned into OpenAPI 3.0 form, titles dropped, maps kept as
``additionalProperties`` schemas, and the CEL rules the models carry
(``x-kubernetes-validations``) kept.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gpupower_api import domains, profilerun
from gpupower_api.models import GROUP, KIND, PLURAL, SHORT_NAME, SINGULAR, VERSION, BudgetSpec, BudgetStatus

_KEEP = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {key: _resolve(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one resolved JSON Schema node into a structural OpenAPI v3 node."""
    node = dict(node)
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            options = [opt for opt in node.pop(combinator) if opt.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express {combinator} with {len(options)} non-null options")
            node = {**options[0], **node}
    if "allOf" in node:
        for part in node.pop("allOf"):
            node = {**part, **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", "") is None:
        del node["default"]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            value = node.pop(bound)
            if node.get("type") == "integer":
                node[plain] = value + 1 if plain == "minimum" else value - 1
            else:
                node[plain] = value
                node[bound] = True
    out: dict[str, Any] = {key: value for key, value in node.items() if key in _KEEP}
    # A map (dict[str, X]) keeps its value schema; ``additionalProperties: false`` (extra="forbid")
    # is not structural, and the API server prunes unknown fields anyway.
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"])
    if "properties" in out:
        out["properties"] = {name: _structural(sub) for name, sub in out["properties"].items()}
        if not out.get("required"):
            out.pop("required", None)
    if "items" in out:
        out["items"] = _structural(out["items"])
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _with_condition_map(schema: dict[str, Any]) -> dict[str, Any]:
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _budget_spec_schema() -> dict[str, Any]:
    schema = model_schema(BudgetSpec)
    targets = schema["properties"]["targets"]
    # A list keyed by name: the API server rejects duplicate target names, and
    # server-side apply merges targets by name.
    targets["x-kubernetes-list-type"] = "map"
    targets["x-kubernetes-list-map-keys"] = ["name"]
    return schema


PRINTER_COLUMNS = [
    {"name": "Budget", "type": "integer", "jsonPath": ".spec.totalWatts", "description": "Budget in watts"},
    {"name": "Planned", "type": "number", "jsonPath": ".status.plannedWatts", "description": "Planned watts"},
    {
        "name": "Enforced",
        "type": "number",
        "jsonPath": ".status.enforcedWatts",
        "description": "Watts the GPUs can hold at most, as the agents report",
    },
    {
        "name": "Observed",
        "type": "number",
        "jsonPath": ".status.observedWatts",
        "description": "Observed watts",
    },
    {
        "name": "Replicas",
        "type": "string",
        "jsonPath": ".status.replicas",
        "description": "Planned/desired replicas over all targets",
    },
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

DOMAIN_PRINTER_COLUMNS = [
    {"name": "Limit", "type": "integer", "jsonPath": ".spec.totalWatts", "description": "Limit in watts"},
    {
        "name": "Committed",
        "type": "number",
        "jsonPath": ".status.committedWatts",
        "description": "Watts committed outside budgets: idle, unmanaged and other domains' GPUs",
    },
    {
        "name": "Allocated",
        "type": "number",
        "jsonPath": ".status.allocatedWatts",
        "description": "Watts allocated to the budgets under the domain",
    },
    {
        "name": "Budgets",
        "type": "integer",
        "jsonPath": ".status.budgets",
        "description": "Budgets that draw from the domain itself",
    },
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes", "description": "Nodes in the domain"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus", "description": "GPUs on those nodes"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_name: str,
    scope: str,
    description: str,
    columns: list[dict[str, str]],
    spec: dict[str, Any],
    status: dict[str, Any],
    validations: list[Any] | None = None,
) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if validations:
        root["x-kubernetes-validations"] = validations
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            # Argo CD: create the CRD before any object of its kind in the same sync.
            "annotations": {"argocd.argoproj.io/sync-wave": "-1"},
            "labels": {"app.kubernetes.io/name": "gpupower", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": [short_name],
                "categories": ["gpupower"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The GpuPowerBudget CustomResourceDefinition as a dict."""
    return _crd(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_name=SHORT_NAME,
        scope="Namespaced",
        description="A power budget for the GPUs of a set of inference worker roles.",
        columns=PRINTER_COLUMNS,
        spec=_budget_spec_schema(),
        status=_with_condition_map(model_schema(BudgetStatus)),
    )


def build_domain_crd() -> dict[str, Any]:
    """The GpuPowerDomain CustomResourceDefinition as a dict (cluster-scoped)."""
    extra = domains.GpuPowerDomain.model_config.get("json_schema_extra")
    validations = extra.get("x-kubernetes-validations") if isinstance(extra, dict) else None
    return _crd(
        kind=domains.KIND,
        plural=domains.PLURAL,
        singular=domains.SINGULAR,
        short_name=domains.SHORT_NAME,
        scope="Cluster",
        description="One power limit for all GPUs on a set of nodes (rack, row, hall), shared by budgets.",
        columns=DOMAIN_PRINTER_COLUMNS,
        spec=model_schema(domains.DomainSpec),
        status=_with_condition_map(model_schema(domains.DomainStatus)),
        validations=list(validations) if isinstance(validations, list) else None,
    )


# The file each CRD is written to under crds/: how it is built, and the module of its models.
RUN_PRINTER_COLUMNS = [
    {"name": "Budget", "type": "string", "jsonPath": ".spec.budget"},
    {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
    {"name": "Pod", "type": "string", "jsonPath": ".status.pod"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Level",
        "type": "integer",
        "jsonPath": ".status.currentLevel",
        "description": "Index of the cap measured now",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_profile_run_crd() -> dict[str, Any]:
    """The GpuPowerProfileRun CustomResourceDefinition as a dict."""
    return _crd(
        kind=profilerun.RUN_KIND,
        plural=profilerun.RUN_PLURAL,
        singular=profilerun.RUN_SINGULAR,
        short_name=profilerun.RUN_SHORT_NAME,
        scope="Namespaced",
        description=(
            "A sweep of one pod of a budget's target through per-GPU caps, measuring its profile; "
            "deleting it cancels the sweep."
        ),
        columns=RUN_PRINTER_COLUMNS,
        spec=model_schema(profilerun.RunSpec),
        status=_with_condition_map(model_schema(profilerun.RunStatus)),
    )


CRDS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    f"{PLURAL}.yaml": (build_crd, "models.py"),
    f"{domains.PLURAL}.yaml": (build_domain_crd, "domains.py"),
    f"{profilerun.RUN_PLURAL}.yaml": (build_profile_run_crd, "profilerun.py"),
}


def _header(models: str) -> str:
    source = f"api/gpupower_api/{models}"
    return f"# Generated by `make crds` (python -m gpupower_api.crd) from {source}. Do not edit.\n"


def render(filename: str = f"{PLURAL}.yaml") -> str:
    """The text of one CRD file (by its name under crds/)."""
    build, models = CRDS[filename]
    return _header(models) + str(yaml.safe_dump(build(), sort_keys=False, width=100))


# ---------------------------------------------------------------------------
# GpuPowerProfileRun: a measurement of one target's profile on the live fleet (api/gpupower_api/profilerun.py)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stdout.write("---\n".join(render(name) for name in CRDS))
        return 0
    directory = Path(args[0])
    for name in CRDS:
        (directory / name).write_text(render(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
