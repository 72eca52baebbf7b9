"""The GpuPowerBudget API (gpupower.dev/v1alpha1) as pydantic models.

These models are the single source of truth: the CRD in ``crds/`` is generated
from them (``make crds``), the operator validates every object it reads with
them, and the agent reads budget status through them.
"""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from gpupower_api.contract import MAX_CAP_WATTS
from gpupower_api.presets import PresetShape, preset_points

GROUP = "gpupower.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GpuPowerBudget"
PLURAL = "gpupowerbudgets"
SINGULAR = "gpupowerbudget"
SHORT_NAME = "gpb"

MAX_TARGETS = 16
MAX_PROFILE_POINTS = 64
# A replica serving more than this per second, in any unit, is a broken measurement.
MAX_PROFILE_THROUGHPUT = 1e9
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(
    rule: str, message: str, field_path: str | None = None, message_expression: str | None = None
) -> JsonDict:
    """One ``x-kubernetes-validations`` entry; the generator copies it into the CRD."""
    entry: JsonDict = {"rule": rule, "message": message}
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class StatusModel(ApiModel):
    """Base for what the operator writes to a status: unknown fields are ignored, so that a status
    written by a newer operator still reads."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)


class Mode(StrEnum):
    ENFORCE = "Enforce"
    ADVISORY = "Advisory"


class Strategy(StrEnum):
    OPTIMIZE = "Optimize"
    PROPORTIONAL = "Proportional"


class WorkloadRef(ApiModel):
    """The workload a target scales: any kind with a /scale subresource."""

    api_version: str = Field(default="apps/v1", min_length=1, description="API version of the workload.")
    kind: str = Field(default="Deployment", min_length=1, description="Kind of the workload.")
    name: str = Field(min_length=1, description="Name of the workload in the budget's namespace.")


class CapRange(ApiModel):
    """The per-GPU power caps a target may be given, in watts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "capWatts.min must be <= capWatts.max", ".min")
            ]
        }
    )

    min: int = Field(gt=0, description="Lowest per-GPU cap in watts.")
    max: int = Field(gt=0, description="Highest per-GPU cap in watts.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class ProfilePoint(ApiModel):
    """Per-replica throughput measured at one per-GPU cap."""

    watts: float = Field(
        ge=1,
        le=MAX_CAP_WATTS,
        allow_inf_nan=False,
        description="Per-GPU cap in watts at which the throughput was measured.",
    )
    throughput: float = Field(
        ge=0,
        le=MAX_PROFILE_THROUGHPUT,
        allow_inf_nan=False,
        description="Throughput of one replica at that cap, in the profile's unit.",
    )


class ProfileSource(StrEnum):
    POINTS = "Points"
    PRESET = "Preset"
    MEASURED = "Measured"


_PRESET_FIELDS = ("peakThroughput", "maxWatts", "minWatts", "naturalWatts")


class Profile(ApiModel):
    """Per-replica throughput as a function of the per-GPU cap: measured points or a preset estimate."""

    # Points are linear between, flat beyond; a higher cap never serves less, so the
    # planner uses the highest throughput reached at or below each cap (points may dip).

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.points) != has(self.preset)",
                    "profile needs exactly one of points or preset",
                ),
                cel(
                    "!has(self.points) || (self.points.map(p, p.watts).isSorted()"
                    " && self.points.all(p, self.points.exists_one(q, q.watts == p.watts)))",
                    "profile.points must have strictly increasing watts",
                    ".points",
                ),
                cel(
                    "!has(self.preset) || (has(self.peakThroughput) && has(self.maxWatts))",
                    "profile.preset needs peakThroughput and maxWatts",
                    ".preset",
                ),
                cel(
                    "has(self.preset) || !("
                    + " || ".join(f"has(self.{name})" for name in _PRESET_FIELDS)
                    + ")",
                    "profile." + ", ".join(_PRESET_FIELDS) + " go with a preset",
                ),
                cel(
                    "!has(self.minWatts) || !has(self.maxWatts) || self.minWatts < self.maxWatts",
                    "profile.minWatts must be < maxWatts",
                    ".minWatts",
                ),
                cel(
                    "!has(self.naturalWatts) || (has(self.preset) && self.preset == 'decode')",
                    "profile.naturalWatts goes with the decode preset",
                    ".naturalWatts",
                ),
                cel(
                    "!has(self.naturalWatts) || ((!has(self.maxWatts) || self.naturalWatts <= self.maxWatts)"
                    " && (!has(self.minWatts) || self.naturalWatts >= self.minWatts))",
                    "profile.naturalWatts must be within minWatts..maxWatts",
                    ".naturalWatts",
                ),
                cel(
                    "!has(self.source) || (self.source == 'Preset') == has(self.preset)",
                    "profile.source Preset goes with a preset, Points and Measured with points",
                    ".source",
                ),
            ]
        }
    )

    unit: str = Field(default="requests/s", description="Unit of throughput and demand, e.g. tokens/s.")
    source: ProfileSource | None = Field(
        default=None,
        description="Where the profile came from: Points, Preset or Measured; omitted: Points or Preset.",
    )
    points: list[ProfilePoint] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROFILE_POINTS,
        description="Measured points, strictly increasing watts; throughput may dip (the plan raises it).",
    )
    preset: PresetShape | None = Field(
        default=None,
        description="An estimate instead of points: prefill (compute-bound) or decode (memory-bound).",
    )
    peak_throughput: float | None = Field(
        default=None,
        gt=0,
        le=MAX_PROFILE_THROUGHPUT,
        allow_inf_nan=False,
        description="Preset: throughput of one replica at maxWatts, in the profile's unit.",
    )
    max_watts: float | None = Field(
        default=None,
        ge=1,
        le=MAX_CAP_WATTS,
        allow_inf_nan=False,
        description="Preset: the GPU's highest power limit in watts, e.g. 700 for an H100 SXM.",
    )
    min_watts: float | None = Field(
        default=None,
        ge=1,
        le=MAX_CAP_WATTS,
        allow_inf_nan=False,
        description="Preset: lowest cap the estimate covers in watts; omitted means 2/7 of maxWatts.",
    )
    natural_watts: float | None = Field(
        default=None,
        ge=1,
        le=MAX_CAP_WATTS,
        allow_inf_nan=False,
        description="Decode preset: power decode draws uncapped, in watts; omitted means 3/7 of maxWatts.",
    )

    @field_validator("points")
    @classmethod
    def _ordered(cls, points: list[ProfilePoint] | None) -> list[ProfilePoint] | None:
        for index, (before, after) in enumerate(pairwise(points or []), start=1):
            if after.watts <= before.watts:
                raise ValueError(
                    f"points[{index}].watts ({after.watts:g}) must be greater than "
                    f"points[{index - 1}].watts ({before.watts:g})"
                )
        return points

    @model_validator(mode="after")
    def _points_or_preset(self) -> Self:
        preset_fields = {
            "peakThroughput": self.peak_throughput,
            "maxWatts": self.max_watts,
            "minWatts": self.min_watts,
            "naturalWatts": self.natural_watts,
        }
        if (self.points is None) == (self.preset is None):
            raise ValueError("needs exactly one of points or preset")
        if self.preset is None:
            given = [name for name, value in preset_fields.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} go with a preset, not with points")
        else:
            if self.peak_throughput is None or self.max_watts is None:
                raise ValueError("preset needs peakThroughput and maxWatts")
            if self.min_watts is not None and self.min_watts >= self.max_watts:
                raise ValueError(f"minWatts ({self.min_watts:g}) must be < maxWatts ({self.max_watts:g})")
            if self.natural_watts is not None:
                if self.preset is not PresetShape.DECODE:
                    raise ValueError("naturalWatts goes with the decode preset")
                low = self.min_watts if self.min_watts is not None else self.natural_watts
                if not low <= self.natural_watts <= self.max_watts:
                    raise ValueError(
                        f"naturalWatts ({self.natural_watts:g}) must be within minWatts..maxWatts"
                    )
        if self.source is not None and (self.source is ProfileSource.PRESET) != (self.preset is not None):
            raise ValueError("source Preset goes with a preset, Points and Measured with points")
        return self

    def curve(self) -> list[ProfilePoint]:
        """The points the planner reads: the measured ones, or the preset's estimate."""
        if self.points is not None:
            return list(self.points)
        if self.preset is None or self.peak_throughput is None or self.max_watts is None:
            raise ValueError("needs exactly one of points or preset")  # unreachable once validated
        return [
            ProfilePoint(watts=watts, throughput=throughput)
            for watts, throughput in preset_points(
                self.preset, self.peak_throughput, self.max_watts, self.min_watts, self.natural_watts
            )
        ]

    def origin(self) -> ProfileSource:
        """Where the profile came from: ``source`` when given, else Points or Preset."""
        if self.source is not None:
            return self.source
        return ProfileSource.PRESET if self.preset is not None else ProfileSource.POINTS


