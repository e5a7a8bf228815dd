"""The typer app, its global options, and the console-script entry point."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ._errors import DEBUG

app = typer.Typer(
    name="deconv2shuffle",
    help="Migrate PyTorch checkpoints from ConvTranspose to Conv + PixelShuffle, exactly, without retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
    DEBUG["on"] = DEBUG["on"] or debug


def main() -> None:
    """Console-script entry point: usage errors too become one line on stderr (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        from ._render import error

        error("aborted")
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: missing arguments, unknown options, bad values
        from ._render import error

        message = e.format_message()
        if type(e).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help is the answer
            sys.stderr.write(message + "\n")
            sys.exit(2)
        ctx = getattr(e, "ctx", None)
        where = f" See '{ctx.command_path} --help'." if ctx is not None else ""
        error(f"{message.rstrip('.')}.{where}")
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
