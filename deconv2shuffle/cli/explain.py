"""``deconv2shuffle explain``: where each tap lands, per phase, and why that is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import handle_errors
from ._options import (
    AllowGlobalOpt,
    JsonOpt,
    KernelOpt,
    OutputPaddingOpt,
    PaddingOpt,
    SpecOpt,
    StateKeyOpt,
    StrideOpt,
    TrustOpt,
    parse_ints,
)

NAME = "explain"


@handle_errors
def command(
    checkpoint: Annotated[Path | None, typer.Argument(help="Optional checkpoint holding --layer.")] = None,
    kernel: KernelOpt = None,
    stride: StrideOpt = None,
    padding: PaddingOpt = "0",
    output_padding: OutputPaddingOpt = "0",
    dilation: Annotated[str, typer.Option("--dilation", help="Dilation.")] = "1",
    target_kernel: Annotated[str | None, typer.Option("--target-kernel", help="Fit into this conv kernel.")] = None,
    target_padding: Annotated[str | None, typer.Option("--target-padding", help="...with this padding.")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Layer of CHECKPOINT to explain (needs --spec).")] = None,
    spec: SpecOpt = None,
    length: Annotated[int, typer.Option("--length", help="Example input length per axis.")] = 8,
    rank: Annotated[
        int | None, typer.Option("--rank", help="Spatial axes (1, 2, 3); default 2 for single values.")
    ] = None,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Draw where each source tap lands in the target kernel, per phase, and why the result is exact."""
    from ..pipeline import explain_conversion
    from . import _render

    data = explain_conversion(
        checkpoint,
        spec=spec,
        layer=layer,
        kernel=parse_ints(kernel, "--kernel"),
        stride=parse_ints(stride, "--stride"),
        padding=parse_ints(padding, "--padding"),
        output_padding=parse_ints(output_padding, "--output-padding"),
        dilation=parse_ints(dilation, "--dilation"),
        target_kernel=parse_ints(target_kernel, "--target-kernel") or None,
        target_padding=parse_ints(target_padding, "--target-padding") or None,
        length=length,
        rank=rank,
        state_dict_key=state_dict_key,
        trust_pickle=trust_pickle,
        allow_globals=allow_global or [],
    )
    _render.explanation(data, json_out=json_out)