class Engine(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    DYNAMO = "dynamo"


class PresetMetric(StrEnum):
    REQUESTS = "requests"
    PROMPT_TOKENS = "prompt-tokens"
    GENERATION_TOKENS = "generation-tokens"
    TOKENS = "tokens"


class DemandPreset(ApiModel):
    """Demand from a serving engine's own metrics, scoped to the target's pods; no PromQL to write."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.engine != 'dynamo' || has(self.frontend)",
                    "preset.frontend is required for engine dynamo: the Deployment of the graph's frontend",
                    ".frontend",
                ),
                cel(
                    "self.engine == 'dynamo' || !has(self.frontend)",
                    "preset.frontend applies to engine dynamo only",
                    ".frontend",
                ),
            ]
        }
    )

    engine: Engine = Field(
        description="Serving engine whose metrics give the demand: vllm, sglang or dynamo."
    )
    metric: PresetMetric = Field(
        default=PresetMetric.REQUESTS,
        description="Counted in the profile's unit: requests, prompt-tokens, generation-tokens or tokens.",
    )
    window_seconds: int = Field(
        default=60, ge=5, le=3600, description="Rate window of the demand and latency queries in seconds."
    )
    frontend: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="dynamo only (required): the Deployment of the graph's frontend, whose pods export the "
        "dynamo_frontend_* series.",
    )

    @model_validator(mode="after")
    def _frontend_for_dynamo(self) -> Self:
        # A Dynamo graph's frontend, not its workers, exports the request and token series.
        if self.engine is Engine.DYNAMO and self.frontend is None:
            raise ValueError("frontend is required for engine dynamo: the Deployment of the graph's frontend")
        if self.engine is not Engine.DYNAMO and self.frontend is not None:
            raise ValueError(f"frontend applies to engine dynamo only, not {self.engine.value}")
        return self


class Sla(ApiModel):
    """Latency goals; a target missing them gets its effective capacity per replica corrected down."""

    ttft_seconds: float | None = Field(default=None, gt=0, description="Time-to-first-token goal in seconds.")
    inter_token_latency_seconds: float | None = Field(
        default=None, gt=0, description="Inter-token latency goal in seconds."
    )
    quantile: float = Field(
        default=0.9, gt=0, lt=1, description="Quantile of the latency histograms compared."
    )


class SecretKeyRef(ApiModel):
    """One key of a Secret in the budget's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret.")


class PrometheusSpec(ApiModel):
    """Where demand, latency and GPU power come from, and how often they are read."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.caSecretRef) && has(self.insecureSkipVerify) && self.insecureSkipVerify)",
                    "prometheus.caSecretRef and insecureSkipVerify are mutually exclusive",
                    ".insecureSkipVerify",
                )
            ]
        }
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus HTTP API; omitted means the operator's --prometheus-url.",
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a bearer token sent with every query."
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the PEM CA bundle that signs the server's certificate."
    )
    insecure_skip_verify: bool = Field(default=False, description="Do not verify the server's certificate.")
    timeout_seconds: float = Field(default=5, gt=0, le=120, description="Timeout of one query in seconds.")
    interval_seconds: int = Field(default=30, ge=1, le=3600, description="Seconds between two reads.")
    pod_label: str = Field(
        default="exported_pod", min_length=1, max_length=128, description="DCGM series label naming the pod."
    )
    namespace_label: str = Field(
        default="exported_namespace",
        min_length=1,
        max_length=128,
        description="DCGM series label naming the pod's namespace.",
    )
    failures_before_fallback: int = Field(
        default=3, ge=1, le=100, description="Consecutive failed reads before MetricsAvailable turns False."
    )
    drift_checks: int = Field(
        default=3, ge=1, le=100, description="Consecutive reads a correction must drift before a re-plan."
    )
    replan_interval_seconds: int = Field(
        default=120, ge=0, le=86400, description="Least seconds between two re-plans caused by corrections."
    )
    demand_stabilization_seconds: int = Field(
        default=120,
        ge=0,
        le=3600,
        description="Demand falls are followed only after lasting this long (rises at once).",
    )

    @model_validator(mode="after")
    def _tls_choice(self) -> Self:
        if self.ca_secret_ref is not None and self.insecure_skip_verify:
            raise ValueError("caSecretRef and insecureSkipVerify are mutually exclusive")
        return self


MAX_OVERSUBSCRIPTION_RATIO = 3.0


class Oversubscription(ApiModel):
    """Plan on what the GPUs draw, with more caps than watts, held by the agents' draw guard.

    The plan counts each GPU at cap x power factor (its planned draw) against
    ``totalWatts``, and lets the caps sum to at most ``totalWatts x maxRatio``.
    Every agent then guards its node's share: when the budget's GPUs there draw
    more than their planned draw for ``guardReadings`` readings in a row (one a
    second), it lowers their limits until the node draws ``guardTargetRatio`` of
    its share, and raises them again in steps once the draw has stayed under
    ``guardReleaseRatio`` of the share for ``guardHoldSeconds``.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.maxRatio >= 1.0 && self.maxRatio <= {MAX_OVERSUBSCRIPTION_RATIO}",
                    f"oversubscription.maxRatio must be between 1.0 and {MAX_OVERSUBSCRIPTION_RATIO:g}: the "
                    f"caps may sum to at most {MAX_OVERSUBSCRIPTION_RATIO:g} times totalWatts",
                    ".maxRatio",
                ),
                cel(
                    "self.guardReleaseRatio < self.guardTargetRatio",
                    "oversubscription.guardReleaseRatio must be below guardTargetRatio (the hysteresis)",
                    ".guardReleaseRatio",
                ),
            ]
        }
    )

    max_ratio: float = Field(
        description="Most the caps may sum to, as a multiple of totalWatts (1.0 to 3.0), e.g. 1.3."
    )
    guard_readings: int = Field(
        default=2, ge=1, le=10, description="Readings in a row above the share before the guard engages."
    )
    guard_target_ratio: float = Field(
        default=0.9, ge=0.5, le=0.99, description="The guard lowers limits to this fraction of the share."
    )
    guard_release_ratio: float = Field(
        default=0.8,
        ge=0.3,
        le=0.98,
        description="The guard releases once the draw stays below this fraction.",
    )
    guard_hold_seconds: float = Field(
        default=10, ge=1, le=3600, description="How long the draw must stay low before each release step."
    )
    guard_release_step_ratio: float = Field(
        default=0.25,
        ge=0.05,
        le=1,
        description="Each release step raises a limit by this fraction of its cap range.",
    )
    relax_seconds: int = Field(
        default=600,
        ge=60,
        le=86400,
        description="The operator plans with less oversubscription after guard engagements until this "
        "long without one.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if not 1.0 <= self.max_ratio <= MAX_OVERSUBSCRIPTION_RATIO:
            raise ValueError(
                f"maxRatio ({self.max_ratio:g}) must be between 1.0 and {MAX_OVERSUBSCRIPTION_RATIO:g}: the "
                f"caps may sum to at most {MAX_OVERSUBSCRIPTION_RATIO:g} times totalWatts"
            )
        if self.guard_release_ratio >= self.guard_target_ratio:
            raise ValueError(
                f"guardReleaseRatio ({self.guard_release_ratio:g}) must be below guardTargetRatio "
                f"({self.guard_target_ratio:g}) (the hysteresis)"
            )
        return self


class Target(ApiModel):
    """One worker role: its workload, its bounds, its power/throughput profile and its demand."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must be <= maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "!(has(self.demandQuery) && has(self.preset))",
                    "demandQuery and preset are mutually exclusive",
                    ".demandQuery",
                ),
                cel("!has(self.sla) || has(self.preset)", "sla needs a preset", ".sla"),
            ]
        }
    )

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the role.")
    workload_ref: WorkloadRef
    gpus_per_replica: int = Field(default=1, ge=1, le=64, description="GPUs each replica uses.")
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas the plan may give.")
    max_replicas: int = Field(ge=0, le=10000, description="Most replicas the plan may give.")
    cap_watts: CapRange | None = Field(
        default=None,
        description="Per-GPU cap range in watts; when omitted, the profile's first and last points.",
    )
    profile: Profile
    demand: float | None = Field(
        default=None, ge=0, description="Static demand in the profile's unit; omitted means none."
    )
    demand_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL giving one value, the demand in the profile's unit; overrides static demand.",
    )
    preset: DemandPreset | None = Field(
        default=None, description="Demand from the serving engine's metrics instead of a demandQuery."
    )
    sla: Sla | None = Field(default=None, description="Latency goals; needs a preset.")

    @model_validator(mode="after")
    def _replicas_ordered(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        return self

    @model_validator(mode="after")
    def _one_demand_source(self) -> Self:
        if self.demand_query is not None and self.preset is not None:
            raise ValueError("demandQuery and preset are mutually exclusive")
        if self.sla is not None and self.preset is None:
            raise ValueError("sla needs a preset (the latency histograms are the engine's)")
        return self

    def cap_range(self) -> CapRange:
        """The cap range the planner uses: ``capWatts`` or, without it, the profile's span."""
        if self.cap_watts is not None:
            return self.cap_watts
        curve = self.profile.curve()
        low = curve[0].watts
        high = curve[-1].watts
        return CapRange(min=max(1, round(low)), max=max(1, round(high)))


# A target's highest cap: capWatts.max, or without capWatts its profile's last point (as Target.cap_range).
_TARGET_CAP_MAX = (
    "(has(t.capWatts) ? double(t.capWatts.max) : has(t.profile.points)"
    " ? t.profile.points[size(t.profile.points) - 1].watts : t.profile.maxWatts)"
)


class DomainRef(ApiModel):
    """The GpuPowerDomain a budget draws its watts from."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the domain.")


class BudgetSpec(ApiModel):
    """Desired state: the power budget and the roles it covers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.targets.all(t, double(self.safeDefaultWatts) <= {_TARGET_CAP_MAX})",
                    "safeDefaultWatts must not be above any target's capWatts.max (without capWatts, its "
                    "profile's last watts): the safe default is a floor to fall back to, never a way above "
                    "a target's range",
                    ".safeDefaultWatts",
                ),
                cel(
                    "has(self.totalWatts) || has(self.domainRef)",
                    "totalWatts is required unless the budget joins a domain (domainRef)",
                    ".totalWatts",
                ),
                cel(
                    "!(has(self.oversubscription) && has(self.domainRef))",
                    "oversubscription cannot be combined with domainRef: a domain's limit is what its "
                    "breaker holds, so the caps of its GPUs must sum within it",
                    ".oversubscription",
                ),
            ]
        }
    )

    total_watts: int | None = Field(
        default=None,
        gt=0,
        description="Power budget in watts for all GPUs of all targets; in a domain, a bound on its share.",
    )
    domain_ref: DomainRef | None = Field(
        default=None, description="The GpuPowerDomain whose limit the budget shares with others."
    )
    priority: int = Field(
        default=0,
        ge=-(2**31),
        le=2**31 - 1,
        description="Order in which a domain allocates its budgets: higher first.",
    )
    mode: Mode = Field(
        default=Mode.ENFORCE, description="Enforce: annotate pods and scale; Advisory: status only."
    )
    strategy: Strategy = Field(default=Strategy.OPTIMIZE, description="Planning algorithm.")
    safe_default_watts: int = Field(
        gt=0, description="Per-GPU cap the agent applies when caps conflict or cannot be trusted."
    )
    cap_step_watts: int = Field(default=5, ge=1, le=1000, description="Grid step of planned caps in watts.")
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS)
    prometheus: PrometheusSpec | None = Field(
        default=None, description="Prometheus for demand, latency and observed GPU power."
    )
    oversubscription: Oversubscription | None = Field(
        default=None,
        description="Plan on the GPUs' observed draw, caps above totalWatts, held by the agents' guard; "
        "omitted: the caps' sum stays within totalWatts.",
    )

    @model_validator(mode="after")
    def _safe_default_within_ranges(self) -> Self:
        for index, target in enumerate(self.targets):
            # As the CEL rule reads it: capWatts.max, else the profile's last watts (unrounded).
            highest = (
                target.cap_watts.max if target.cap_watts is not None else target.profile.curve()[-1].watts
            )
            if self.safe_default_watts > highest:
                raise ValueError(
                    f"safeDefaultWatts ({self.safe_default_watts} W) must not be above "
                    f"targets[{index}].capWatts.max ({highest:g} W, target {target.name}): the safe default "
                    "is a floor to fall back to, never a way above a target's range"
                )
        return self

    @model_validator(mode="after")
    def _budget_or_domain(self) -> Self:
        if self.total_watts is None and self.domain_ref is None:
            raise ValueError("totalWatts is required unless the budget joins a domain (domainRef)")
        if self.oversubscription is not None and self.domain_ref is not None:
            raise ValueError(
                "oversubscription cannot be combined with domainRef: a domain's limit is what its breaker "
                "holds, so the caps of its GPUs must sum within it"
            )
        return self

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        for index, target in enumerate(targets):
            if target.name in seen:
                raise ValueError(f"targets[{index}].name {target.name!r} is used by another target")
            seen.add(target.name)
        return targets


