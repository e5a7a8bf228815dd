"""The command line: parse, call one library function, render. torch is imported only inside commands."""

from __future__ import annotations

import functools
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
        except (typer.Exit, typer.Abort):
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
    json_out: JsonOpt = False,
) -> None:
    """Convert OLD into NEW: match layers, rewrite weights exactly, verify each layer, write atomically."""
    from . import output
    from .migrate import load_sources
    from .migrate import migrate as run_migrate

    if new is None and not dry_run:
        raise typer.BadParameter("give NEW, or --dry-run to only check", param_hint="NEW")
    output.set_width_for_pipes()
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
    )
    if json_out:
        output.print_json(result.to_dict())
    else:
        output.render_migration(result)


@app.command("spec")
@handle_errors
def spec_cmd(
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
) -> None:
    """Print a spec for the source model's ConvTranspose layers (paired with the target's convs) to edit."""
    from .migrate import load_sources
    from .spec import Spec, dump_spec

    if source_model is None:
        raise typer.BadParameter("--source-model is required", param_hint="--source-model")
    sources = load_sources(None, source_model, target_model, source_args, target_args)
    layers = sources.layers()
    comments = [f"written by deconv2shuffle {__version__} from {source_model}"]
    if target_model:
        comments.append(f"paired with {target_model}")
    comments.append("target_kernel_size / target_padding omitted: the smallest exact conv is used")
    sys.stdout.write(dump_spec(Spec(layers=layers), comments))


def main() -> None:
    """Console-script entry point."""
    app()
