"""Sub-pixel plans for transposed convolutions, in integers only.

Per spatial axis, a transposed convolution with kernel ``k``, stride ``r``, padding ``p``,
output padding ``op`` and dilation ``d`` writes ``y[i*r + t*d - p] += x[i] * w[t]``.
Writing an output index as ``Y = q*r + s`` (phase ``s``), tap ``t`` feeds phase ``s`` when
``(s + p - t*d) % r == 0`` and then reads ``x[q + off]`` with ``off = (s + p - t*d) // r``.
A stride-1 convolution with kernel ``K`` and leading padding ``P`` computes
``z[q] = sum_j x[q + j - P] * w[j]``, so the tap lands on ``j = off + P``. Axes are
independent, so every plan here is a tuple of per-axis plans.

Cropping ``C`` cells at the start of the shuffled output (``Y' = Y + C``) is the same as lowering
the source padding by ``C``: offsets become ``(s' + p - C - t*d) // r``. A shift ``C mod r``
lines the phases up so that all taps fit one narrow window (the ``minimal`` mode); a multiple
of ``r`` moves every offset by one cell. A source with different padding at the two ends
(ONNX ``pads`` begin != end) changes only the output length, never the taps.

Nothing in this module knows about tensors, files or terminals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import GeometryError
from .transposed import IntOrSeq as IntOrSeq
from .transposed import TransposedConv as TransposedConv
from .transposed import _fmt, _per_axis
from .transposed import subpixel_to_transposed as subpixel_to_transposed

Mode = Literal["symmetric", "tight", "minimal"]
MODES: tuple[Mode, ...] = ("symmetric", "tight", "minimal")


@dataclass(frozen=True)
class Tap:
    """One source tap of one phase: where it comes from and where it lands."""

    phase: int
    source: int
    offset: int


@dataclass(frozen=True)
class AxisPlan:
    """The phase decomposition of one axis for one start crop (``crop_start`` cells, default none).

    ``phase`` and ``offset`` of each tap are those of the conv channel it is written to, i.e. after
    the shift: ``offset = (phase + padding - crop_start - source*dilation) // stride``.
    """

    kernel: int
    stride: int
    padding: int
    output_padding: int
    dilation: int
    taps: tuple[Tap, ...]
    padding_end: int | None = None
    crop_start: int = 0

    @classmethod
    def build(
        cls, k: int, r: int, p: int, op: int, d: int, *, padding_end: int | None = None, crop_start: int = 0
    ) -> AxisPlan:
        taps = []
        for s in range(r):
            for t in range(k):
                num = s + p - crop_start - t * d
                if num % r == 0:
                    taps.append(Tap(phase=s, source=t, offset=num // r))
        return cls(
            kernel=k,
            stride=r,
            padding=p,
            output_padding=op,
            dilation=d,
            taps=tuple(taps),
            padding_end=padding_end,
            crop_start=crop_start,
        )

    @property
    def pad_end(self) -> int:
        return self.padding if self.padding_end is None else self.padding_end

    @property
    def min_offset(self) -> int:
        return min(t.offset for t in self.taps)

    @property
    def max_offset(self) -> int:
        return max(t.offset for t in self.taps)

    @property
    def window(self) -> int:
        """Width of the smallest kernel that holds every tap: ``max(off) - min(off) + 1``."""
        return self.max_offset - self.min_offset + 1

    @property
    def extra_cells(self) -> int:
        """``ceil((crop_start + L) / r) - H``: conv cells needed beyond the input length (H-free)."""
        reach = self.dilation * (self.kernel - 1) + self.output_padding + 1 - self.padding - self.pad_end
        return -1 + math.ceil((self.crop_start + reach) / self.stride)

    def source_length(self, h: int) -> int:
        return (
            (h - 1) * self.stride
            - self.padding
            - self.pad_end
            + self.dilation * (self.kernel - 1)
            + (self.output_padding + 1)
        )


@dataclass(frozen=True)
class TargetGeometry:
    """A stride-1 target convolution: kernel, (possibly asymmetric) zero padding, start crop per axis.

    ``crop_start`` cells are cropped from the start of each axis after the shuffle (the phase
    shift of the ``minimal`` mode); left empty it is zero. The end crop follows from the rest and
    is :attr:`SubPixelPlan.crop_end`.
    """

    kernel_size: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    crop_start: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.crop_start:
            object.__setattr__(self, "crop_start", (0,) * len(self.kernel_size))

    @property
    def symmetric(self) -> bool:
        return self.pad_before == self.pad_after

    @property
    def padding(self) -> tuple[int, ...]:
        """The Conv's ``padding`` argument; only meaningful when symmetric."""
        if not self.symmetric:
            raise GeometryError(f"padding {self.pad_before}/{self.pad_after} is not symmetric")
        return self.pad_before

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        pads = _fmt(self.pad_before)
        if not self.symmetric:
            pads = ",".join(f"{b}/{a}" for b, a in zip(self.pad_before, self.pad_after, strict=True))
        crop = f", crop {_fmt(self.crop_start)} at start" if any(self.crop_start) else ""
        return f"{k} pad {pads}{crop}"


