"""The typer app, its global options, and the console-script entry point.

Shell completion is typer's own: ``deconv2shuffle --install-completion`` (or
``--show-completion bash`` to print the script).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from .. import __version__
from ._errors import DEBUG

PROG = "deconv2shuffle"
_METAVARS = {"path": "PATH", "str": "TEXT", "list[str]": "TEXT", "int": "INTEGER", "float": "FLOAT"}

app = typer.Typer(
    name=PROG,
    help="Migrate PyTorch checkpoints from ConvTranspose to Conv + PixelShuffle, exactly, without retraining.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Command(TyperCommand):
    """A command whose usage and help read like a man page: ``migrate [OPTIONS] OLD [NEW]``.

    Arguments are named in capitals (``OLD``, ``NEW``), optional ones in brackets; an option
    without a metavar of its own shows its value's kind (``--spec PATH``, ``--rename TEXT``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS]``, then each argument: ``OLD`` when required, ``[NEW]`` when not."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The help, with a plain metavar for every option that takes a value."""
        for param in self.params:
            if isinstance(param, TyperOption) and param.metavar is None and not param.is_flag:
                kind = param.display_type(ctx).strip("<>")
                param.metavar = _METAVARS.get(kind, kind.upper())
        super().format_help(ctx, formatter)


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
        code = app(prog_name=PROG, standalone_mode=False)
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