# ---------------------------------------------------------------------------
# Status


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(description="Ready, TargetsResolved, BudgetBinding, Infeasible, Conflict, ...")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="One CamelCase word a program can branch on.",
    )
    message: str = Field(default="", description="What happened and what to do, for people.")
    observed_generation: int | None = Field(
        default=None, description="The budget's generation the condition was computed for."
    )
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )


class RaisedPoint(StatusModel):
    """A measured point below one at a lower cap, and the throughput the plan uses instead."""

    index: int = Field(description="Index of the point in profile.points.")
    watts: float = Field(description="The point's cap in watts.")
    throughput: float = Field(description="The throughput measured there.")
    used_throughput: float = Field(
        description="The throughput the plan uses there: the highest measured at or below that cap."
    )


class TargetMeasurement(StatusModel):
    """A cap granted to one pod of the target while a GpuPowerProfileRun measures it (the agent honours
    it for that pod only)."""

    pod: str = Field(description="The pod being measured.")
    cap_watts: int = Field(description="Per-GPU cap granted to that pod alone, in watts.")
    run: str = Field(description="The GpuPowerProfileRun measuring it.")


class TargetStatus(StatusModel):
    """The plan for one target and what was observed of it."""

    name: str = Field(description="The target's name in the spec.")
    selector: str | None = Field(default=None, description="Label selector of the workload's pods.")
    current_replicas: int | None = Field(default=None, description="Replicas the workload's /scale reports.")
    desired_replicas: int = Field(description="Replicas demand alone asks for at the max cap.")
    planned_replicas: int = Field(description="Replicas of the plan.")
    cap_watts: int = Field(description="Planned per-GPU cap in watts.")
    projected_watts: float = Field(description="Planned power of the target in watts.")
    capacity: float = Field(description="Planned throughput in the profile's unit.")
    demand: float | None = Field(default=None, description="Demand planned for, in the profile's unit.")
    served_fraction: float = Field(description="Capacity / demand, at most 1 (1 without demand).")
    pods_annotated: int = Field(default=0, description="Pods of the target that carry the planned cap.")
    pods_enforced: int = Field(
        default=0,
        description="Pods whose GPUs hold the planned cap, as their agents report it "
        "(the gpupower.dev/PowerCapped pod condition).",
    )
    enforced_watts: float | None = Field(
        default=None,
        description="What the target's GPUs can draw at most now: the planned cap on the GPUs of "
        "confirmed pods, the most the GPUs of the other pods can hold (W).",
    )
    caps_watts: float | None = Field(default=None, description="The target's planned caps summed (W).")
    gpu_draw_watts: float | None = Field(
        default=None, description="Oversubscribed: what one GPU is planned to draw (cap x power factor) (W)."
    )
    gpu_share_watts: float | None = Field(
        default=None,
        description="Oversubscribed: the draw guard's share per GPU: its planned draw scaled up so the "
        "shares sum to totalWatts, at most the cap (W).",
    )
    guard_engagements: int | None = Field(
        default=None, description="Oversubscribed: times the agents' draw guard engaged on the target's pods."
    )
    guarded_pods: int | None = Field(
        default=None, description="Oversubscribed: pods whose GPUs the draw guard holds below their cap now."
    )
    draw_factor_floor: float | None = Field(
        default=None,
        description="Oversubscribed: the least power factor planned with, raised after guard engagements.",
    )
    last_guard_engagement: str | None = Field(
        default=None, description="Oversubscribed: when the guard last engaged on the target (RFC 3339)."
    )
    observed_watts: float | None = Field(
        default=None, description="Power the target's GPUs draw (DCGM through Prometheus), in watts."
    )
    demand_source: str | None = Field(
        default=None, description="Where the demand came from: Prometheus, LastGood, Static, Status or None."
    )
    observed_throughput: float | None = Field(
        default=None, description="Throughput served, from the engine's metrics, in the profile's unit."
    )
    observed_ttft_seconds: float | None = Field(
        default=None, description="Observed TTFT quantile in seconds."
    )
    observed_inter_token_latency_seconds: float | None = Field(
        default=None, description="Observed inter-token latency quantile in seconds."
    )
    power_factor: float | None = Field(
        default=None, description="Correction used by the plan: observed watts per GPU / planned cap."
    )
    throughput_factor: float | None = Field(
        default=None, description="Correction used by the plan: real / profiled capacity, SLA included."
    )
    cap_range_min_watts: int | None = Field(
        default=None,
        description="Lowest per-GPU cap the plan could give: capWatts.min within what the nodes accept.",
    )
    cap_range_max_watts: int | None = Field(
        default=None,
        description="Highest per-GPU cap the plan could give: capWatts.max within what the nodes accept.",
    )
    cap_range_source: str | None = Field(
        default=None,
        description="Where the effective cap range came from: CapWatts, Profile, Nodes or CapWattsAndNodes.",
    )
    profile_source: str | None = Field(
        default=None, description="Where the target's profile came from: Points, Preset or Measured."
    )
    profile_adjusted: bool | None = Field(
        default=None,
        description="True when some measured points dip and the plan raised them (see profileRaisedPoints).",
    )
    profile_raised_points: list[RaisedPoint] | None = Field(
        default=None,
        description="Points the plan raised: a higher cap never serves less than a lower one.",
    )
    measurement: TargetMeasurement | None = Field(
        default=None,
        description="While a profile run measures one pod of the target: that pod and the cap it alone is "
        "granted (counted in projectedWatts).",
    )