@dataclass(frozen=True)
class OutsideTap:
    axis: int
    phase: int
    source: int
    lands_on: int
    kernel: int


@dataclass(frozen=True)
class SubPixelPlan:
    """A transposed convolution placed into a stride-1 conv + pixel shuffle + crop at both ends."""

    source: TransposedConv
    axes: tuple[AxisPlan, ...]
    target: TargetGeometry
    outside: tuple[OutsideTap, ...] = ()
    short_axes: tuple[tuple[int, int, int], ...] = ()  # (axis, cells the conv yields beyond H, cells needed beyond H)
    reasons: tuple[str, ...] = field(default=())

    @property
    def rank(self) -> int:
        return self.source.rank

    @property
    def factors(self) -> tuple[int, ...]:
        return self.source.stride

    @property
    def phases(self) -> int:
        return math.prod(self.factors)

    @property
    def exact(self) -> bool:
        return not self.outside and not self.short_axes

    @property
    def crop_start(self) -> tuple[int, ...]:
        """Cells cropped from the start of each axis after the shuffle."""
        return self.target.crop_start

    @property
    def shift(self) -> tuple[int, ...]:
        """The phase shift per axis: ``crop_start mod stride``."""
        return tuple(c % r for c, r in zip(self.crop_start, self.factors, strict=True))

    @property
    def crop_end(self) -> tuple[int, ...]:
        """Cells cropped from the end of each axis after the shuffle (independent of input size)."""
        out = []
        for ax, K, pb, pa, c in zip(
            self.axes,
            self.target.kernel_size,
            self.target.pad_before,
            self.target.pad_after,
            self.target.crop_start,
            strict=True,
        ):
            # r * conv cells - start crop - source length; every term is H*r plus a constant
            out.append(ax.stride * (pb + pa - K + 1) - c - ax.source_length(0))
        return tuple(out)

    @property
    def crop(self) -> tuple[int, ...]:
        """The end crop (:attr:`crop_end`); the start crop is :attr:`crop_start`."""
        return self.crop_end

    @property
    def macs_ratio(self) -> float:
        """Multiply-adds of conv + shuffle over those of the transposed conv (zero taps count)."""
        return self.phases * math.prod(self.target.kernel_size) / math.prod(self.source.kernel_size)

    def output_length(self, length: Sequence[int]) -> tuple[int, ...]:
        return self.source.output_length(length)

    def conv_length(self, length: Sequence[int]) -> tuple[int, ...]:
        return tuple(
            h + pb + pa - K + 1
            for h, K, pb, pa in zip(
                length, self.target.kernel_size, self.target.pad_before, self.target.pad_after, strict=True
            )
        )


