"""``deconv2shuffle batch IN_DIR OUT_DIR``: convert a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import handle_errors
from ._options import (
    AllowGlobalOpt,
    ApproxOpt,
    JsonOpt,
    SourceArgsOpt,
    SourceModelOpt,
    SpecOpt,
    StateKeyOpt,
    TargetArgsOpt,
    TargetModelOpt,
    TrustOpt,
    parse_shard,
)

NAME = "batch"


@handle_errors
def command(
    in_dir: Annotated[Path, typer.Argument(help="Folder of checkpoints.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the converted checkpoints (mirrors IN_DIR).")],
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    glob: Annotated[
        list[str] | None, typer.Option("--glob", help="File pattern (repeatable); default: all checkpoint types.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Redo outputs that are already up to date.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="I/N: take a deterministic 1/N of the files.")] = None,
    approx: ApproxOpt = False,
    to: Annotated[str, typer.Option("--to", help="Output format: same, safetensors or pth.")] = "same",
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write per-file results as JSON.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert every checkpoint in a folder; a spec per run, or a sidecar NAME.toml beside each file."""
    from ..pipeline import run_batch
    from ..pipeline.batch import CHECKPOINT_PATTERNS
    from . import _render

    chosen = parse_shard(shard)
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
            report_path=report,
            on_start=on_start,
            on_file=on_file,
        )
    _render.batch_summary(result, json_out=json_out)
    if not result.ok:
        raise typer.Exit(1)
