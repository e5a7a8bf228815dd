"""The tensor steps of a sub-pixel layer: N-d pixel shuffle, batching, padding, cropping.

Every function here is plain enough for ``torch.jit.script``, ``torch.export`` and ONNX export
(lists of ints, no generators). A converted module calls them as opaque steps under
``torch.fx.symbolic_trace`` (they are registered with ``torch.fx.wrap`` where they are called),
so the input's rank and the requested ``output_size`` are still decided when the traced graph
runs, as they are for ``nn.ConvTranspose*d``, which fx keeps as a leaf.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pixel_shuffle(x: Tensor, factors: list[int]) -> Tensor:
    rank = len(factors)
    if rank == 2 and factors[0] == factors[1]:
        return F.pixel_shuffle(x, factors[0])
    if x.dim() != rank + 2:
        raise ValueError(f"pixel_shuffle with {rank} factors needs {rank} spatial axes, got shape {list(x.shape)}")
    n, c_r = x.shape[0], x.shape[1]
    spatial = list(x.shape[2:])
    R = 1
    for r in factors:
        R *= r
    if c_r % R != 0:
        raise ValueError(f"{c_r} channels are not divisible by the product of the factors {factors}, {R}")
    x = x.reshape([n, c_r // R] + factors + spatial)
    # (N, C, r1..rn, L1..Ln) -> (N, C, L1, r1, ..., Ln, rn): channel c*R + phase, phase row-major
    order = [0, 1]
    for a in range(rank):
        order += [2 + rank + a, 2 + a]
    x = x.permute(order)
    out = [n, c_r // R]
    for a in range(rank):
        out.append(spatial[a] * factors[a])
    return x.reshape(out)


def pixel_shuffle(x: Tensor, factors: Sequence[int]) -> Tensor:
    """``(N, C*prod(r), *L) -> (N, C, *(L*r))``, channel ``c*R + phase``, phase row-major over axes."""
    return _pixel_shuffle(x, [int(f) for f in factors])


class PixelShuffle(nn.Module):
    """Pixel shuffle for 1, 2 or 3 spatial axes with one upscale factor per axis.

    For 2D with equal factors this calls ``nn.functional.pixel_shuffle`` (same result as
    ``nn.PixelShuffle``, DepthToSpace in CRD mode in ONNX); otherwise it is a reshape + permute
    in the same channel order.
    """

    def __init__(self, factors: int | Sequence[int], rank: int | None = None) -> None:
        super().__init__()
        if isinstance(factors, int):
            factors = (factors,) * (rank or 2)
        self.factors = tuple(int(f) for f in factors)
        self._factors = list(self.factors)

    def forward(self, x: Tensor) -> Tensor:
        return _pixel_shuffle(x, self._factors)

    def extra_repr(self) -> str:
        return f"factors={self.factors}"


torch.fx.wrap("_pixel_shuffle")


def as_batch(x: Tensor, rank: int) -> Tensor:
    """``x`` with a batch axis: unbatched ``(C, *L)`` becomes ``(1, C, *L)``."""
    if x.dim() == rank + 1:
        return x.unsqueeze(0)
    if x.dim() != rank + 2:
        raise ValueError(f"expected a {rank + 1}D (unbatched) or {rank + 2}D (batched) input, got {x.dim()}D")
    return x


def like_input(y: Tensor, input: Tensor, rank: int) -> Tensor:
    """Drop the batch axis :func:`as_batch` added."""
    return y.squeeze(0) if input.dim() == rank + 1 else y


def output_lengths(
    input: Tensor, output_size: list[int] | None, stride: list[int], shortest: list[int], output_padding: list[int]
) -> list[int]:
    """Output length per axis, the way ``ConvTranspose*d.forward`` decides it.

    ``shortest[i] + H*stride[i]`` is the length without output padding. ``output_size`` (spatial
    axes, optionally led by batch and channel) may pick any length up to ``stride - 1`` longer.
    """
    rank = len(stride)
    non_spatial = 2 if input.dim() == rank + 2 else 1
    lows: list[int] = []
    for i in range(rank):
        lows.append(input.shape[non_spatial + i] * stride[i] + shortest[i])
    if output_size is None:
        out: list[int] = []
        for i in range(rank):
            out.append(lows[i] + output_padding[i])
        return out
    wanted = output_size
    if len(wanted) == non_spatial + rank:
        wanted = wanted[non_spatial:]
    if len(wanted) != rank:
        raise ValueError(
            f"ConvTranspose{rank}D: for {input.dim()}D input, output_size must have {rank} "
            f"or {non_spatial + rank} elements (got {len(output_size)})"
        )
    highs: list[int] = []
    for i in range(rank):
        highs.append(lows[i] + stride[i] - 1)
    for i in range(rank):
        if wanted[i] < lows[i] or wanted[i] > highs[i]:
            raise ValueError(
                f"requested an output size of {output_size}, but valid sizes range from {lows} to {highs} "
                f"(for an input of {list(input.shape[non_spatial:])})"
            )
    return [int(n) for n in wanted]


def pad_input(
    x: Tensor,
    lengths: list[int],
    pad_before: list[int],
    pad_after: list[int],
    conv_extra: list[int],
    crop_start: list[int],
    stride: list[int],
) -> Tensor:
    """Zero-pad a batched input for the conv: the padding the conv does not do itself, and at the end
    the cells a longer ``output_size`` needs (the taps do not move, so those cells stay exact).

    ``conv_extra[i]``: conv cells minus input cells without the extra; the conv must yield
    ``ceil((crop_start + length) / stride)`` cells.
    """
    rank = len(lengths)
    pads: list[int] = []
    padded = False
    for i in range(rank - 1, -1, -1):  # F.pad lists the last axis first
        need = (crop_start[i] + lengths[i] + stride[i] - 1) // stride[i]
        grow = max(need - x.shape[2 + i] - conv_extra[i], 0)
        pads += [pad_before[i], pad_after[i] + grow]
        padded = padded or pad_before[i] > 0 or pad_after[i] + grow > 0
    return F.pad(x, pads) if padded else x


def crop(y: Tensor, crop_start: list[int], lengths: list[int]) -> Tensor:
    """Keep ``lengths[i]`` cells from ``crop_start[i]`` on each spatial axis (no-op axes are left alone)."""
    for i in range(len(lengths)):
        if crop_start[i] != 0 or y.shape[2 + i] != lengths[i]:
            y = y.narrow(2 + i, crop_start[i], lengths[i])
    return y
