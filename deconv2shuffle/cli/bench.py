"""``deconv2shuffle bench``: time each layer old vs new on this device."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import handle_errors
from ._options import (
    AllowGlobalOpt,
    InputShapeOpt,
    JsonOpt,
    KernelOpt,
    OutputPaddingOpt,
    PaddingOpt,
    SourceArgsOpt,
    SourceModelOpt,
    SpecOpt,
    StateKeyOpt,
    StrideOpt,
    TrustOpt,
    parse_ints,
)

NAME = "bench"


@handle_errors
def command(
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint whose layers to time (with --spec).")] = None,
    spec: SpecOpt = None,
    source_model: SourceModelOpt = None,
    source_args: SourceArgsOpt = None,
    input_shape: InputShapeOpt = None,
    kernel: KernelOpt = None,
    stride: StrideOpt = None,
    padding: PaddingOpt = "0",
    output_padding: OutputPaddingOpt = "0",
    channels: Annotated[str, typer.Option("--channels", help="IN,OUT channels for --kernel.")] = "64,64",
    size: Annotated[int, typer.Option("--size", help="Spatial size per axis of each layer's input.")] = 32,
    batch_size: Annotated[int, typer.Option("--batch", help="Batch size.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    min_time: Annotated[float, typer.Option("--min-time", help="Seconds of timing per variant.")] = 0.2,
    state_dict_key: StateKeyOpt = None,
    trust_pickle: TrustOpt = False,
    allow_global: AllowGlobalOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Time each layer old vs new on this device (CPU, or CUDA when present); name a winner only when clear."""
    from ..pipeline import run_bench
    from . import _render

    rows = run_bench(
        checkpoint,
        spec=spec,
        source_model=source_model,
        source_args=source_args,
        input_shape=parse_ints(input_shape, "--input-shape", positive=True) or None,
        kernel=parse_ints(kernel, "--kernel") or None,
        stride=parse_ints(stride, "--stride") or None,
        padding=parse_ints(padding, "--padding"),
        output_padding=parse_ints(output_padding, "--output-padding"),
        channels=parse_ints(channels, "--channels", positive=True),
        size=size,
        batch=batch_size,
        device=device,
        min_time=min_time,
        state_dict_key=state_dict_key,
        trust_pickle=trust_pickle,
        allow_globals=allow_global or [],
    )
    _render.timings(rows, json_out=json_out)
