"""Checks of a rewritten model: each node in float64 against torch, the file, the whole model in ORT.

- :func:`check_node`: the ConvTranspose as ONNX defines it (torch's ``conv_transpose`` with no
  padding, then the crop at both ends) against Conv + shuffle + crop built from the
  :class:`~.lower.Lowering`, in float64 on a random input. Large layers are checked on a sample
  of output channels (every input channel of their group), so the check stays cheap.
- :func:`check_graph`: ``onnx.checker`` with ``full_check`` (which runs strict shape inference).
- the whole model in ONNX Runtime: see :mod:`.runtime`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import VerificationError
from .attrs import ConvTransposeAttrs
from .lower import Lowering

_FULL_CHECK_MACS = 20_000_000
_SAMPLE_GROUPS = 3
_SAMPLE_CHANNELS = 8


def _shuffle(y: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    n, c, *lengths = y.shape
    rank = len(factors)
    out = c // math.prod(factors)
    y = y.reshape(n, out, *factors, *lengths)
    perm = [0, 1] + [a for i in range(rank) for a in (2 + rank + i, 2 + i)]
    return y.permute(perm).reshape(n, out, *[d * r for d, r in zip(lengths, factors, strict=True)])


def _window(y: torch.Tensor, before: Sequence[int], after: Sequence[int]) -> torch.Tensor:
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        y = y.narrow(2 + i, b, y.shape[2 + i] - b - a)
    return y


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attrs: ConvTransposeAttrs, pads: Any) -> Any:
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[attrs.rank - 1]
    full = fn(
        x, w, b, stride=attrs.strides, output_padding=attrs.output_padding, groups=attrs.group, dilation=attrs.dilations
    )
    return _window(full, pads[0], pads[1])


def _rewritten(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, low: Lowering, group: int) -> torch.Tensor:
    fn = (F.conv1d, F.conv2d, F.conv3d)[len(low.kernel) - 1]
    widths: list[int] = []
    for before, after in zip(reversed(low.pads_before), reversed(low.pads_after), strict=True):
        widths += [before, after]
    y = fn(F.pad(x, widths), w, b, groups=group)
    return _window(_shuffle(y, low.factors), low.crop_before, low.crop_after)


def check_lengths(attrs: ConvTransposeAttrs, begin: Sequence[int], end: Sequence[int]) -> tuple[int, ...]:
    """Small input lengths whose output is at least two cells long on every axis."""
    lengths = []
    for k, r, d, op, b, e in zip(
        attrs.kernel, attrs.strides, attrs.dilations, attrs.output_padding, begin, end, strict=True
    ):
        h = 2
        while (h - 1) * r + d * (k - 1) + 1 + op - b - e < 2:
            h += 1
        lengths.append(h)
    return tuple(lengths)


def _f64(t: Any) -> Any:
    return None if t is None else t.to(torch.float64)


def check_node(
    attrs: ConvTransposeAttrs,
    pads: tuple[Sequence[int], Sequence[int]],
    low: Lowering,
    old: tuple[torch.Tensor, torch.Tensor | None],
    new: tuple[torch.Tensor, torch.Tensor | None],
    lengths: Sequence[int],
    seed: int = 0,
) -> tuple[float, float]:
    """Max absolute and relative difference between the node and its rewrite, in float64.

    Weights may come in any float type; only what is used (all, or the sampled channels of a
    large layer) is converted to float64.
    """
    w, b = old
    nw, nb = new
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out_g = w.shape[0], w.shape[1]
    G = attrs.group
    x = torch.randn(1, c_in, *lengths, generator=gen, dtype=torch.float64)
    cost = w.numel() * math.prod(lengths)
    if cost <= _FULL_CHECK_MACS:
        pairs = [(_reference(x, _f64(w), _f64(b), attrs, pads), _rewritten(x, _f64(nw), _f64(nb), low, G))]
    else:
        pairs = _sampled(x, attrs, pads, low, (w, b), (nw, nb), c_out_g, gen)
    max_abs = max(float((a - r).abs().max()) if a.numel() else 0.0 for r, a in pairs)
    scale = max(float(r.abs().max()) if r.numel() else 0.0 for r, _ in pairs)
    for r, a in pairs:
        if r.shape != a.shape:
            raise VerificationError(f"rewritten node gives shape {tuple(a.shape)}, the ConvTranspose {tuple(r.shape)}")
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def _sampled(
    x: torch.Tensor,
    attrs: ConvTransposeAttrs,
    pads: tuple[Sequence[int], Sequence[int]],
    low: Lowering,
    old: tuple[torch.Tensor, torch.Tensor | None],
    new: tuple[torch.Tensor, torch.Tensor | None],
    c_out_g: int,
    gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Reference and rewrite for a few output channels of a few groups (each group on its own)."""
    (w, b), (nw, nb) = old, new
    G, R = attrs.group, low.phases
    c_in_g = w.shape[0] // G
    groups = sorted({0, G // 2, G - 1})[:_SAMPLE_GROUPS]
    count = min(c_out_g, _SAMPLE_CHANNELS)
    pairs = []
    for g in groups:
        local = torch.randperm(c_out_g, generator=gen)[:count].sort().values
        rows = ((g * c_out_g + local)[:, None] * R + torch.arange(R)[None, :]).reshape(-1)
        xg = x[:, g * c_in_g : (g + 1) * c_in_g]
        wg = _f64(w[g * c_in_g : (g + 1) * c_in_g][:, local])
        bg = None if b is None else _f64(b[g * c_out_g + local])
        sub = dataclasses.replace(attrs, group=1)
        ref = _reference(xg, wg, bg, sub, pads)
        got = _rewritten(xg, _f64(nw[rows]), None if nb is None else _f64(nb[rows]), low, 1)
        pairs.append((ref, got))
    return pairs


def check_graph(model: Any) -> None:
    """``onnx.checker.check_model(full_check=True)`` (strict shape inference included) on the rewritten
    model's :func:`~.files.skeleton` (weights stood in by their types and shapes)."""
    import onnx

    from .files import skeleton

    try:
        onnx.checker.check_model(skeleton(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VerificationError(f"the rewritten model fails onnx.checker ({first}); nothing was written") from None
