"""``deconv2shuffle spec``: print a spec to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    from ..pipeline import draft_spec
    from . import _render

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
    _render.spec_text(text)
