"""``deconv2shuffle inspect CHECKPOINT``: a shape report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import handle_errors
from ._options import (
    AllowGlobalOpt,
    GeometryOpt,
    JsonOpt,
    SourceArgsOpt,
    SourceModelOpt,
    SpecOpt,
    StateKeyOpt,
    TrustOpt,
    parse_geometry,
)

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
    geometry: GeometryOpt = "minimal",
    json_out: JsonOpt = False,
) -> None:
    """Shape report: container layout, every tensor by module, totals, ConvTranspose layers and their targets."""
    from ..pipeline import inspect_checkpoint
    from . import _render
    from .migrate import _is_onnx

    if _is_onnx(checkpoint):  # an ONNX model: its ConvTranspose nodes and what each would become
        from ..onnx_graph import inspect_onnx

        report = inspect_onnx(checkpoint)
        if json_out:
            _render.print_json(report.to_dict())
        else:
            for line in report.to_markdown().splitlines():
                _render.say(line)
        return
    data = inspect_checkpoint(
        checkpoint,
        spec=spec,
        source_model=source_model,
        source_args=source_args,
        state_dict_key=state_dict_key,
        trust_pickle=trust_pickle,
        allow_globals=allow_global or [],
        geometry=parse_geometry(geometry),
    )
    _render.inspection(data, json_out=json_out)
