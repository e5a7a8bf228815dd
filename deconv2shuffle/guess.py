"""Guess a ConvTranspose's stride, padding and output_padding from its weight alone.

A checkpoint stores the kernel size (the weight's trailing axes) and nothing else about the
geometry, so any answer is a guess. The guesses here rank the geometries that published models
and the libraries people train with actually use for each kernel size (dilation 1):

* ``k = s``, no padding: U-Net up-convolutions (k2 s2), MONAI UNETR/DynUNet/VNet, patch decoders.
* ``k = 2s``, ``p = ceil(s/2)``: DCGAN and pix2pix (k4 s2 p1), k8 s4 p2, HiFi-GAN (k16 s8 p4),
  DAC / diffusers' Oobleck decoder (k10 s5 p3). MelGAN adds ``output_padding = 1`` for odd ``s``.
* odd ``k``, ``p = (k - 1) / 2``, ``output_padding = s - 1`` (output exactly ``s`` times longer):
  CycleGAN and MONAI's UNet (k3 s2 p1 op1), FSRCNN (k9 s2 p4 op1, k9 s3 p4 op2), k5 s2 p2 op1.
* ``k = 3s``, ``p = s``: k6 s2 p2.
* ``k = s + 2p`` in general, with ``k`` near ``2s``: HiFi-GAN-style vocoders, ``p = (k - s) / 2``
  (k11 s5 p3, k16 s6 p5).
* stride 1: a latent projection from 1x1 (DCGAN's first layer, k4 s1 p0), or a same-length
  layer (k3 s1 p1), common on the axis that is not upsampled in time-frequency models
  (speechbrain's DiffWave upsampler: kernel (3, 32), stride (1, 16), padding (1, 8)).

Each rule adds its score to the geometries it proposes; the list is sorted by score, best first.
Where two published geometries share a kernel (k4 s2 p1 and k4 s2 p0; k9 s2 p4 op1 and
k9 s3 p4 op2) the others follow as alternatives. Scores rank guesses; they are not probabilities.

Pure integers: no torch, no files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .geometry import TransposedConv

Axis = tuple[int, int, int]  # stride, padding, output_padding


def _patch(k: int) -> Iterator[tuple[Axis, float, str]]:
    if k >= 2:
        score = 1.0 if k == 2 else 0.5 if k in (4, 8, 16) else 0.3
        yield (k, 0, 0), score, "k = s, no overlap (U-Net up-convolution)"


def _double(k: int) -> Iterator[tuple[Axis, float, str]]:
    if k % 2 == 0 and k >= 4:
        s = k // 2
        p = math.ceil(s / 2)
        yield (s, p, 0), 1.0 if s % 2 == 0 else 0.8, "k = 2s, p = s/2 (DCGAN, HiFi-GAN, Oobleck)"
        if s % 2:
            yield (s, p, 1), 0.4, "k = 2s, p = ceil(s/2), output_padding 1 (MelGAN)"
        yield (s, 0, 0), 0.3, "k = 2s, p = 0"


def _triple(k: int) -> Iterator[tuple[Axis, float, str]]:
    if k % 3 == 0 and k >= 6:
        s = k // 3
        yield (s, s, 0), 0.7 if s == 2 else 0.25, "k = 3s, p = s"


_SAME_SCORES = {2: 0.8, 3: 0.6, 4: 0.45}


def _same(k: int) -> Iterator[tuple[Axis, float, str]]:
    if k % 2 == 1 and k >= 3:
        p = (k - 1) // 2
        for s, score in _SAME_SCORES.items():
            if s > (k + 1) // 2:  # a stride above half the kernel leaves most phases a single tap
                continue
            yield (s, p, s - 1), score if k <= 9 else score / 3, "odd k, p = (k-1)/2, output s times longer (FSRCNN)"
        yield (2, p, 0), 0.5 if k <= 9 else 0.15, "odd k, s = 2, p = (k-1)/2, no output_padding"


def _split(k: int) -> Iterator[tuple[Axis, float, str]]:
    for s in range(2, k):
        if (k - s) % 2 == 0:
            yield (s, (k - s) // 2, 0), max(0.05, 0.5 - 0.2 * abs(k / s - 2)), "k = s + 2p (HiFi-GAN style)"


def _stride_one(k: int) -> Iterator[tuple[Axis, float, str]]:
    if k == 1:
        yield (1, 0, 0), 1.0, "1-wide kernel, stride 1"
        yield (2, 0, 1), 0.2, "1-wide kernel, stride 2, output_padding 1"
        return
    yield (1, 0, 0), 0.3, "stride 1, p = 0 (projection from 1x1, DCGAN)"
    if k % 2 == 1:
        yield (1, (k - 1) // 2, 0), 0.25, "stride 1, same length"


_RULES = (_patch, _double, _triple, _same, _split, _stride_one)
_MIXED_SAME_SCORE = 0.9  # an odd axis beside an even one: most often the axis that is not upsampled
_EQUAL_STRIDES_BONUS = 0.1


def axis_candidates(kernel: int, *, mixed: bool = False) -> list[tuple[Axis, float, tuple[str, ...]]]:
    """Candidate (stride, padding, output_padding) for one axis of kernel ``kernel``, best first.

    ``mixed``: the layer's other axes have other kernel sizes, which makes a stride-1
    same-length geometry likely on an odd axis.
    """
    if kernel < 1:
        raise ValueError(f"kernel size {kernel} must be positive")
    scores: dict[Axis, float] = {}
    reasons: dict[Axis, list[str]] = {}
    for rule in _RULES:
        for axis, score, reason in rule(kernel):
            scores[axis] = scores.get(axis, 0.0) + score
            reasons.setdefault(axis, []).append(reason)
    if mixed and kernel % 2 == 1 and kernel >= 3:
        same = (1, (kernel - 1) // 2, 0)
        scores[same] = max(scores[same], _MIXED_SAME_SCORE)
    ranked = sorted(scores, key=lambda a: (-scores[a], a))
    return [(a, round(scores[a], 6), tuple(reasons[a])) for a in ranked]


@dataclass(frozen=True)
class GeometryGuess:
    """One guessed geometry for a ConvTranspose layer (dilation 1), with the conventions behind it."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    score: float
    reasons: tuple[str, ...]

    def transposed(self, groups: int = 1) -> TransposedConv:
        """The layer this guess describes."""
        return TransposedConv.make(
            self.kernel_size, self.stride, self.padding, self.output_padding, 1, groups, rank=len(self.kernel_size)
        )

    def describe(self) -> str:
        """Compact text, e.g. ``k4 s2 p1``, ``k9 s2 p4 op1`` or ``k(3, 32) s(1, 16) p(1, 8)``."""
        parts = [("k", self.kernel_size), ("s", self.stride), ("p", self.padding), ("op", self.output_padding)]
        text = []
        for name, values in parts:
            if name == "op" and not any(values):
                continue
            text.append(f"{name}{values[0]}" if len(set(values)) == 1 else f"{name}{values}")
        return " ".join(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "output_padding": list(self.output_padding),
            "score": self.score,
            "reasons": list(self.reasons),
            "geometry": self.describe(),
        }


