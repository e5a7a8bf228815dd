"""``deconv2shuffle migrate OLD NEW``: convert one checkpoint."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import Deconv2ShuffleError, UsageError
from ._errors import handle_errors
from ._options import (
    AcceptGuessesOpt,
    AllowGlobalOpt,
    AllowMissingOpt,
    ApproxOpt,
    DropOpt,
    DropUnexpectedOpt,
    ExampleInputsOpt,
    ForceOpt,
    GeometryOpt,
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
    parse_geometry,
    parse_ints,
    parse_rename,
)

NAME = "migrate"
OUTPUT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pth.tar", ".safetensors", ".safetensors.index.json")


@handle_errors
def command(
    old: Annotated[Path, typer.Argument(help="Checkpoint trained with ConvTranspose layers.")],
    new: Annotated[Path | None, typer.Argument(help="Where to write the converted checkpoint.")] = None,
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    approx: ApproxOpt = False,
    rename: RenameOpt = None,
    drop: DropOpt = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    force: ForceOpt = False,
    input_shape: InputShapeOpt = None,
    example_inputs: ExampleInputsOpt = None,
    accept_guesses: AcceptGuessesOpt = False,
    allow_missing: AllowMissingOpt = False,
    drop_unexpected: DropUnexpectedOpt = False,
    tolerance: ToleranceOpt = 1e-10,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Convert and verify, write nothing.")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", metavar="FILE", help="Write the report as .json or .md.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every key and what happened to it.")] = False,
    no_hash: NoHashOpt = False,
    json_out: JsonOpt = False,
    geometry: GeometryOpt = "minimal",
) -> None:
    """Convert OLD into NEW: match layers, rewrite weights exactly, verify each layer, write atomically."""
    from ..pipeline import migrate
    from . import _render

    if new is None and not dry_run:
        raise typer.BadParameter("give NEW, or --dry-run to only check", param_hint="NEW")
    if _is_onnx(old):
        _migrate_onnx(old, None if dry_run else new, force=force, report=report, json_out=json_out)
        return
    if new is not None and not dry_run:
        _check_new(old, new)
    renames = parse_rename(rename)
    shape = parse_ints(input_shape, "--input-shape", positive=True) or None
    _render.set_width_for_pipes()
    with (
        _render.status(f"migrating {old}", enabled=not json_out),
        _draft_on_ambiguity(old, None if dry_run else new, (source_model, source_args, target_model, target_args)),
    ):
        result = migrate(
            old,
            None if dry_run else new,
            spec=spec,
            source_model=source_model,
            target_model=target_model,
            source_args=source_args,
            target_args=target_args,
            approx=approx,
            rename=renames,
            drop=drop or [],
            state_dict_key=state_dict_key,
            trust_pickle=trust_pickle,
            allow_globals=allow_global or [],
            force=force,
            tolerance=tolerance,
            geometry=parse_geometry(geometry),
            input_shape=shape,
            example_inputs=example_inputs,
            accept_guesses=accept_guesses,
            allow_missing=allow_missing,
            drop_unexpected=drop_unexpected,
            report_path=report,
            hash_source=not no_hash,
        )
    _render.migration(result, json_out=json_out, verbose=verbose, report_path=report)


@contextlib.contextmanager
def _draft_on_ambiguity(
    old: Path, new: Path | None, refs: tuple[str | None, str | None, str | None, str | None]
) -> Iterator[None]:
    """An ambiguous pairing writes a spec to edit beside NEW (or, checking only, in the current folder)."""
    from ..core.sources import AmbiguousPairingError
    from .spec import model_table, write_draft

    try:
        yield
    except AmbiguousPairingError as e:
        folder = new.parent if new is not None else Path(".")
        stem = (new or old).name.split(".")[0] or "migrate"
        with contextlib.suppress(OSError, Deconv2ShuffleError):  # the ambiguity is the error to see
            models = model_table(refs[0], refs[1], refs[2], refs[3], folder)
            path = write_draft(e, models, folder / f"{stem}.pairing.toml")
            e.args = (f"{e}; wrote a spec to edit: {path} (check each target, then pass --spec {path})",)
        raise


def _check_new(old: Path, new: Path) -> None:
    """NEW names a file whose extension says its format; a folder or another extension is refused (exit 2)."""
    try:
        is_dir = new.is_dir()
    except OSError as e:  # a name too long for the file system, a loop of links...: the writer names it
        is_dir = False
        if e.errno != errno.ENAMETOOLONG:
            raise UsageError(f"{new}: cannot use this output path ({e.strerror})") from None
    if is_dir:
        raise UsageError(
            f"{new}: is a folder, and NEW is the file to write (--force replaces files, never folders); "
            f"give a file name, e.g. {new / old.name}"
        )
    if not new.name.lower().endswith(OUTPUT_SUFFIXES):
        what = f"the extension {new.suffix!r}" if new.suffix else "a name without an extension"
        raise UsageError(
            f"{new}: the output format follows NEW's extension and cannot be told from {what}; name it "
            ".pth/.pt/.ckpt/.bin/.pth.tar (torch), .safetensors, or .safetensors.index.json (sharded safetensors)"
        )


def _is_onnx(old: Path) -> bool:
    """An ONNX model (sniffed from its bytes; the graph carries every hyperparameter, so no spec is needed)."""
    from ..onnx_graph import looks_like_onnx

    return old.is_file() and looks_like_onnx(old)


def _migrate_onnx(old: Path, new: Path | None, *, force: bool, report: Path | None, json_out: bool) -> None:
    """Rewrite an ONNX model's ConvTranspose nodes (``new=None``: list what would be rewritten)."""
    from ..onnx_graph import inspect_onnx, migrate_onnx
    from ..pipeline.files import publish_file
    from . import _render

    result = inspect_onnx(old) if new is None else migrate_onnx(old, new, force=force)
    if report is not None:
        text = result.to_json() if report.suffix.lower() == ".json" else result.to_markdown()
        publish_file(report, text.encode(), inputs=[old], outputs=[new] if new else [], force=force)
    if json_out:
        _render.print_json(result.to_dict())
    else:
        for line in result.to_markdown().splitlines():
            _render.say(line)
        if new is not None:
            _render.say(f"wrote {new}")
