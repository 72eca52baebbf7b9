"""`gpupower profile ...`: turn benchmark results into a target's profile.

``gpupower profile import [--format F] [--unit U] WATTS=FILE|FILE ... [-o yaml|json]
[--into BUDGET --target T]`` prints the profile block (``{unit, points: [{watts, throughput}]}``) or writes
it into a target of a budget file in place. Bad input exits 1 with one line
naming the file and the field.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml
from rich.console import Console

from gpupower_api.contract import MAX_CAP_WATTS
from gpupower_operator import budgetfile, profile_import, profiles
from gpupower_operator.profile_import import Format, Measurement, ResultFileError, Unit

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