def guess_geometry(kernel_size: int | Sequence[int], *, rank: int | None = None, limit: int = 5) -> list[GeometryGuess]:
    """Ranked guesses (best first, at most ``limit``) for a ConvTranspose of this kernel size.

    A kernel with the same size on every axis gets the same geometry on every axis; a mixed
    kernel combines each axis's best few candidates.
    """
    if isinstance(kernel_size, int):
        kernel = (kernel_size,) * (rank or 1)
    else:
        kernel = tuple(int(k) for k in kernel_size)
    if not kernel or any(k < 1 for k in kernel):
        raise ValueError(f"kernel size {kernel} must be one or more positive integers")
    if len(set(kernel)) == 1:
        return [
            _make(kernel, [axis] * len(kernel), score, reasons)
            for axis, score, reasons in axis_candidates(kernel[0])[:limit]
        ]
    mixed = any(k % 2 == 0 for k in kernel)
    per_axis = [axis_candidates(k, mixed=mixed)[:4] for k in kernel]
    combos = []
    for choice in itertools.product(*per_axis):
        axes = [axis for axis, _, _ in choice]
        score = sum(s for _, s, _ in choice) / len(choice)
        if len({a[0] for a in axes}) == 1:
            score += _EQUAL_STRIDES_BONUS
        reasons = tuple(dict.fromkeys(r for _, _, rs in choice for r in rs[:1]))
        combos.append(_make(kernel, axes, round(score, 6), reasons))
    combos.sort(key=lambda g: (-g.score, g.stride, g.padding, g.output_padding))
    return combos[:limit]


def _make(kernel: tuple[int, ...], axes: Sequence[Axis], score: float, reasons: tuple[str, ...]) -> GeometryGuess:
    return GeometryGuess(
        kernel_size=kernel,
        stride=tuple(a[0] for a in axes),
        padding=tuple(a[1] for a in axes),
        output_padding=tuple(a[2] for a in axes),
        score=score,
        reasons=reasons,
    )


def guess_from_weight(weight: Any, *, limit: int = 5) -> list[GeometryGuess]:
    """Ranked guesses for a ConvTranspose weight (a tensor, or its shape ``(C_in, C_out/groups, *kernel)``)."""
    shape = tuple(int(n) for n in getattr(weight, "shape", weight))
    if len(shape) not in (3, 4, 5):
        raise ValueError(
            f"a ConvTranspose1d/2d/3d weight has 3 to 5 axes (C_in, C_out/groups, *kernel); got shape {shape}"
        )
    return guess_geometry(shape[2:], limit=limit)


__all__ = ["GeometryGuess", "axis_candidates", "guess_from_weight", "guess_geometry"]
