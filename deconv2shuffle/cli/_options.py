"""Options shared by several commands (one definition each), and the parsers of option text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ..geometry import MODES, Mode

SpecOpt = Annotated[
    Path | None, typer.Option("--spec", metavar="FILE", help="Spec file (TOML) listing the layers to convert.")
]
SourceModelOpt = Annotated[
    str | None,
    typer.Option(
        "--source-model", metavar="MODULE:NAME", help="Old model: 'package.module:Name' or 'path/file.py:Name'."
    ),
]
SourceArgsOpt = Annotated[
    str | None,
    typer.Option("--source-args", metavar="JSON|@FILE", help="JSON kwargs for the source model, or @config.json."),
]
TargetModelOpt = Annotated[
    str | None,
    typer.Option(
        "--target-model", metavar="MODULE:NAME", help="New model: 'package.module:Name' or 'path/file.py:Name'."
    ),
]
TargetArgsOpt = Annotated[
    str | None,
    typer.Option("--target-args", metavar="JSON|@FILE", help="JSON kwargs for the target model, or @config.json."),
]
StateKeyOpt = Annotated[
    str | None,
    typer.Option("--state-dict-key", metavar="KEY", help="Top-level entry holding the weights (e.g. state_dict_ema)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="UNSAFE: allow arbitrary code in the checkpoint's pickle. Only for files you trust."
    ),
]
AllowGlobalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        metavar="MODULE.NAME",
        help="Let the pickle use this global (module.Name), and no other (repeatable). Narrower than --trust-pickle.",
    ),
]
ExampleInputsOpt = Annotated[
    str | None,
    typer.Option(
        "--example-inputs",
        metavar="FILE|FILE.py:FUNC",
        help="Real inputs for the end-to-end check, for models taking several (a timestep...): a .pt/.safetensors "
        "file of args.0, args.1, kwargs.NAME tensors, or a Python function returning (args, kwargs). Runs its code.",
    ),
]
AcceptGuessesOpt = Annotated[
    bool,
    typer.Option(
        "--accept-guesses",
        help="Convert layers a draft spec still marks guessed = true, though no source model checks the result.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]
ApproxOpt = Annotated[
    bool, typer.Option("--approx", help="Allow an inexact target: keep the taps that fit, report the error.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output (atomically).")]
InputShapeOpt = Annotated[
    str | None,
    typer.Option("--input-shape", metavar="N,C,H,W", help="Model input, e.g. 1,3,64,64 (end-to-end check, bench)."),
]
KernelOpt = Annotated[
    str | None, typer.Option("--kernel", "-k", metavar="K[,K...]", help="Kernel size, e.g. 4 or 4,3.")
]
StrideOpt = Annotated[str | None, typer.Option("--stride", "-s", metavar="S[,S...]", help="Stride.")]
PaddingOpt = Annotated[str, typer.Option("--padding", "-p", metavar="P[,P...]", help="Padding.")]
OutputPaddingOpt = Annotated[str, typer.Option("--output-padding", metavar="P[,P...]", help="Output padding.")]
RenameOpt = Annotated[
    list[str] | None,
    typer.Option("--rename", metavar="REGEX=REPL", help="REGEX=REPLACEMENT for other keys (repeatable)."),
]
DropOpt = Annotated[
    list[str] | None, typer.Option("--drop", metavar="REGEX", help="Leave out keys matching REGEX (repeatable).")
]
AllowMissingOpt = Annotated[
    bool, typer.Option("--allow-missing", help="Accept target keys the checkpoint cannot fill.")
]
DropUnexpectedOpt = Annotated[
    bool, typer.Option("--drop-unexpected", help="Leave out keys the target model does not have.")
]
ToleranceOpt = Annotated[
    float, typer.Option("--tolerance", metavar="REL", help="Max relative float64 error per layer.")
]
NoHashOpt = Annotated[
    bool, typer.Option("--no-hash", help="Leave the source sha256 out of safetensors metadata (saves a full read).")
]
GeometryOpt = Annotated[
    str,
    typer.Option(
        "--geometry",
        help="Exact form where no target conv or spec fixes one: minimal (fewest multiply-adds, crops both ends), "
        "symmetric (ConvNd(padding=P) + PixelShuffle, crops the end only) or tight.",
    ),
]


def parse_geometry(text: str, flag: str = "--geometry") -> Mode:
    """One of the exact forms (``minimal``, ``symmetric``, ``tight``), else ``typer.BadParameter`` (exit 2)."""
    for mode in MODES:
        if text == mode:
            return mode
    raise typer.BadParameter(f"{text!r}: expected one of {', '.join(MODES)}", param_hint=flag)


def parse_ints(text: str | None, flag: str, *, positive: bool = False) -> tuple[int, ...]:
    """The one parser of integer lists: ``"4"``, ``"4,3"``, ``"1x3x64x64"``, ``"1 3 64 64"``.

    Args:
        text: the option's text (``None`` or empty: no values).
        flag: the option, for the message (``"--kernel"``).
        positive: require every value to be at least 1.

    Returns:
        The integers, in order.

    Raises:
        typer.BadParameter: text that is not a list of integers (exit 2).
    """
    if text is None or not text.strip():
        return ()
    try:
        values = tuple(int(v) for v in re.split(r"[,x\s]+", text.strip()) if v)
    except ValueError:
        values = ()
    if not values or not re.fullmatch(r"[\s,x0-9+-]+", text):
        raise typer.BadParameter(f"{text!r}: expected an integer or one per axis like 2,1", param_hint=flag)
    if positive and any(v < 1 for v in values):
        raise typer.BadParameter(f"{text!r}: expected positive integers like 1,3,64,64", param_hint=flag)
    return values


def parse_rename(items: list[str] | None) -> list[tuple[str, str]]:
    """``REGEX=REPLACEMENT`` items as ``(regex, replacement)`` pairs (the regex is checked by the library)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected REGEX=REPLACEMENT", param_hint="--rename")
        pattern, _, repl = item.partition("=")
        out.append((pattern, repl))
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` as ``(i, n)`` (the range is checked by the library)."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected I/N, e.g. 0/4", param_hint="--shard") from None
    return i, n
