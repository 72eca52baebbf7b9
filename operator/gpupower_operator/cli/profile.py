"""`gpupower profile ...`: turn benchmark results, or a sweep on the live fleet, into a target's profile.

``gpupower profile import [--format F] [--unit U] WATTS=FILE|FILE ... [-o yaml|json]
[--into BUDGET --target T]`` prints the profile block (``{unit, points: [{watts, throughput}]}``) or writes
it into a target of a budget file in place. ``gpupower profile measure`` asks
the operator to sweep one replica of a target through caps (a
GpuPowerProfileRun), follows it, and prints or writes the measured profile the
same way. Bad input exits 1 with one line naming the file, flag or field.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import aiohttp
import typer
import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from rich.console import Console
from rich.table import Table

from gpupower_api.contract import MAX_CAP_WATTS
from gpupower_api.models import API_VERSION, GROUP, PLURAL, VERSION, InvalidSpecError, Mode
from gpupower_api.profilerun import (
    RUN_KIND,
    RUN_PLURAL,
    LevelPhase,
    LevelStatus,
    RunPhase,
    RunStatus,
    parse_run_spec,
    parse_run_status,
)
from gpupower_operator.adapters.kube import load_configuration
from gpupower_operator.cli import budgetfile, profile_import
from gpupower_operator.cli.profile_import import Format, Measurement, ResultFileError, Unit
from gpupower_operator.core import profiles, sweep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Profiles: what one replica of a role serves at each per-GPU cap.",
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ProfileOutput(StrEnum):
    YAML = "yaml"
    JSON = "json"


class ProfileInputError(Exception):
    """Bad input; the message names the file, flag or field."""


def _fail(message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code=1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ProfileInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProfileInputError(f"{path}: is a directory, expected a result file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileInputError(f"{path}: cannot read: {error}") from None


def _argument(item: str) -> tuple[float | None, Path]:
    """``WATTS=FILE`` or ``FILE``; a path with ``=`` in it is a file when the part before is no number."""
    watts_text, sep, path_text = item.partition("=")
    if sep and watts_text.strip():
        try:
            watts = float(watts_text)
        except ValueError:
            return None, Path(item)
        if not path_text:
            raise ProfileInputError(f"{item!r}: expected WATTS=FILE, the file is missing")
        if not 1 <= watts <= MAX_CAP_WATTS:
            raise ProfileInputError(f"{item!r}: the cap must be within 1..{MAX_CAP_WATTS} W, got {watts:g}")
        return watts, Path(path_text)
    return None, Path(item)


def measurements(items: list[str], format: Format) -> list[tuple[float | None, Measurement]]:
    """Every run in the files named, with the cap the command line gave for it (if any)."""
    found: list[tuple[float | None, Measurement]] = []
    for item in items:
        watts, path = _argument(item)
        runs = profile_import.parse(str(path), _read(path), format)
        if watts is not None and len(runs) > 1:
            raise ProfileInputError(
                f"{path}: holds {len(runs)} runs, so one cap on the command line cannot be all of theirs; "
                "record each run's cap in the file"
            )
        found.extend((watts, run) for run in runs)
    return found


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@app.command("import")
def import_command(
    results: Annotated[
        list[str],
        typer.Argument(
            help="Result files, one per cap: WATTS=FILE, or FILE when the file records the GPU power limit.",
            show_default=False,
        ),
    ],
    format: Annotated[Format, typer.Option("--format", help="Tool that wrote the files.")] = Format.AUTO,
    unit: Annotated[
        Unit, typer.Option("--unit", help="Throughput to take, and the profile's unit.")
    ] = Unit.REQUESTS,
    output: Annotated[
        ProfileOutput, typer.Option("--output", "-o", help="Output format.")
    ] = ProfileOutput.YAML,
    into: Annotated[
        Path | None, typer.Option("--into", help="Write the profile into this budget file, in place.")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="With --into: the target whose profile to replace.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="With --into: the budget, when the file holds several.")
    ] = None,
) -> None:
    """Read benchmark results (vLLM, AIPerf, GenAI-Perf or CSV) into a profile: one point per power cap."""
    try:
        if (target is not None or name is not None) and into is None:
            raise ProfileInputError("--target and --name go with --into")
        runs = measurements(results, format)
        found = profile_import.points(runs, unit)
        result = profile_import.profile(found, unit)
        document = profile_import.profile_document(result)
        for _, run in runs:
            for warning in run.warnings:
                err.print(f"warning: {warning}", markup=False)
        for point in found:
            err.print(f"{point.watts:g} W: {point.throughput:g} {unit}  ({point.source})", markup=False)
        note = profiles.note(target, result)
        if note is not None:
            err.print(f"note: {note}", markup=False)
        if into is not None:
            edited = budgetfile.with_profile(str(into), _read(into), document, target, name)
            _write_atomically(into, edited)
            err.print(
                f"wrote the profile into {into}" + (f" (target {target})" if target else ""), markup=False
            )
            return
    except (ProfileInputError, ResultFileError, budgetfile.BudgetFileError, ValueError) as error:
        _fail(str(error))
    if output is ProfileOutput.JSON:
        out.print(json.dumps(document, indent=2), markup=False)
    else:
        out.print(yaml.safe_dump(document, sort_keys=False).rstrip(), markup=False)
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# gpupower profile measure: ask the operator to sweep one pod through caps on the live fleet


class MeasureError(Exception):
    """A measurement that cannot start or did not succeed; the message says why, naming the field."""


def caps_option(text: str) -> list[int]:
    """``250,350,450`` -> [250, 350, 450], naming the bad item."""
    caps: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdecimal() or not 1 <= int(item) <= MAX_CAP_WATTS:
            raise ProfileInputError(f"--caps: {item!r} is not a cap within 1..{MAX_CAP_WATTS} W")
        caps.append(int(item))
    return caps


def run_document(
    namespace: str,
    budget: str,
    target: str,
    caps: list[int],
    settle_seconds: int,
    hold_seconds: int,
    pod: str | None,
    saturation_query: str | None,
    throughput_query: str | None,
    name: str | None,
) -> dict[str, Any]:
    """The GpuPowerProfileRun to create, validated here first so that a bad flag is named at once."""
    raw: dict[str, Any] = {
        "budget": budget,
        "target": target,
        "capsWatts": caps,
        "settleSeconds": settle_seconds,
        "holdSeconds": hold_seconds,
    }
    for key, value in (
        ("pod", pod),
        ("saturationQuery", saturation_query),
        ("throughputQuery", throughput_query),
    ):
        if value is not None:
            raw[key] = value
    spec = parse_run_spec(raw)
    metadata: dict[str, Any] = {"namespace": namespace}
    if name is not None:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{budget}-{target}-"[:58]
    return {
        "apiVersion": API_VERSION,
        "kind": RUN_KIND,
        "metadata": metadata,
        "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def level_line(level: LevelStatus, unit: str) -> str:
    """One line of progress for a level."""
    text = f"{level.cap_watts} W: {level.phase}"
    if level.phase is LevelPhase.RECORDED and level.throughput is not None:
        text += f" {level.throughput:g} {unit}"
    if level.message and level.phase.done:
        text += f" ({level.message})"
    return text


def curve_table(status: RunStatus) -> Table:
    """The sweep as a table: every level, what was read there, and whether it is a point of the profile."""
    unit = status.unit or "requests/s"
    table = Table(title=f"pod {status.pod}: throughput ({unit}) at each per-GPU cap", title_justify="left")
    for column in ("cap (W)", "level", f"throughput ({unit})", "drawn (W/GPU)", "saturated samples"):
        table.add_column(column, justify="right" if column != "level" else "left")
    for level in status.levels:
        samples = f"{level.saturated_samples}/{level.samples}" if level.samples is not None else "-"
        table.add_row(
            str(level.cap_watts),
            str(level.phase),
            "-" if level.throughput is None else f"{level.throughput:g}",
            "-" if level.observed_watts is None else f"{level.observed_watts:.0f}",
            samples,
        )
    return table


class RunClient:
    """The few API calls `profile measure` makes, with the user's credentials (kubeconfig or in-cluster)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    async def _call(self, path: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result = await self.api.call_api(
            path,
            method,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return dict(result or {})

    @staticmethod
    def _path(namespace: str, plural: str, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")

    async def budget(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self._path(namespace, PLURAL, name), "GET")

    async def create(self, document: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self._path(document["metadata"]["namespace"], RUN_PLURAL), "POST", document)

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(self._path(namespace, RUN_PLURAL, name), "GET")

    async def delete(self, namespace: str, name: str) -> None:
        await self._call(self._path(namespace, RUN_PLURAL, name), "DELETE")


def _api_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.reason))
    except (ValueError, TypeError, AttributeError):
        return str(error.reason)


