"""explain: where every source tap lands in the target kernel, per phase, and why that is exact.

Plain data only (the command line draws it): from a plan, from a geometry given as integer lists,
or for one layer of an in-memory state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import UsageError
from ..geometry import SubPixelPlan, TransposedConv, explain_mismatch, fit, smallest
from .planning import locate_layer, plan_layer
from .spec import LayerSpec


def explain_plan(plan: SubPixelPlan, length: int = 8) -> dict[str, Any]:
    """Where each source tap lands, per axis and phase, with an example length and the cost.

    Args:
        plan: the plan to explain.
        length: example input length per axis.

    Returns:
        Plain data: ``source``, ``target``, ``exact``, ``reasons``, ``smallest``, ``tight``,
        ``macs_ratio``, ``crop``, ``phases`` and per-axis tap tables under ``axes``.
    """
    tight = smallest(plan.source, "tight")
    best = smallest(plan.source)
    axes = []
    for i, (ax, K, pb, pa) in enumerate(
        zip(plan.axes, plan.target.kernel_size, plan.target.pad_before, plan.target.pad_after, strict=True)
    ):
        phases = []
        lo = min(0, min(t.offset + pb for t in ax.taps))
        hi = max(K - 1, max(t.offset + pb for t in ax.taps))
        for s in range(ax.stride):
            cells: list[int | None] = [None] * (hi - lo + 1)
            taps = []
            for tap in ax.taps:
                if tap.phase == s:
                    j = tap.offset + pb
                    cells[j - lo] = tap.source
                    taps.append({"source_tap": tap.source, "offset": tap.offset, "target_tap": j, "inside": 0 <= j < K})
            phases.append({"phase": s, "taps": taps, "row": cells})
        h = length
        out_len = ax.source_length(h)
        conv_cells = h + pb + pa - K + 1
        axes.append(
            {
                "axis": i,
                "kernel": ax.kernel,
                "stride": ax.stride,
                "padding": ax.padding,
                "output_padding": ax.output_padding,
                "dilation": ax.dilation,
                "target_kernel": K,
                "target_padding": [pb, pa],
                "columns": list(range(lo, hi + 1)),
                "phases": phases,
                "example": {
                    "input": h,
                    "transposed_output": out_len,
                    "conv_cells": conv_cells,
                    "after_shuffle": conv_cells * ax.stride,
                    "crop": conv_cells * ax.stride - out_len,
                },
            }
        )
    return {
        "source": plan.source.describe(),
        "target": plan.target.describe(),
        "exact": plan.exact,
        "reasons": [] if plan.exact else [explain_mismatch(plan)],
        "smallest": best.target.describe(),
        "tight": tight.target.describe(),
        "tight_macs_ratio": tight.macs_ratio,
        "macs_ratio": plan.macs_ratio,
        "crop": list(plan.crop),
        "phases": plan.phases,
        "axes": axes,
    }


def explain_geometry(
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    output_padding: list[int],
    dilation: list[int],
    target_kernel: list[int] | None = None,
    target_padding: list[int] | None = None,
    length: int = 8,
    rank: int | None = None,
) -> dict[str, Any]:
    """Explain a geometry given as integer lists (one value = every axis).

    Args:
        kernel, stride, padding, output_padding, dilation: the ConvTranspose's hyperparameters.
        target_kernel, target_padding: fit into this conv; omitted: the smallest exact one.
        length: example input length per axis.
        rank: spatial axes; default: the longest list, at least 2.

    Returns:
        See :func:`explain_plan`.
    """
    rank = rank or max(len(kernel), len(stride), len(padding), len(output_padding), len(dilation), 2)

    def axes(v: list[int]) -> tuple[int, ...]:
        return tuple(v) if len(v) == rank else tuple(v[:1] * rank)

    source = TransposedConv.make(
        axes(kernel), axes(stride), axes(padding), axes(output_padding), axes(dilation), rank=rank
    )
    if target_kernel:
        plan = fit(source, (axes(target_kernel), axes(target_padding or [0])))
    else:
        plan = smallest(source)
    return explain_plan(plan, length)


def explain_layer(
    state: Mapping[str, torch.Tensor],
    layers: Sequence[LayerSpec],
    layer: str,
    target_kernel: Sequence[int] | None = None,
    target_padding: Sequence[int] | None = None,
    length: int = 8,
    source_name: str = "checkpoint",
) -> dict[str, Any]:
    """Explain one layer of a state_dict, with the hyperparameters a spec gives it.

    Args:
        state: the state_dict holding the layer's weight.
        layers: the spec's layers; ``layer`` must be one of them.
        layer: module path of the layer.
        target_kernel, target_padding: fit into this conv instead of the spec's target.
        length: example input length per axis.
        source_name: the file the state comes from, for messages.

    Returns:
        See :func:`explain_plan`.

    Raises:
        UsageError: ``layer`` is not in ``layers``.
        SpecError: the state has no weight for it.
    """
    by_source = {x.source: x for x in layers}
    if layer not in by_source:
        raise UsageError(f"layer={layer!r} is not in the spec (layers: {', '.join(by_source) or 'none'})")
    found = locate_layer(state, layer, source_name).weights
    plan = plan_layer(by_source[layer], found.weight)
    if target_kernel:
        plan = fit(plan.source, (tuple(target_kernel), tuple(target_padding or (0,))))
    return explain_plan(plan, length)