def plan_axes(source: TransposedConv, crop_start: Sequence[int] | None = None) -> tuple[AxisPlan, ...]:
    crops = tuple(crop_start) if crop_start else (0,) * source.rank
    return tuple(
        AxisPlan.build(k, r, p, op, d, padding_end=pe, crop_start=c)
        for k, r, p, op, d, pe, c in zip(
            source.kernel_size,
            source.stride,
            source.padding,
            source.output_padding,
            source.dilation,
            source.padding_end,
            crops,
            strict=True,
        )
    )


def _minimal_axis(k: int, r: int, p: int, op: int, d: int, pe: int) -> tuple[int, int, int, int]:
    """``(K, pad_before, pad_after, crop_start)`` of the narrowest window over every phase shift.

    Ties go to the fewest conv cells, then to symmetric padding, then to the smallest shift.
    """
    best: tuple[tuple[int, int, bool, int], tuple[int, int, int, int]] | None = None
    for c in range(r):
        ax = AxisPlan.build(k, r, p, op, d, padding_end=pe, crop_start=c)
        lo, hi = ax.min_offset, ax.max_offset
        crop = c + r * max(lo, 0)  # whole cells of start crop instead of a kernel that starts late
        pb = max(-lo, 0)
        K = hi - lo + 1
        extra = AxisPlan.build(k, r, p, op, d, padding_end=pe, crop_start=crop).extra_cells
        pa = max(extra + K - 1 - pb, 0)
        key = (K, pb + pa, pb != pa, crop)
        if best is None or key < best[0]:
            best = (key, (K, pb, pa, crop))
    assert best is not None
    return best[1]


def smallest(source: TransposedConv, mode: Mode = "symmetric") -> SubPixelPlan:
    """The smallest exact target geometry.

    ``symmetric``: one padding per axis (what ``nn.ConvNd(padding=P)`` takes), crop at the end only.
    ``tight``: the smallest kernel without a phase shift, padding before and after chosen separately.
    ``minimal``: the cheapest form: per axis the phase shift whose taps fit the narrowest window,
    then padding before/after and a crop at both ends (see :func:`cheapest`).
    """
    if mode not in MODES:
        raise GeometryError(f"geometry {mode!r} is not one of {', '.join(MODES)}")
    ks, pbs, pas, crops = [], [], [], []
    for ax in plan_axes(source):
        lo, hi, extra = ax.min_offset, ax.max_offset, ax.extra_cells
        crop = 0
        if mode == "symmetric":
            P = max(-lo, extra + hi, 0)
            K = P + hi + 1
            pb = pa = P
        elif mode == "tight":
            pb = max(-lo, 0)
            K = hi + pb + 1
            pa = max(extra + K - 1 - pb, 0)
        else:
            K, pb, pa, crop = _minimal_axis(
                ax.kernel, ax.stride, ax.padding, ax.output_padding, ax.dilation, ax.pad_end
            )
        ks.append(K)
        pbs.append(pb)
        pas.append(pa)
        crops.append(crop)
    target = TargetGeometry(tuple(ks), tuple(pbs), tuple(pas), tuple(crops))
    result = fit(source, target)
    assert result.exact, result.reasons  # the formulas above guarantee it; fit() re-checks
    return result


def cheapest(source: TransposedConv) -> SubPixelPlan:
    """The exact form with the fewest multiply-adds (``smallest(source, "minimal")``).

    Per axis no exact form, whatever its phase shift, padding or crops, has a smaller kernel;
    for dilation 1 the kernel is at least ``ceil(k / r)``.
    """
    return smallest(source, "minimal")