def check_budget(body: dict[str, Any], budget: str, target: str) -> None:
    """Refuse at once what the operator would refuse: an Advisory budget, a target it does not have."""
    spec = body.get("spec") or {}
    if spec.get("mode") == Mode.ADVISORY.value:
        raise MeasureError(
            f"--budget: budget {budget} is Advisory: nothing is enforced under it, so no cap can be granted "
            "to measure; measure under an Enforce budget"
        )
    names = [str(t.get("name")) for t in spec.get("targets") or [] if isinstance(t, dict)]
    if target not in names:
        raise MeasureError(
            f"--target: budget {budget} has no target {target!r} (targets: {', '.join(names)})"
        )


async def measure(
    document: dict[str, Any], timeout_seconds: float, poll_seconds: float = 1.0
) -> tuple[str, RunStatus]:
    """Create the run, follow it to its end (progress on standard error), delete it if interrupted."""
    namespace = document["metadata"]["namespace"]
    spec = document["spec"]
    configuration = await load_configuration()
    api = ApiClient(configuration)
    client = RunClient(api)
    name: str | None = None
    try:
        try:
            check_budget(await client.budget(namespace, spec["budget"]), spec["budget"], spec["target"])
            created = await client.create(document)
        except ApiException as error:
            raise MeasureError(f"{namespace}/{spec['budget']}: {_api_message(error)}") from None
        name = str(created["metadata"]["name"])
        err.print(
            f"run {namespace}/{name}: measuring {spec['target']} of budget {spec['budget']}", markup=False
        )
        deadline = time.monotonic() + timeout_seconds
        said: dict[int, str] = {}
        while True:
            status = parse_run_status((await client.get(namespace, name)).get("status"))
            for index, level in enumerate(status.levels):
                line = level_line(level, status.unit or "requests/s")
                if said.get(index) != line and level.phase is not LevelPhase.PENDING:
                    err.print(line, markup=False)
                    said[index] = line
            if status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
                return name, status
            if time.monotonic() > deadline:
                await client.delete(namespace, name)
                raise MeasureError(f"run {name} did not end within {timeout_seconds:g}s; deleted it")
            await asyncio.sleep(poll_seconds)
    except (asyncio.CancelledError, KeyboardInterrupt):
        if name is not None:
            await client.delete(namespace, name)
            err.print(
                f"interrupted: deleted run {name}; the operator puts the pod back on the plan", markup=False
            )
        raise
    finally:
        await api.close()


