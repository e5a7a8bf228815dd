"""explain: where every source tap lands in the target kernel, per phase, and why that is exact.

Plain data only (the command line draws it): from a plan, from a geometry given as integer lists,
or for one layer of an in-memory state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import UsageError
from ..geometry import MODES, AxisPlan, Mode, SubPixelPlan, TransposedConv, explain_mismatch, smallest
from .planning import fit_conv, forward_crop, locate_layer, plan_layer
from .spec import LayerSpec


def _phase_rows(ax: AxisPlan, K: int, pb: int, crop_start: int) -> tuple[list[int], list[dict[str, Any]]]:
    """The tap table of one axis: a row per conv phase, a column per target tap ``j``."""
    lo = min(0, min(t.offset + pb for t in ax.taps))
    hi = max(K - 1, max(t.offset + pb for t in ax.taps))
    phases = []
    for s in range(ax.stride):
        cells: list[int | None] = [None] * (hi - lo + 1)
        taps = []
        for tap in ax.taps:
            if tap.phase == s:
                j = tap.offset + pb
                cells[j - lo] = tap.source
                taps.append({"source_tap": tap.source, "offset": tap.offset, "target_tap": j, "inside": 0 <= j < K})
        # conv phase s writes output cells Y with Y + crop_start = q*r + s: the ConvTranspose's phase below
        phases.append({"phase": s, "source_phase": (s - crop_start) % ax.stride, "taps": taps, "row": cells})
    return list(range(lo, hi + 1)), phases


def explain_plan(plan: SubPixelPlan, length: int = 8) -> dict[str, Any]:
    """Where each source tap lands, per axis and phase, with an example length, the crops and the cost.

    Args:
        plan: the plan to explain.
        length: example input length per axis.

    Returns:
        Plain data: ``source``, ``target``, ``exact``, ``reasons``, ``macs_ratio``, ``phases``;
        the crops after the shuffle (``crop_start``, ``crop_end``, ``shift``; ``crop`` is the end
        crop) and ``forward_crop``, the slice a hand-written forward applies (``"y[..., 1:-1, 1:-1]"``,
        empty when none); every exact form with its cost (``symmetric``/``smallest``, ``tight``,
        ``minimal`` and their ``*_macs_ratio``); per-axis tap tables under ``axes``, whose phase rows
        are the conv's channels after the shift (``source_phase``: the ConvTranspose's phase).
    """
    forms = {mode: smallest(plan.source, mode) for mode in MODES}
    axes = []
    for i, (ax, K, pb, pa, c, end) in enumerate(
        zip(
            plan.axes,
            plan.target.kernel_size,
            plan.target.pad_before,
            plan.target.pad_after,
            plan.crop_start,
            plan.crop_end,
            strict=True,
        )
    ):
        columns, phases = _phase_rows(ax, K, pb, c)
        conv_cells = length + pb + pa - K + 1
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
                "crop_start": c,
                "crop_end": end,
                "shift": c % ax.stride,
                "columns": columns,
                "phases": phases,
                "example": {
                    "input": length,
                    "transposed_output": ax.source_length(length),
                    "conv_cells": conv_cells,
                    "after_shuffle": conv_cells * ax.stride,
                    "crop_start": c,
                    "crop_end": conv_cells * ax.stride - c - ax.source_length(length),
                    "crop": conv_cells * ax.stride - c - ax.source_length(length),
                },
            }
        )
    return {
        "source": plan.source.describe(),
        "target": plan.target.describe(),
        "exact": plan.exact,
        "reasons": [] if plan.exact else [explain_mismatch(plan)],
        "macs_ratio": plan.macs_ratio,
        "crop": list(plan.crop_end),
        "crop_start": list(plan.crop_start),
        "crop_end": list(plan.crop_end),
        "shift": list(plan.shift),
        "forward_crop": forward_crop(plan),
        "smallest": forms["symmetric"].target.describe(),
        **{mode: forms[mode].target.describe() for mode in MODES},
        **{f"{mode}_macs_ratio": forms[mode].macs_ratio for mode in MODES},
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
    geometry: Mode = "minimal",
) -> dict[str, Any]:
    """Explain a geometry given as integer lists (one value = every axis).

    Args:
        kernel, stride, padding, output_padding, dilation: the ConvTranspose's hyperparameters.
        target_kernel, target_padding: fit into this conv (with the start crop it needs, see
            :func:`~deconv2shuffle.core.planning.fit_conv`); omitted: the exact form ``geometry``.
        length: example input length per axis.
        rank: spatial axes; default: the longest list, at least 2.
        geometry: ``"minimal"`` (the fewest multiply-adds), ``"tight"`` or ``"symmetric"``.

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
        pads = axes(target_padding or [0])
        plan = fit_conv(source, axes(target_kernel), pads, pads)
    else:
        plan = smallest(source, geometry)
    return explain_plan(plan, length)


def explain_layer(
    state: Mapping[str, torch.Tensor],
    layers: Sequence[LayerSpec],
    layer: str,
    target_kernel: Sequence[int] | None = None,
    target_padding: Sequence[int] | None = None,
    length: int = 8,
    source_name: str = "checkpoint",
    geometry: Mode = "minimal",
) -> dict[str, Any]:
    """Explain one layer of a state_dict, with the hyperparameters a spec gives it.

    Args:
        state: the state_dict holding the layer's weight.
        layers: the spec's layers; ``layer`` must be one of them.
        layer: module path of the layer.
        target_kernel, target_padding: fit into this conv instead of the spec's target.
        length: example input length per axis.
        source_name: the file the state comes from, for messages.
        geometry: the exact form when the spec fixes none (see :func:`explain_geometry`).

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
    plan = plan_layer(by_source[layer], found.weight, geometry=geometry)
    if target_kernel:
        rank = plan.rank
        kernel = tuple(target_kernel) if len(target_kernel) == rank else (target_kernel[0],) * rank
        pad = tuple(target_padding or (0,))
        pads = pad if len(pad) == rank else (pad[0],) * rank
        plan = fit_conv(plan.source, kernel, pads, pads)
    return explain_plan(plan, length)