def fit(source: TransposedConv, target: TargetGeometry | tuple[IntOrSeq, IntOrSeq]) -> SubPixelPlan:
    """Place ``source`` into a given target geometry and say whether that is exact, and if not why.

    ``target`` is a :class:`TargetGeometry` or ``(kernel_size, padding)`` with symmetric padding
    and no start crop.
    """
    if not isinstance(target, TargetGeometry):
        kernel, padding = target
        ks = _per_axis(kernel, source.rank, "target kernel_size")
        ps = _per_axis(padding, source.rank, "target padding")
        target = TargetGeometry(ks, ps, ps)
    if not len(target.kernel_size) == len(target.pad_before) == len(target.pad_after) == len(target.crop_start):
        raise GeometryError(f"target {target} does not give one value per axis for every field")
    if len(target.kernel_size) != source.rank:
        raise GeometryError(f"target has {len(target.kernel_size)} axes, the layer has {source.rank}")
    for K, pb, pa, c in zip(target.kernel_size, target.pad_before, target.pad_after, target.crop_start, strict=True):
        if K < 1 or pb < 0 or pa < 0 or c < 0:
            raise GeometryError(
                f"target kernel must be >= 1, padding and start crop >= 0 (got kernel {K}, padding {pb}/{pa}, crop {c})"
            )
    axes = plan_axes(source, target.crop_start)
    outside: list[OutsideTap] = []
    short: list[tuple[int, int, int]] = []
    for i, (ax, K, pb, pa) in enumerate(
        zip(axes, target.kernel_size, target.pad_before, target.pad_after, strict=True)
    ):
        for tap in ax.taps:
            j = tap.offset + pb
            if not 0 <= j < K:
                outside.append(OutsideTap(axis=i, phase=tap.phase, source=tap.source, lands_on=j, kernel=K))
        yields = pb + pa - K + 1
        if yields < ax.extra_cells:
            short.append((i, yields, ax.extra_cells))
    reasons: list[str] = []
    if outside:
        shown = ", ".join(f"axis {o.axis} phase {o.phase} tap {o.source} -> {o.lands_on}" for o in outside[:6])
        more = f" and {len(outside) - 6} more" if len(outside) > 6 else ""
        reasons.append(
            f"{len(outside)} source tap(s) land outside the target kernel "
            f"{'x'.join(map(str, target.kernel_size))} ({shown}{more})"
        )
    for axis, yields, needed in short:
        reasons.append(
            f"axis {axis}: target conv yields H{yields:+d} cells, the layer needs H{needed:+d} (before the shuffle)"
        )
    return SubPixelPlan(
        source=source, axes=axes, target=target, outside=tuple(outside), short_axes=tuple(short), reasons=tuple(reasons)
    )


def explain_mismatch(plan: SubPixelPlan) -> str:
    """One sentence: why ``plan`` is not exact and which geometry would be."""
    if plan.exact:
        return "exact"
    best = smallest(plan.source)
    least = cheapest(plan.source)
    hint = f"exact needs a {_conv_words(best.target)}{_crop_words(best)}"
    if least.target != best.target:
        hint += f" (or, cheapest, a {_conv_words(least.target)}{_crop_words(least)})"
    return f"{'; '.join(plan.reasons)}; {hint}"


def _crop_words(plan: SubPixelPlan) -> str:
    ends = [(plan.crop_start, "start"), (plan.crop_end, "end")]
    words = [f"{_fmt(cells)} cell(s) at the {where}" for cells, where in ends if any(cells)]
    return f", cropping {' and '.join(words)}" if words else ""


def _conv_words(target: TargetGeometry) -> str:
    k = "x".join(map(str, target.kernel_size))
    if target.symmetric:
        return f"{k} conv with padding {_fmt(target.pad_before)}"
    per_axis = [f"{b} before and {a} after" for b, a in zip(target.pad_before, target.pad_after, strict=True)]
    if len(set(per_axis)) == 1:
        return f"{k} conv with padding {per_axis[0]}"
    return f"{k} conv with padding " + "; ".join(f"axis {i}: {p}" for i, p in enumerate(per_axis))