class BudgetDomainStatus(StatusModel):
    """The budget's share of its domain: what the allocation gave it and why."""

    name: str = Field(description="The domain the budget draws from (spec.domainRef.name).")
    priority: int = Field(description="The budget's priority in the allocation (spec.priority).")
    allocated_watts: float | None = Field(
        default=None, description="Watts the domain allocates the budget: exactly what its plan needs."
    )
    limited_by: str | None = Field(
        default=None,
        description="Why: DemandServed, MaxReplicas, OwnLimit, DomainLimit, HigherPriority, InfeasibleFloor.",
    )
    bound_by: str | None = Field(
        default=None, description="The domain on the budget's chain whose limit bound its allocation."
    )
    message: str | None = Field(default=None, description="One line saying why, for people.")


class BudgetStatus(StatusModel):
    """Observed state: the plan, its totals and the conditions."""

    observed_generation: int | None = Field(default=None, description="The generation this status plans.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard Kubernetes conditions.")
    strategy: str | None = Field(default=None, description="The strategy the plan was made with.")
    budget_watts: int | None = Field(default=None, description="The budget planned for, in watts.")
    planned_watts: float | None = Field(default=None, description="Power of the plan, in watts.")
    enforced_watts: float | None = Field(
        default=None,
        description="What the targets' GPUs can draw at most now, from what the agents report they hold "
        "(the ENFORCED column of kubectl get gpb), in watts.",
    )
    caps_watts: float | None = Field(
        default=None, description="The planned caps summed over all targets' GPUs, in watts."
    )
    caps_limit_watts: float | None = Field(
        default=None,
        description="What the caps may sum to: totalWatts, or totalWatts x maxRatio when oversubscribed (W).",
    )
    planned_draw_watts: float | None = Field(
        default=None,
        description="What the plan expects the GPUs to draw (caps x power factors), in watts; within "
        "totalWatts when oversubscribed.",
    )
    observed_watts: float | None = Field(
        default=None, description="Power the targets' GPUs draw (DCGM through Prometheus), in watts."
    )
    utilization: float | None = Field(default=None, description="Planned watts / budget watts.")
    served_fraction: float | None = Field(
        default=None, description="Share of demand the plan serves: the least served target's."
    )
    replicas: str | None = Field(default=None, description="Planned/desired replicas over all targets.")
    reason: str | None = Field(default=None, description="One line saying why the plan is what it is.")
    targets: list[TargetStatus] = Field(default_factory=list, description="The plan per target.")
    domain: BudgetDomainStatus | None = Field(default=None, description="The budget's share of its domain.")

    def target(self, name: str) -> TargetStatus | None:
        return next((t for t in self.targets if t.name == name), None)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ApiObject(ApiModel):
    """A whole object of one of our kinds (apiVersion, kind, metadata) as read from the API or a file."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)
    KIND: ClassVar[str]

    api_version: str
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"must be {API_VERSION!r}, got {value!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != cls.KIND:
            raise ValueError(f"must be {cls.KIND!r}, got {value!r}")
        return value

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))


class GpuPowerBudget(ApiObject):
    """A whole GpuPowerBudget object as read from the API or a file."""

    KIND: ClassVar[str] = KIND

    spec: BudgetSpec
    status: BudgetStatus | None = None

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))


class InvalidSpecError(ValueError):
    """A budget that fails validation; ``field`` is the path of the first offending field."""

    def __init__(self, field: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.field = field
        self.errors = errors or [(field, message)]
        super().__init__(f"{field}: {message}")


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part and not part.startswith("function-"):
            path = f"{path}.{part}" if path else str(part)
    return path


Object = TypeVar("Object", bound=ApiObject)


def describe_validation_error(error: ValidationError, prefix: str = "") -> InvalidSpecError:
    """Turn a pydantic error into one naming the offending field, e.g. ``spec.targets[0].capWatts``."""
    errors: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = tuple(part for part in item["loc"] if not (isinstance(part, str) and "[" in part))
        message = str(item["msg"]).removeprefix("Value error, ")
        errors.append((_path(prefix, loc) or prefix or "object", message))
    field, message = errors[0]
    return InvalidSpecError(field, message, errors)


def parse_spec(raw: dict[str, Any], prefix: str = "spec") -> BudgetSpec:
    """Validate a raw spec dict; raise :class:`InvalidSpecError` naming the field on failure."""
    try:
        return BudgetSpec.model_validate(raw)
    except ValidationError as error:
        raise describe_validation_error(error, prefix) from None


def parse_object(model: type[Object], raw: dict[str, Any]) -> Object:
    """Validate a whole object (apiVersion, kind, spec); raise :class:`InvalidSpecError` on failure."""
    if not isinstance(raw, dict):
        raise InvalidSpecError("object", f"expected a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise describe_validation_error(error) from None


def parse_budget(raw: dict[str, Any]) -> GpuPowerBudget:
    """Validate a whole GpuPowerBudget; raise :class:`InvalidSpecError` naming the field on failure."""
    return parse_object(GpuPowerBudget, raw)
