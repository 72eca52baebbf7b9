"""The GpuPowerProfileRun API (gpupower.dev/v1alpha1): measure one target's profile on the live fleet.

A run asks the operator to sweep one replica (pod) of a budget's target
through a list of per-GPU caps while the real workload runs, and to record,
level by level, what that replica serves when it is saturated. Deleting the
run cancels it: the pod goes back on the plan at once. The CRD in ``crds/``
is generated from these models (``make crds``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from gpupower_api.contract import MAX_CAP_WATTS
from gpupower_api.models import (
    DNS_LABEL,
    ApiModel,
    Condition,
    InvalidSpecError,
    Profile,
    StatusModel,
    cel,
    describe_validation_error,
)

RUN_KIND = "GpuPowerProfileRun"
RUN_PLURAL = "gpupowerprofileruns"
RUN_SINGULAR = "gpupowerprofilerun"
RUN_SHORT_NAME = "gpr"

MAX_LEVELS = 32
# Placeholders a query may use; the operator fills them in for the measured pod and the hold.
QUERY_PLACEHOLDERS = ("$namespace", "$pod", "$window")


class RunSpec(ApiModel):
    """What to measure: which budget's target, at which caps, for how long at each."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.capsWatts.all(c, self.capsWatts.exists_one(d, d == c))",
                    "capsWatts must not repeat a cap",
                    ".capsWatts",
                ),
                cel("self == oldSelf", "a run's spec cannot change: delete the run and create another"),
            ]
        }
    )

    budget: str = Field(
        min_length=1,
        max_length=253,
        description="The GpuPowerBudget (in the run's namespace) to measure under.",
    )
    target: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="The budget's target whose profile to measure.",
    )
    caps_watts: list[Annotated[int, Field(ge=1, le=MAX_CAP_WATTS)]] = Field(
        min_length=1,
        max_length=MAX_LEVELS,
        description="Per-GPU caps to measure at, in watts, in the order given.",
    )
    settle_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Seconds to wait at each cap, once the pod's GPUs hold it, before the hold starts.",
    )
    hold_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Seconds over which throughput, power and saturation are read at each cap.",
    )
    pod: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="The replica to measure; omitted: the operator picks a running pod of the target.",
    )
    saturation_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL that is above 0 while the pod is saturated ($namespace, $pod); "
        "omitted: the engine's waiting requests (the target's preset).",
    )
    throughput_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL giving the pod's throughput in the profile's unit over $window ($namespace, "
        "$pod); omitted: the target's preset.",
    )

    @field_validator("caps_watts")
    @classmethod
    def _caps_unique(cls, caps: list[int]) -> list[int]:
        for index, cap in enumerate(caps):
            if cap in caps[:index]:
                raise ValueError(f"capsWatts[{index}] ({cap} W) repeats a cap")
        return caps


class RunPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class LevelPhase(StrEnum):
    PENDING = "Pending"
    GRANTING = "Granting"  # the cap is granted to the pod; waiting for its GPUs to hold it
    SETTLING = "Settling"  # the GPUs hold it; waiting settleSeconds
    HOLDING = "Holding"  # reading over holdSeconds
    RECORDED = "Recorded"  # saturated throughout: a point of the profile
    UNSATURATED = "Unsaturated"  # not saturated throughout the hold: left out
    OVER_BUDGET = "OverBudget"  # the budget cannot hold this cap and the rest of the fleet: skipped
    CAP_NOT_HELD = "CapNotHeld"  # the pod's GPUs did not hold the cap in time: skipped
    NO_DATA = "NoData"  # Prometheus had no throughput for the pod: left out
    SKIPPED = "Skipped"  # the run ended (failed) before this level

    @property
    def done(self) -> bool:
        return self not in (LevelPhase.PENDING, LevelPhase.GRANTING, LevelPhase.SETTLING, LevelPhase.HOLDING)


class LevelStatus(StatusModel):
    """One cap of the sweep: where it is, and what was read there."""

    cap_watts: int = Field(description="The per-GPU cap of this level, in watts.")
    phase: LevelPhase = Field(
        default=LevelPhase.PENDING,
        description="Pending, Granting, Settling, Holding, Recorded, Unsaturated, OverBudget, CapNotHeld, "
        "NoData or Skipped.",
    )
    granted_at: str | None = Field(
        default=None, description="When the cap was granted to the pod (RFC 3339)."
    )
    held_at: str | None = Field(default=None, description="When the pod's GPUs were seen holding it.")
    hold_started_at: str | None = Field(default=None, description="Start of the reading window.")
    ended_at: str | None = Field(default=None, description="When the level ended.")
    throughput: float | None = Field(
        default=None, description="What the pod served over the hold, in the profile's unit."
    )
    observed_watts: float | None = Field(
        default=None, description="Mean power per GPU of the pod over the hold (DCGM), in watts."
    )
    samples: int | None = Field(default=None, description="Saturation samples taken over the hold.")
    saturated_samples: int | None = Field(default=None, description="Of those, the ones that were saturated.")
    saturation: float | None = Field(
        default=None, description="Lowest value of the saturation query over the hold (saturated when > 0)."
    )
    message: str | None = Field(default=None, description="Why the level ended as it did, for people.")


class RunStatus(StatusModel):
    """Observed state of a run: its phase, each level, and the measured profile."""

    observed_generation: int | None = Field(default=None, description="The generation this status is for.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard Kubernetes conditions.")
    phase: RunPhase = Field(default=RunPhase.PENDING, description="Pending, Running, Succeeded or Failed.")
    pod: str | None = Field(default=None, description="The pod being measured.")
    node: str | None = Field(default=None, description="The node the pod runs on.")
    gpus: int | None = Field(default=None, description="GPUs of the pod (the target's gpusPerReplica).")
    unit: str | None = Field(default=None, description="The profile's unit of throughput.")
    start_time: str | None = Field(default=None, description="When the sweep started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the sweep ended (RFC 3339).")
    current_level: int | None = Field(default=None, description="Index in levels of the cap being measured.")
    levels: list[LevelStatus] = Field(default_factory=list, description="Every cap of the sweep, in order.")
    profile: Profile | None = Field(
        default=None, description="The measured profile (source Measured): the recorded levels, by watts."
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def parse_run_spec(raw: dict[str, Any], prefix: str = "spec") -> RunSpec:
    """Validate a raw run spec; raise :class:`InvalidSpecError` naming the field on failure."""
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as error:
        raise describe_validation_error(error, prefix) from None


def parse_run_status(raw: object) -> RunStatus:
    """A run's stored status, or an empty one when there is none (or it cannot be read)."""
    if not isinstance(raw, dict) or not raw:
        return RunStatus()
    try:
        return RunStatus.model_validate(raw)
    except ValidationError:
        return RunStatus()


__all__ = [
    "MAX_LEVELS",
    "QUERY_PLACEHOLDERS",
    "RUN_KIND",
    "RUN_PLURAL",
    "RUN_SHORT_NAME",
    "RUN_SINGULAR",
    "InvalidSpecError",
    "LevelPhase",
    "LevelStatus",
    "RunPhase",
    "RunSpec",
    "RunStatus",
    "parse_run_spec",
    "parse_run_status",
]
