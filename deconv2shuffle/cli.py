"""The command line: parse, call one library function, render. torch is imported only inside commands."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import __version__
from .errors import Deconv2ShuffleError

app = typer.Typer(
    name="deconv2shuffle",
    help="Migrate PyTorch checkpoints from ConvTranspose to Conv + PixelShuffle, exactly, without retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])
_DEBUG = {"on": bool(os.environ.get("DECONV2SHUFFLE_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deconv2shuffle {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for unexpected errors.")] = False,
) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug


def handle_errors(func: F) -> F:
    """Our errors become one line on stderr and their exit code; unexpected ones too, unless --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from . import output

        try:
            return func(*args, **kwargs)
        except Deconv2ShuffleError as e:
            output.error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            output.error("interrupted; no partial output was left")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: usage errors keep exit 2
            raise
        except Exception as e:
            if _DEBUG["on"]:
                raise
            output.error(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


SpecOpt = Annotated[Path | None, typer.Option("--spec", help="Spec file (TOML) listing the layers to convert.")]
SourceModelOpt = Annotated[
    str | None, typer.Option("--source-model", help="Old model: 'package.module:Name' or 'path/file.py:Name'.")
]
SourceArgsOpt = Annotated[str | None, typer.Option("--source-args", help="JSON kwargs for the source model.")]
TargetModelOpt = Annotated[
    str | None, typer.Option("--target-model", help="New model: 'package.module:Name' or 'path/file.py:Name'.")
]
TargetArgsOpt = Annotated[str | None, typer.Option("--target-args", help="JSON kwargs for the target model.")]
StateKeyOpt = Annotated[
    str | None, typer.Option("--state-dict-key", help="Top-level entry holding the weights (e.g. state_dict_ema).")
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="UNSAFE: allow arbitrary code in the checkpoint's pickle. Only for files you trust."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]


def _parse_rename(items: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected REGEX=REPLACEMENT", param_hint="--rename")
        pattern, _, repl = item.partition("=")
        out.append((pattern, repl))
    return out


@app.command()
@handle_errors
def migrate(
    old: Annotated[Path, typer.Argument(help="Checkpoint trained with ConvTranspose layers.")],
    new: Annotated[Path | None, typer.Argument(help="Where to write the converted checkpoint.")] = None,
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    approx: Annotated[
        bool, typer.Option("--approx", help="Allow an inexact target: keep the taps that fit, report the error.")
    ] = False,
    rename: Annotated[
        list[str] | None, typer.Option("--rename", help="REGEX=REPLACEMENT for other keys (repeatable).")
    ] = None,
    drop: Annotated[
        list[str] | None, typer.Option("--drop", help="Leave out keys matching REGEX (repeatable).")
    ] = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output (atomically).")] = False,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Model input for the end-to-end check, e.g. 1,3,64,64.")
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Accept target keys the checkpoint cannot fill.")
    ] = False,
    drop_unexpected: Annotated[
        bool, typer.Option("--drop-unexpected", help="Leave out keys the target model does not have.")
    ] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Max relative float64 error per layer.")] = 1e-10,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Convert and verify, write nothing.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write the report as .json or .md.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every key and what happened to it.")] = False,
    no_hash: Annotated[
        bool, typer.Option("--no-hash", help="Leave the source sha256 out of safetensors metadata (saves a full read).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert OLD into NEW: match layers, rewrite weights exactly, verify each layer, write atomically."""
    from . import output
    from .migrate import load_sources
    from .migrate import migrate as run_migrate
    from .report import MigrationReport

    if new is None and not dry_run:
        raise typer.BadParameter("give NEW, or --dry-run to only check", param_hint="NEW")
    output.set_width_for_pipes()
    try:
        with output.status(f"migrating {old}", enabled=not json_out):
            sources = load_sources(spec, source_model, target_model, source_args, target_args)
            result = run_migrate(
                old,
                None if dry_run else new,
                sources=sources,
                approx=approx,
                rename=_parse_rename(rename),
                drop=drop or [],
                state_dict_key=state_dict_key,
                trust_pickle=trust_pickle,
                force=force,
                tolerance=tolerance,
                input_shape=input_shape,
                allow_missing=allow_missing,
                drop_unexpected=drop_unexpected,
                report_path=report,
                hash_source=not no_hash,
            )
    except Deconv2ShuffleError as e:
        # scripts get a report on failure too: ok=false, the error and the exit code
        failed = MigrationReport(source_file=str(old), output_file=None if new is None else str(new))
        failed.notes.append(str(e))
        data = {**failed.to_dict(), "error": str(e), "exit_code": e.exit_code}
        if json_out:
            output.print_json(data)
        if report is not None:
            failed.write_failure(report, str(e), e.exit_code)
        raise
    if json_out:
        output.print_json(result.to_dict())
    else:
        output.render_migration(result)
        if verbose:
            output.render_keys(result)
        if report is not None:
            output.say(f"report: {report}")


@app.command("spec")
@handle_errors
def spec_cmd(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="Draft from a checkpoint alone: layers and geometry are GUESSES.")
    ] = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    state_dict_key: StateKeyOpt = None,
) -> None:
    """Print a spec to edit: from the source model's ConvTranspose layers (paired with the target's convs),
    or a draft guessed from CHECKPOINT."""
    from .draft import draft_from_checkpoint, draft_from_models
    from .spec import dump_spec

    if source_model is not None:
        spec, comments = draft_from_models(source_model, source_args, target_model, target_args)
    elif checkpoint is not None:
        spec, comments = draft_from_checkpoint(checkpoint, state_dict_key)
    else:
        raise typer.BadParameter("give --source-model (exact) or a CHECKPOINT (a guessed draft)")
    sys.stdout.write(dump_spec(spec, comments))


