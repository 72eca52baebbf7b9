"""What each managed pod is told about its GPUs: the ``gpupower.dev/PowerCapped`` condition, pure.

From what one reconcile decided and what NVML reads back afterwards, per pod:

- ``True``/``Capped``: every GPU of the pod holds at most the pod's trusted cap
  (exactly the cap, or the GPU's maximum when the cap is above it);
- ``True``/``Guarded``: the same, held lower by the draw guard of an
  oversubscribed budget (True: the GPUs hold less than the cap, and a readiness
  gate must not pull a replica out of its Service just when load peaks);
- ``False`` otherwise, with the first reason that applies, in this order:
  ``NvmlError`` (a GPU's limit cannot be read, or it does not hold what the agent
  set: the set failed and is being retried), ``Conflict`` (pods sharing a GPU
  disagree, so it holds the lowest safe default among them), ``SafeDefault``
  (the pod's cap cannot be trusted), ``AwaitingCap`` (no cap annotated yet),
  ``Clamped`` (the GPU accepts no limit as low as the cap), ``AwaitingDevices``
  (the pod asks for GPUs the kubelet has not allocated yet);
- a pod the agent reported on before and no longer manages gets
  ``False``/``Unmanaged``: its GPUs are no longer capped for it.

On a node in a power domain that sets ``unmanagedGpuWatts``, a pod no Enforce
budget manages whose GPUs the domain caps is told so: ``False``/``Unmanaged``
(no budget vouches for a cap; it is the domain that holds the GPUs), with what
its GPUs hold first, as for every other pod, so the watts are readable. Pods
awaiting their cap on a GPU the domain keeps parked, and pods under the safe
default whose GPUs the domain caps lower, say so in their message.

Every message starts with what the GPUs hold (``contract.power_capped_message``),
so the operator counts the watts the hardware holds. Messages carry nothing that
changes by itself (no times, no counters): a condition is patched only when what
it says changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gpupower_agent.cluster import PodKey, PodView
from gpupower_agent.policy import GpuDecision, Reason
from gpupower_agent.trust import PodCap, Verdict
from gpupower_api.contract import HeldWatts, PowerCappedReason, power_capped_message


@dataclass(frozen=True)
class PodCondition:
    """The PowerCapped condition one pod should carry."""

    status: bool
    reason: PowerCappedReason
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def _gpus_text(uuids: Collection[str], limits: Mapping[str, int | None]) -> str:
    return ", ".join(f"{uuid} {limits.get(uuid)} W" for uuid in uuids)


def _condition_on_gpus(
    cap: PodCap,
    uuids: tuple[str, ...],
    decisions: Mapping[str, GpuDecision],
    limits: Mapping[str, int | None],
    min_watts: Mapping[str, int],
) -> PodCondition:
    unreadable = [uuid for uuid in uuids if limits.get(uuid) is None]
    if unreadable:
        return PodCondition(
            False,
            PowerCappedReason.NVML_ERROR,
            f"the power limit of {', '.join(unreadable)} cannot be read; the cap is {cap.cap_watts} W",
        )
    held_watts = [limit for uuid in uuids if (limit := limits.get(uuid)) is not None]
    held = HeldWatts(len(uuids), max(held_watts))
    off = [
        uuid
        for uuid in uuids
        if (decision := decisions.get(uuid)) is not None
        and decision.target_watts is not None
        and limits.get(uuid) != decision.target_watts
    ]
    if off:
        wanted = ", ".join(f"{uuid} {decisions[uuid].target_watts} W" for uuid in off)
        return PodCondition(
            False,
            PowerCappedReason.NVML_ERROR,
            power_capped_message(held, f"setting the limit failed and is retried ({wanted} wanted)"),
        )
    conflicted = [
        uuid for uuid in uuids if (d := decisions.get(uuid)) is not None and d.reason is Reason.CONFLICT
    ]
    if conflicted:
        return PodCondition(
            False,
            PowerCappedReason.CONFLICT,
            power_capped_message(
                held,
                f"pods sharing {', '.join(conflicted)} disagree on the cap; "
                "the GPU holds the lowest safe default among them",
            ),
        )
    reasons = {d.reason for uuid in uuids if (d := decisions.get(uuid)) is not None}
    if cap.verdict is Verdict.UNTRUSTED:
        holds = (
            "its power domain caps the GPUs of pods no budget manages lower"
            if Reason.UNMANAGED_CAP in reasons
            else f"the GPUs hold {cap.cap_watts} W"
        )
        return PodCondition(
            False, PowerCappedReason.SAFE_DEFAULT, power_capped_message(held, f"{cap.detail}; {holds}")
        )
    if cap.verdict is Verdict.AWAITING_CAP:
        holds = (
            f"its power domain keeps the GPUs parked until it is (then at most {cap.cap_watts} W)"
            if Reason.AWAITING_CAP_PARKED in reasons
            else f"the GPUs hold {cap.cap_watts} W (the grant or the safe default)"
        )
        return PodCondition(
            False,
            PowerCappedReason.AWAITING_CAP,
            power_capped_message(held, f"no cap annotated yet; {holds}"),
        )
    guarding = [
        uuid for uuid in uuids if (d := decisions.get(uuid)) is not None and d.reason is Reason.GUARDED
    ]
    if guarding:
        return PodCondition(
            True,
            PowerCappedReason.GUARDED,
            power_capped_message(
                held,
                f"the draw guard of its oversubscribed budget holds {', '.join(guarding)} below the cap of "
                f"{cap.cap_watts} W while the budget's GPUs on this node draw more than their share",
            ),
        )
    above = [uuid for uuid in uuids if (limit := limits.get(uuid)) is not None and limit > cap.cap_watts]
    if above:
        lowest = ", ".join(f"{uuid} {min_watts.get(uuid)} W" for uuid in above)
        return PodCondition(
            False,
            PowerCappedReason.CLAMPED,
            power_capped_message(held, f"cap {cap.cap_watts} W is below what the GPU accepts ({lowest})"),
        )
    return PodCondition(
        True,
        PowerCappedReason.CAPPED,
        power_capped_message(held, f"cap {cap.cap_watts} W on {_gpus_text(uuids, limits)}"),
    )


NOT_CAPPED = "no Enforce budget manages this pod: its GPUs are not capped for it"


def _unmanaged(
    uuids: tuple[str, ...], decisions: Mapping[str, GpuDecision], limits: Mapping[str, int | None]
) -> PodCondition | None:
    """What a pod no budget manages is told when its power domain caps its GPUs (None: it does not)."""
    capped = [
        d for uuid in uuids if (d := decisions.get(uuid)) is not None and d.reason is Reason.UNMANAGED_CAP
    ]
    if not capped:
        return None
    watts = max(d.target_watts or 0 for d in capped)
    detail = f"no Enforce budget manages this pod; its power domain caps its GPUs at {watts} W"
    held_watts = [limits.get(uuid) for uuid in uuids]
    if any(limit is None for limit in held_watts):
        unreadable = ", ".join(uuid for uuid in uuids if limits.get(uuid) is None)
        return PodCondition(
            False, PowerCappedReason.UNMANAGED, f"{detail}; the power limit of {unreadable} cannot be read"
        )
    held = HeldWatts(len(uuids), max(limit for limit in held_watts if limit is not None))
    return PodCondition(False, PowerCappedReason.UNMANAGED, power_capped_message(held, detail))


def pod_conditions(
    pods: Collection[PodView],
    pod_caps: Mapping[PodKey, PodCap],
    on_gpu: Mapping[str, tuple[PodKey, ...]],
    decisions: Mapping[str, GpuDecision],
    limits: Mapping[str, int | None],
    min_watts: Mapping[str, int],
) -> dict[PodKey, PodCondition]:
    """The condition every managed pod should carry, and ``Unmanaged`` for pods this agent let go.

    ``on_gpu`` maps each GPU to the pods holding it (the GPU mapping), ``decisions``
    is this reconcile's decision per GPU, ``limits`` what each GPU holds after it
    (None: unreadable) and ``min_watts`` the lowest limit each GPU accepts.
    """
    gpus_of: dict[PodKey, list[str]] = {}
    for uuid, holders in on_gpu.items():
        for key in holders:
            gpus_of.setdefault(key, []).append(uuid)
    conditions: dict[PodKey, PodCondition] = {}
    for pod in pods:
        if pod.finished:
            continue
        cap = pod_caps.get(pod.key)
        if cap is None:
            unmanaged = _unmanaged(tuple(sorted(gpus_of.get(pod.key, ()))), decisions, limits)
            reported = pod.power_capped
            if unmanaged is not None or (reported is not None and reported.message != NOT_CAPPED):
                conditions[pod.key] = unmanaged or PodCondition(
                    False, PowerCappedReason.UNMANAGED, NOT_CAPPED
                )
            continue
        uuids = tuple(sorted(gpus_of.get(pod.key, ())))
        if uuids:
            conditions[pod.key] = _condition_on_gpus(cap, uuids, decisions, limits, min_watts)
        elif pod.requests_gpus:
            conditions[pod.key] = PodCondition(
                False,
                PowerCappedReason.AWAITING_DEVICES,
                "waiting for the kubelet to allocate the pod's GPUs; "
                f"they will hold at most {cap.cap_watts} W",
            )
        else:
            conditions[pod.key] = PodCondition(
                True, PowerCappedReason.CAPPED, power_capped_message(HeldWatts(0, 0), "the pod holds no GPU")
            )
    return conditions


def awaiting_devices(pods: Collection[PodView], on_gpu: Mapping[str, tuple[PodKey, ...]]) -> set[PodKey]:
    """Pods that ask for GPUs and are not found in the GPU mapping yet (not finished)."""
    mapped = {key for holders in on_gpu.values() for key in holders}
    return {pod.key for pod in pods if pod.requests_gpus and not pod.finished and pod.key not in mapped}


def stopped_conditions(
    decisions: Collection[GpuDecision], restored: Mapping[str, int]
) -> dict[PodKey, PodCondition]:
    """What the pods on GPUs the agent gave back their default limit (on exit) are told."""
    gpus_of: dict[PodKey, list[str]] = {}
    for decision in decisions:
        if decision.uuid in restored:
            for key in decision.pods:
                gpus_of.setdefault(key, []).append(decision.uuid)
    return {
        key: PodCondition(
            False,
            PowerCappedReason.AGENT_STOPPED,
            power_capped_message(
                HeldWatts(len(uuids), max(restored[uuid] for uuid in uuids)),
                "the agent stopped and gave the GPUs their default limit back",
            ),
        )
        for key, uuids in gpus_of.items()
    }
