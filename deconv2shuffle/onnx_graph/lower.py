"""The one place the ONNX route asks the engine (``geometry`` + ``rewrite``) for a sub-pixel form.

:func:`lower` takes a ConvTranspose's per-axis geometry, with different crops at the two ends
(``begin``/``end``: ONNX ``pads`` after ``auto_pad``/``output_shape`` are resolved), and returns
the stride-1 conv (kernel, padding before/after), the shuffle factors, the crop at both ends of
the shuffled output, and the weights rearranged by :func:`deconv2shuffle.rewrite.transposed_to_subpixel`.

How the engine is used: the ONNX pads at the two ends become the engine's ``padding`` and
``padding_end``, and the engine plans the layer in its ``minimal`` mode (per axis the phase shift
whose taps fit the narrowest kernel, then padding before/after, then the crop at both ends).
Switching to another geometry mode is the one ``smallest(source, ...)`` call below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..geometry import TransposedConv, smallest
from ..rewrite import transposed_to_subpixel


@dataclass(frozen=True)
class Lowering:
    """Conv (stride 1) + shuffle + crop equal to one ConvTranspose, per spatial axis.

    The output is ``shuffle(conv(pad(x)))[crop_before : length - crop_after]`` on every axis,
    for every input length. ``weight``/``bias`` are the Conv's (``None`` when not asked for);
    ``placed`` marks the weight entries that hold a source tap (the others are new, zero);
    ``channels`` are the given per-output-channel vectors re-laid like the bias.
    """

    kernel: tuple[int, ...]
    pads_before: tuple[int, ...]
    pads_after: tuple[int, ...]
    factors: tuple[int, ...]
    crop_before: tuple[int, ...]
    crop_after: tuple[int, ...]
    macs_ratio: float
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    placed: torch.Tensor | None = None
    channels: tuple[torch.Tensor, ...] = ()

    @property
    def phases(self) -> int:
        n = 1
        for r in self.factors:
            n *= r
        return n

    def describe(self) -> str:
        """E.g. ``Conv 2x2 pad 1 + shuffle 2 + crop 1`` (``b/a``: before/after; per axis when they differ)."""
        text = f"Conv {'x'.join(map(str, self.kernel))} pad {_pairs(self.pads_before, self.pads_after)}"
        if self.phases > 1:
            factors = self.factors
            text += f" + shuffle {factors[0] if len(set(factors)) == 1 else 'x'.join(map(str, factors))}"
        if any(self.crop_before) or any(self.crop_after):
            text += f" + crop {_pairs(self.crop_before, self.crop_after)}"
        return text


def _pairs(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    pairs = [str(b) if b == a else f"{b}/{a}" for b, a in zip(before, after, strict=True)]
    return pairs[0] if len(set(pairs)) == 1 else ",".join(pairs)


def lower(
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    group: int,
    output_padding: Sequence[int],
    begin: Sequence[int],
    end: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    channel_vectors: Sequence[torch.Tensor] = (),
    want_placed: bool = False,
) -> Lowering:
    """Plan (and, given ``weight``, rearrange) one ConvTranspose; see the module docstring.

    ``weight`` may be any dtype (integer weights of quantized graphs too): every value is moved
    bit for bit. ``channel_vectors`` (one value per output channel, e.g. per-channel scales) come
    back in :attr:`Lowering.channels` laid out along the Conv's output channels.
    """
    source = TransposedConv.make(
        tuple(kernel), tuple(strides), tuple(begin), tuple(output_padding), tuple(dilations), groups=group,
        rank=len(kernel), padding_end=tuple(end),
    )  # fmt: skip
    plan = smallest(source, "minimal")
    rewritten = None if weight is None else transposed_to_subpixel(weight, bias, plan)
    placed = None
    if weight is not None and want_placed:
        placed = transposed_to_subpixel(torch.ones_like(weight, dtype=torch.uint8), None, plan).weight.bool()
    channels: list[torch.Tensor] = []
    if channel_vectors:
        c_out = channel_vectors[0].shape[0]
        probe = torch.zeros(group, c_out // group, *kernel, dtype=torch.uint8)
        channels = [transposed_to_subpixel(probe, v, plan).bias for v in channel_vectors]  # type: ignore[misc]
    return Lowering(
        kernel=plan.target.kernel_size,
        pads_before=plan.target.pad_before,
        pads_after=plan.target.pad_after,
        factors=plan.factors,
        crop_before=plan.crop_start,
        crop_after=plan.crop_end,
        macs_ratio=plan.macs_ratio,
        weight=None if rewritten is None else rewritten.weight,
        bias=None if rewritten is None else rewritten.bias,
        placed=placed,
        channels=tuple(channels),
    )
