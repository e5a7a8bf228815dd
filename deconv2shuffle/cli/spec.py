"""``deconv2shuffle spec``: print a spec to edit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._errors import handle_errors
from ._options import (
    AllowGlobalOpt,
    SourceArgsOpt,
    SourceModelOpt,
    StateKeyOpt,
    TargetArgsOpt,
    TargetModelOpt,
    TrustOpt,
)

if TYPE_CHECKING:
    from ..core.sources import AmbiguousPairingError

NAME = "spec"


@handle_errors
def command(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="Draft from a checkpoint alone: layers and geometry are GUESSES.")
    ] = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    target_model: TargetModelOpt = None,
    target_args: TargetArgsOpt = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
) -> None:
    """Print a spec to edit: from the source model's ConvTranspose layers (paired with the target's convs),
    or a draft guessed from CHECKPOINT."""
    from ..core.sources import AmbiguousPairingError
    from ..pipeline import draft_spec
    from . import _render

    try:
        text = draft_spec(
            checkpoint,
            source_model=source_model,
            source_args=source_args,
            target_model=target_model,
            target_args=target_args,
            state_dict_key=state_dict_key,
            trust_pickle=trust_pickle,
            allow_globals=allow_global or [],
        )
    except AmbiguousPairingError as e:
        models = model_table(source_model, source_args, target_model, target_args, Path.cwd())
        _render.spec_text(ambiguity_draft(e, models))
        e.args = (f"{e}; the spec printed on stdout pairs them in execution order: check each target",)
        raise
    _render.spec_text(text)


def _relative_ref(ref: str, folder: Path) -> str:
    """A ``file.py:Name`` reference rewritten relative to ``folder`` (where the spec will live)."""
    where, _, name = ref.rpartition(":")
    if not where.endswith(".py"):
        return ref
    return f"{Path(os.path.relpath(Path(where).resolve(), folder.resolve())).as_posix()}:{name}"


def model_table(
    source_model: str | None,
    source_args: str | None,
    target_model: str | None,
    target_args: str | None,
    folder: Path,
) -> dict[str, Any]:
    """A spec's ``[models]`` table for these references, file paths relative to ``folder``."""
    models: dict[str, Any] = {}
    for which, ref, args in (("source", source_model, source_args), ("target", target_model, target_args)):
        if ref:
            models[which] = _relative_ref(ref, folder)
            if args:
                models[f"{which}_args"] = json.loads(args)
    return models


def ambiguity_draft(error: AmbiguousPairingError, models: dict[str, Any]) -> str:
    """A spec to edit for an ambiguous pairing: the layers paired in execution order, the choices in comments."""
    from ..core.spec import Spec, dump_spec

    comments = [
        "AMBIGUOUS pairing: these layers could take either target conv. Below they are paired in the order",
        "the models run them; check each `target`, then pass this file with --spec.",
        *(f"{source}: could be {', '.join(options)}" for source, options in error.candidates.items()),
        "[models]: file paths are read relative to this spec's folder",
    ]
    return dump_spec(Spec(layers=error.layers, models=models), comments)


def write_draft(error: AmbiguousPairingError, models: dict[str, Any], path: Path) -> Path:
    """Write :func:`ambiguity_draft` to ``path`` (or ``name-2.toml``... when taken); the path written."""
    from ..pipeline.files import publish_file

    stem, n = path.name.removesuffix(".toml"), 1
    while path.exists():
        n += 1
        path = path.with_name(f"{stem}-{n}.toml")
    publish_file(path, ambiguity_draft(error, models).encode(), what="spec")
    return path
