"""``deconv2shuffle inspect CHECKPOINT``: a shape report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import handle_errors
from ._options import AllowGlobalOpt, JsonOpt, SourceArgsOpt, SourceModelOpt, SpecOpt, StateKeyOpt, TrustOpt

NAME = "inspect"


@handle_errors
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to describe.")],
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Shape report: container layout, every tensor by module, totals, ConvTranspose layers and their targets."""
    from ..pipeline import inspect_checkpoint
    from . import _render

    data = inspect_checkpoint(
        checkpoint,
        spec=spec,
        source_model=source_model,
        source_args=source_args,
        state_dict_key=state_dict_key,
        trust_pickle=trust_pickle,
        allow_globals=allow_global or [],
    )
    _render.inspection(data, json_out=json_out)