def main() -> None:
    """Console-script entry point: usage errors too become one line on stderr (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        from . import output

        output.error("aborted")
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: missing arguments, unknown options, bad values
        from . import output

        message = e.format_message()  # type: ignore[attr-defined]
        if type(e).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help is the answer
            sys.stderr.write(message + "\n")
            sys.exit(2)
        ctx = getattr(e, "ctx", None)
        where = f" See '{ctx.command_path} --help'." if ctx is not None else ""
        output.error(f"{message.rstrip('.')}.{where}")
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
@handle_errors
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to describe.")],
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Shape report: container layout, every tensor by module, totals, ConvTranspose layers and their targets."""
    from . import output
    from .migrate import load_sources
    from .shapes import inspect_checkpoint

    output.set_width_for_pipes()
    sources = load_sources(spec, source_model, None, source_args, None) if (spec or source_model) else None
    data = inspect_checkpoint(checkpoint, sources, state_dict_key=state_dict_key, trust_pickle=trust_pickle)
    if json_out:
        output.print_json(data)
    else:
        output.render_inspect(data)


def _ints(text: str | None, name: str) -> list[int]:
    if text is None:
        return []
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected an integer or one per axis like 2,1", param_hint=name) from None


@app.command()
@handle_errors
def explain(
    checkpoint: Annotated[Path | None, typer.Argument(help="Optional checkpoint holding --layer.")] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", "-k", help="Kernel size, e.g. 4 or 4,3.")] = None,
    stride: Annotated[str | None, typer.Option("--stride", "-s", help="Stride.")] = None,
    padding: Annotated[str, typer.Option("--padding", "-p", help="Padding.")] = "0",
    output_padding: Annotated[str, typer.Option("--output-padding", help="Output padding.")] = "0",
    dilation: Annotated[str, typer.Option("--dilation", help="Dilation.")] = "1",
    target_kernel: Annotated[str | None, typer.Option("--target-kernel", help="Fit into this conv kernel.")] = None,
    target_padding: Annotated[str | None, typer.Option("--target-padding", help="...with this padding.")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Layer of CHECKPOINT to explain (needs --spec).")] = None,
    spec: SpecOpt = None,
    length: Annotated[int, typer.Option("--length", help="Example input length per axis.")] = 8,
    rank: Annotated[
        int | None, typer.Option("--rank", help="Spatial axes (1, 2, 3); default 2 for single values.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Draw where each source tap lands in the target kernel, per phase, and why the result is exact."""
    from . import output
    from .explain import explain_geometry, explain_plan

    if checkpoint is not None:
        from .checkpoint import load_checkpoint
        from .geometry import fit
        from .migrate import find_prefix, plan_layer
        from .rewrite import layer_weights
        from .spec import load_spec

        if spec is None or layer is None:
            raise typer.BadParameter("explaining a checkpoint layer needs --spec and --layer", param_hint="--layer")
        layers = {x.source: x for x in load_spec(spec).layers}
        if layer not in layers:
            raise typer.BadParameter(f"{layer!r} is not in {spec} (layers: {', '.join(layers)})", param_hint="--layer")
        state = load_checkpoint(checkpoint).state_dict
        found = layer_weights(state, find_prefix(list(state), layer, str(checkpoint)) + layer)
        assert found is not None  # find_prefix found its weight
        plan = plan_layer(layers[layer], found.weight)
        if target_kernel:
            plan = fit(
                plan.source,
                (
                    tuple(_ints(target_kernel, "--target-kernel")),
                    tuple(_ints(target_padding or "0", "--target-padding")),
                ),
            )
        data = explain_plan(plan, length)
    else:
        if kernel is None or stride is None:
            raise typer.BadParameter("give --kernel and --stride (and --padding...), or CHECKPOINT --layer --spec")
        data = explain_geometry(
            _ints(kernel, "--kernel"),
            _ints(stride, "--stride"),
            _ints(padding, "--padding"),
            _ints(output_padding, "--output-padding"),
            _ints(dilation, "--dilation"),
            _ints(target_kernel, "--target-kernel") or None,
            _ints(target_padding, "--target-padding") or None,
            length,
            rank,
        )
    if json_out:
        output.print_json(data)
    else:
        output.set_width_for_pipes()
        output.render_explain(data)


@app.command()
@handle_errors
def batch(
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
    approx: Annotated[bool, typer.Option("--approx", help="Allow inexact targets (truncate, report).")] = False,
    to: Annotated[str, typer.Option("--to", help="Output format: same, safetensors or pth.")] = "same",
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write per-file results as JSON.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Convert every checkpoint in a folder; a spec per run, or a sidecar NAME.toml beside each file."""
    from . import output
    from .batch import CHECKPOINT_PATTERNS, run_batch

    output.set_width_for_pipes()
    progress = output.batch_progress()
    task: list[Any] = []

    def on_start(total: int) -> None:
        task.append(progress.add_task("converting", total=total))

    def on_file(result: Any) -> None:
        mark = {"converted": "ok", "skipped": "up to date", "failed": "FAILED"}[result.status]
        progress.console.print(
            f"{mark:>10}  {result.input}" + (f": {result.error}" if result.error else ""),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        progress.advance(task[0])

    with progress:
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
            shard=shard,
            approx=approx,
            to=to,
            trust_pickle=trust_pickle,
            state_dict_key=state_dict_key,
            on_start=on_start,
            on_file=on_file,
        )
    if report is not None:
        from .checkpoint import atomic_file

        with atomic_file(report) as f:
            f.write(json.dumps(result.to_dict(), indent=2).encode())
    if json_out:
        output.print_json(result.to_dict())
    else:
        output.render_batch(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@handle_errors
def bench(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint whose layers to time (with --spec).")] = None,
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Model input (with --source-model), e.g. 1,3,64,64.")
    ] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", "-k", help="Time one layer of this geometry.")] = None,
    stride: Annotated[str | None, typer.Option("--stride", "-s")] = None,
    padding: Annotated[str, typer.Option("--padding", "-p")] = "0",
    output_padding: Annotated[str, typer.Option("--output-padding")] = "0",
    channels: Annotated[str, typer.Option("--channels", help="IN,OUT channels for --kernel.")] = "64,64",
    size: Annotated[int, typer.Option("--size", help="Spatial size per axis of each layer's input.")] = 32,
    batch_size: Annotated[int, typer.Option("--batch", help="Batch size.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    min_time: Annotated[float, typer.Option("--min-time", help="Seconds of timing per variant.")] = 0.2,
    json_out: JsonOpt = False,
) -> None:
    """Time each layer old vs new on this device (CPU, or CUDA when present) and say which is faster here."""
    from . import output
    from .bench import bench_module, layer_from_geometry, layers_from_checkpoint, layers_from_model, pick_device
    from .geometry import TransposedConv
    from .migrate import load_sources, parse_shape

    dev = pick_device(device)
    if kernel is not None:
        if stride is None:
            raise typer.BadParameter("--kernel needs --stride", param_hint="--stride")
        k = _ints(kernel, "--kernel")
        geo = TransposedConv.make(
            k if len(k) > 1 else k[0],
            _ints(stride, "--stride"),
            _ints(padding, "--padding"),
            _ints(output_padding, "--output-padding"),
            rank=len(k) if len(k) > 1 else 2,
        )
        c = _ints(channels, "--channels")
        layers = layer_from_geometry(geo, (c[0], c[-1]), size, batch_size)
    elif source_model is not None and input_shape is not None:
        sources = load_sources(None, source_model, None, source_args, None)
        assert sources.source_model is not None
        shape = parse_shape(input_shape)
        assert shape is not None
        layers = layers_from_model(sources.source_model, shape)
    elif checkpoint is not None:
        sources = load_sources(spec, source_model, None, source_args, None)
        layers = layers_from_checkpoint(checkpoint, sources, size, batch_size)
    else:
        raise typer.BadParameter("give CHECKPOINT with --spec, --source-model with --input-shape, or --kernel/--stride")
    rows = [bench_module(name, module, shape, dev, min_time) for name, module, shape in layers]
    if json_out:
        output.print_json([r.to_dict() for r in rows])
    else:
        output.set_width_for_pipes()
        output.render_bench(rows)
