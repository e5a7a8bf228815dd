"""``deconv2shuffle batch IN_DIR OUT_DIR``: convert a folder."""

from __future__ import annotations

import gc
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import handle_errors, to_flags
from ._options import (
    AcceptGuessesOpt,
    AllowGlobalOpt,
    AllowMissingOpt,
    ApproxOpt,
    DropOpt,
    DropUnexpectedOpt,
    ExampleInputsOpt,
    InputShapeOpt,
    JsonOpt,
    NoHashOpt,
    RenameOpt,
    SourceArgsOpt,
    SourceModelOpt,
    SpecOpt,
    StateKeyOpt,
    TargetArgsOpt,
    TargetModelOpt,
    ToleranceOpt,
    TrustOpt,
    parse_ints,
    parse_rename,
    parse_shard,
)

NAME = "batch"
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@handle_errors
def command(
    in_dir: Annotated[Path, typer.Argument(help="Folder of checkpoints (and .onnx models).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the converted files (mirrors IN_DIR).")],
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    glob: Annotated[
        list[str] | None,
        typer.Option("--glob", help="File pattern (repeatable); default: all checkpoint types and *.onnx."),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 1,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Redo up-to-date outputs; replace outputs (and a report) this batch did not write."
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="I/N, 0-based (0 <= I < N): take a deterministic 1/N of the files."),
    ] = None,
    approx: ApproxOpt = False,
    to: Annotated[str, typer.Option("--to", help="Output format: same, safetensors or pth.")] = "same",
    rename: RenameOpt = None,
    drop: DropOpt = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    input_shape: InputShapeOpt = None,
    example_inputs: ExampleInputsOpt = None,
    accept_guesses: AcceptGuessesOpt = False,
    allow_missing: AllowMissingOpt = False,
    drop_unexpected: DropUnexpectedOpt = False,
    tolerance: ToleranceOpt = 1e-10,
    no_hash: NoHashOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Convert and verify every file, write no checkpoint.")
    ] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write per-file results as JSON.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert every checkpoint in a folder; a spec per run, or a sidecar NAME.toml beside each file.

    ONNX models (.onnx) need no spec: each becomes OUT_DIR/NAME.onnx, as with migrate.
    Ctrl-C or SIGTERM stops at once, keeps the finished outputs and prints the command to resume."""
    from ..pipeline import run_batch
    from ..pipeline.batch import CHECKPOINT_PATTERNS
    from . import _render

    chosen = parse_shard(shard)
    shape = parse_ints(input_shape, "--input-shape", positive=True) or None
    _render.set_width_for_pipes()
    with _render.batch_progress_hooks() as (on_start, on_file):
        result = run_batch(
            in_dir,
            out_dir,
            spec=spec,
            source_model=source_model,
            target_model=target_model,
            source_args=source_args,
            target_args=target_args,
            patterns=glob or CHECKPOINT_PATTERNS,
            recursive=recursive,
            jobs=jobs,
            force=force,
            shard=chosen,
            approx=approx,
            to=to,
            trust_pickle=trust_pickle,
            allow_globals=allow_global or [],
            state_dict_key=state_dict_key,
            rename=parse_rename(rename),
            drop=drop or [],
            tolerance=tolerance,
            input_shape=shape,
            example_inputs=example_inputs,
            accept_guesses=accept_guesses,
            allow_missing=allow_missing,
            drop_unexpected=drop_unexpected,
            hash_source=not no_hash,
            dry_run=dry_run,
            report_path=report,
            on_start=on_start,
            on_file=lambda r: on_file(replace(r, status="converted") if r.status == "checked" else r),  # "ok"
        )
    _render.batch_summary(result, json_out=json_out)
    for note in [] if json_out else result.notes:
        _render.say(f"note: {to_flags(note)}")
    if dry_run and not json_out:
        _render.say(f"dry run: {result.count('checked')} checked, no checkpoint written")
    if result.stopped_by is not None:
        left = result.count("interrupted")
        _render.error(
            f"interrupted by {result.stopped_by}: {result.count('converted')} converted, {left} not done "
            "(no partial output was left)" + (f"; report: {report}" if report is not None else "")
        )
        _render.error(f"to resume: {resume_command(dict(locals()), report)}")
        gc.freeze()  # nothing is left to collect: exit without sweeping every tensor and module (seconds)
        raise typer.Exit(EXIT_CODES.get(result.stopped_by, 130))
    if not result.ok:
        raise typer.Exit(1)


# the options that a resumed run repeats, as (parameter, flag); the arguments come first
_FLAGS = [
    ("spec", "--spec"),
    ("source_model", "--source-model"),
    ("source_args", "--source-args"),
    ("target_model", "--target-model"),
    ("target_args", "--target-args"),
    ("glob", "--glob"),
    ("recursive", "--recursive"),
    ("jobs", "--jobs"),
    ("shard", "--shard"),
    ("approx", "--approx"),
    ("to", "--to"),
    ("rename", "--rename"),
    ("drop", "--drop"),
    ("state_dict_key", "--state-dict-key"),
    ("trust_pickle", "--trust-pickle"),
    ("allow_global", "--allow-global"),
    ("input_shape", "--input-shape"),
    ("example_inputs", "--example-inputs"),
    ("accept_guesses", "--accept-guesses"),
    ("allow_missing", "--allow-missing"),
    ("drop_unexpected", "--drop-unexpected"),
    ("tolerance", "--tolerance"),
    ("no_hash", "--no-hash"),
    ("dry_run", "--dry-run"),
    ("json_out", "--json"),
]
_DEFAULTS: dict[str, Any] = {"jobs": 1, "to": "same", "tolerance": 1e-10}


def resume_command(params: dict[str, Any], report: Path | None) -> str:
    """The command that converts what an interrupted batch left: the same one, without ``--force``
    (what is done now has its record and is skipped), and with a report file that is still free."""
    argv = ["deconv2shuffle", "batch", str(params["in_dir"]), str(params["out_dir"])]
    for name, flag in _FLAGS:
        value = params.get(name)
        if value is None or value is False or value == [] or _DEFAULTS.get(name) == value:
            continue
        if value is True:
            argv.append(flag)
        else:
            for item in value if isinstance(value, list) else [value]:
                argv += [flag, str(item)]
    if report is not None:
        argv += ["--report", str(_free_name(report))]
    return shlex.join(argv)


def _free_name(path: Path) -> Path:
    """``r.json`` -> ``r.2.json`` (or the first of ``r.3.json``... that does not exist)."""
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1
