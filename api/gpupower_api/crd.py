"""Generate the GpuPowerBudget CustomResourceDefinition from the pydantic models.

``python -m gpupower_api.crd [PATH]`` writes the CRD (``make crds`` runs it);
a test regenerates it and fails on any difference with ``crds/``.

The pydantic JSON Schema is rewritten into a structural OpenAPI v3 schema as
Kubernetes wants it: references inlined, ``anyOf: [X, null]`` folded into X,
exclusive bounds turned into OpenAPI 3.0 form, titles dropped, and the CEL
rules the models carry (``x-kubernetes-validations``) kept.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gpupower_api import profilerun
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


def _status_schema() -> dict[str, Any]:
    schema = model_schema(BudgetStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _spec_schema() -> dict[str, Any]:
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


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            # Argo CD: create the CRD before any GpuPowerBudget in the same sync.
            "annotations": {"argocd.argoproj.io/sync-wave": "-1"},
            "labels": {"app.kubernetes.io/name": "gpupower", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["gpupower"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A power budget for the GPUs of a set of inference worker roles.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated by `make crds` (python -m gpupower_api.crd) from api/gpupower_api/models.py. Do not edit.\n"
)


def render() -> str:
    return HEADER + str(yaml.safe_dump(build_crd(), sort_keys=False, width=100))


# ---------------------------------------------------------------------------
# GpuPowerProfileRun: a measurement of one target's profile on the live fleet (api/gpupower_api/profilerun.py)

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
    """The GpuPowerProfileRun CRD as a dict: the budget's, with its own names, columns and schema."""
    crd = copy.deepcopy(build_crd())
    status = model_schema(profilerun.RunStatus)
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    crd["metadata"]["name"] = f"{profilerun.RUN_PLURAL}.{GROUP}"
    crd["spec"]["names"] = {
        "kind": profilerun.RUN_KIND,
        "listKind": f"{profilerun.RUN_KIND}List",
        "plural": profilerun.RUN_PLURAL,
        "singular": profilerun.RUN_SINGULAR,
        "shortNames": [profilerun.RUN_SHORT_NAME],
        "categories": ["gpupower"],
    }
    version = crd["spec"]["versions"][0]
    version["additionalPrinterColumns"] = RUN_PRINTER_COLUMNS
    schema = version["schema"]["openAPIV3Schema"]
    schema["description"] = (
        "A sweep of one pod of a budget's target through per-GPU caps, measuring its profile; "
        "deleting it cancels the sweep."
    )
    schema["properties"]["spec"] = model_schema(profilerun.RunSpec)
    schema["properties"]["status"] = status
    return crd


RUN_HEADER = (
    "# Generated by `make crds` (python -m gpupower_api.crd --kind gpupowerprofileruns) from "
    "api/gpupower_api/profilerun.py. Do not edit.\n"
)


def render_profile_runs() -> str:
    return RUN_HEADER + str(yaml.safe_dump(build_profile_run_crd(), sort_keys=False, width=100))


# Which CRD ``--kind`` renders (the default: GpuPowerBudget).
RENDERERS = {"gpupowerprofileruns": render_profile_runs}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    renderer = render
    if args[:1] == ["--kind"] and len(args) >= 2:
        renderer = RENDERERS[args[1]]
        args = args[2:]
    text = renderer()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