def _run_measure(document: dict[str, Any], timeout_seconds: float) -> tuple[str, RunStatus]:
    try:
        return asyncio.run(measure(document, timeout_seconds))
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


@app.command("measure")
def measure_command(
    budget: Annotated[str, typer.Option("--budget", help="The Enforce budget to measure under.")],
    target: Annotated[str, typer.Option("--target", help="The budget's target whose profile to measure.")],
    caps: Annotated[str, typer.Option("--caps", help="Per-GPU caps to measure at, in watts: 250,350,450.")],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", envvar="GPUPOWER_NAMESPACE", help="The budget's namespace.")
    ] = "default",
    settle_seconds: Annotated[
        int, typer.Option("--settle-seconds", help="Wait at each cap, once it holds, before reading.")
    ] = 30,
    hold_seconds: Annotated[
        int, typer.Option("--hold-seconds", help="Read over this long at each cap.")
    ] = 60,
    pod: Annotated[
        str | None, typer.Option("--pod", help="The replica to measure (else one is picked).")
    ] = None,
    saturation_query: Annotated[
        str | None,
        typer.Option(
            "--saturation-query", help="PromQL above 0 while $pod is saturated (else the preset's)."
        ),
    ] = None,
    throughput_query: Annotated[
        str | None,
        typer.Option(
            "--throughput-query", help="PromQL: $pod's throughput over $window (else the preset's)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of the GpuPowerProfileRun.")] = None,
    timeout_seconds: Annotated[
        float, typer.Option("--timeout-seconds", help="Give up (and delete the run) after this long.")
    ] = 7200,
    output: Annotated[
        ProfileOutput, typer.Option("--output", "-o", help="Format of the profile block.")
    ] = ProfileOutput.YAML,
    into: Annotated[
        Path | None,
        typer.Option("--into", help="Write the measured profile into this budget file, in place."),
    ] = None,
) -> None:
    """Sweep one replica of a target through caps on the live fleet and print its measured profile."""
    try:
        document = run_document(
            namespace,
            budget,
            target,
            caps_option(caps),
            settle_seconds,
            hold_seconds,
            pod,
            saturation_query,
            throughput_query,
            name,
        )
        run_name, status = _run_measure(document, timeout_seconds)
        err.print(curve_table(status))
        complete = status.condition(sweep.COMPLETE)
        if status.phase is not RunPhase.SUCCEEDED or status.profile is None:
            why = f"{complete.reason}: {complete.message}" if complete is not None else str(status.phase)
            raise MeasureError(f"run {run_name} {status.phase}: {why}")
        profile_block = status.profile.model_dump(by_alias=True, exclude_none=True, mode="json")
        if into is not None:
            edited = budgetfile.with_profile(str(into), _read(into), profile_block, target, budget)
            _write_atomically(into, edited)
            err.print(f"wrote the measured profile into {into} (target {target})", markup=False)
    except InvalidSpecError as error:
        _fail(f"--{_flag(error.field)}: {error.errors[0][1]}")
    except (ProfileInputError, MeasureError, budgetfile.BudgetFileError) as error:
        _fail(str(error))
    except (OSError, ConfigException, aiohttp.ClientError) as error:
        _fail(f"cannot reach the cluster: {error}")
    if output is ProfileOutput.JSON:
        out.print(json.dumps(profile_block, indent=2), markup=False)
    else:
        out.print(yaml.safe_dump(profile_block, sort_keys=False).rstrip(), markup=False)
    sys.stdout.flush()


_FLAGS = {
    "capsWatts": "caps",
    "settleSeconds": "settle-seconds",
    "holdSeconds": "hold-seconds",
    "saturationQuery": "saturation-query",
    "throughputQuery": "throughput-query",
}


def _flag(field: str) -> str:
    """The command-line flag of a run spec field (``spec.capsWatts[1]`` -> ``caps``)."""
    key = field.removeprefix("spec.").split("[", 1)[0].split(".", 1)[0]
    return _FLAGS.get(key, key)
