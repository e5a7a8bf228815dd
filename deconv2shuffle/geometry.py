"""Sub-pixel plans for transposed convolutions, in integers only.

Per spatial axis, a transposed convolution with kernel ``k``, stride ``r``, padding ``p``,
output padding ``op`` and dilation ``d`` writes ``y[i*r + t*d - p] += x[i] * w[t]``.
Writing an output index as ``Y = q*r + s`` (phase ``s``), tap ``t`` feeds phase ``s`` when
``(s + p - t*d) % r == 0`` and then reads ``x[q + off]`` with ``off = (s + p - t*d) // r``.
A stride-1 convolution with kernel ``K`` and leading padding ``P`` computes
``z[q] = sum_j x[q + j - P] * w[j]``, so the tap lands on ``j = off + P``. Axes are
independent, so every plan here is a tuple of per-axis plans.

Nothing in this module knows about tensors, files or terminals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import GeometryError

IntOrSeq = int | Sequence[int]
Mode = Literal["symmetric", "tight"]


def _per_axis(value: IntOrSeq, rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        raise GeometryError(f"{name} has {len(values)} values but the layer has {rank} spatial axes")
    return values


@dataclass(frozen=True)
class TransposedConv:
    """Hyperparameters of a ``ConvTranspose{1,2,3}d`` layer (one value per spatial axis)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

    @classmethod
    def make(
        cls,
        kernel_size: IntOrSeq,
        stride: IntOrSeq,
        padding: IntOrSeq = 0,
        output_padding: IntOrSeq = 0,
        dilation: IntOrSeq = 1,
        groups: int = 1,
        rank: int | None = None,
    ) -> TransposedConv:
        """Build and validate from ints or per-axis sequences (the rank comes from the kernel)."""
        if rank is None:
            rank = 1 if isinstance(kernel_size, int) else len(tuple(kernel_size))
        if rank not in (1, 2, 3):
            raise GeometryError(f"only 1, 2 or 3 spatial axes are supported, got {rank}")
        geo = cls(
            kernel_size=_per_axis(kernel_size, rank, "kernel_size"),
            stride=_per_axis(stride, rank, "stride"),
            padding=_per_axis(padding, rank, "padding"),
            output_padding=_per_axis(output_padding, rank, "output_padding"),
            dilation=_per_axis(dilation, rank, "dilation"),
            groups=int(groups),
        )
        geo.validate()
        return geo

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    def validate(self) -> None:
        for k, r, p, op, d in zip(
            self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation, strict=True
        ):
            if k < 1 or r < 1 or d < 1:
                raise GeometryError(f"kernel_size, stride and dilation must be >= 1 (got k={k}, stride={r}, d={d})")
            if p < 0 or op < 0:
                raise GeometryError(f"padding and output_padding must be >= 0 (got p={p}, op={op})")
            if op >= max(r, d):
                raise GeometryError(
                    f"output_padding {op} must be smaller than stride {r} or dilation {d} (torch's own rule)"
                )
        if self.groups < 1:
            raise GeometryError(f"groups must be >= 1, got {self.groups}")

    def output_length(self, length: Sequence[int]) -> tuple[int, ...]:
        """Output length per axis for input length per axis."""
        return tuple(
            (h - 1) * r - 2 * p + d * (k - 1) + op + 1
            for h, k, r, p, op, d in zip(
                length, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation, strict=True
            )
        )

    def describe(self) -> str:
        parts = [f"k{_fmt(self.kernel_size)}", f"s{_fmt(self.stride)}", f"p{_fmt(self.padding)}"]
        if any(self.output_padding):
            parts.append(f"op{_fmt(self.output_padding)}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"d{_fmt(self.dilation)}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        return " ".join(parts)


def _fmt(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


@dataclass(frozen=True)
class Tap:
    """One source tap of one phase: where it comes from and where it lands."""

    phase: int
    source: int
    offset: int


@dataclass(frozen=True)
class AxisPlan:
    """The phase decomposition of one axis, independent of any target geometry."""

    kernel: int
    stride: int
    padding: int
    output_padding: int
    dilation: int
    taps: tuple[Tap, ...]

    @classmethod
    def build(cls, k: int, r: int, p: int, op: int, d: int) -> AxisPlan:
        taps = []
        for s in range(r):
            for t in range(k):
                num = s + p - t * d
                if num % r == 0:
                    taps.append(Tap(phase=s, source=t, offset=num // r))
        return cls(kernel=k, stride=r, padding=p, output_padding=op, dilation=d, taps=tuple(taps))

    @property
    def min_offset(self) -> int:
        return min(t.offset for t in self.taps)

    @property
    def max_offset(self) -> int:
        return max(t.offset for t in self.taps)

    @property
    def extra_cells(self) -> int:
        """``ceil(L / r) - H``: how many more conv cells than input cells are needed (H-free)."""
        return -1 + math.ceil(
            (self.dilation * (self.kernel - 1) + self.output_padding + 1 - 2 * self.padding) / self.stride
        )

    def source_length(self, h: int) -> int:
        return (h - 1) * self.stride - 2 * self.padding + self.dilation * (self.kernel - 1) + self.output_padding + 1


@dataclass(frozen=True)
class TargetGeometry:
    """A stride-1 target convolution: kernel and (possibly asymmetric) zero padding per axis."""

    kernel_size: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]

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
        if self.symmetric:
            return f"{k} pad {_fmt(self.pad_before)}"
        pads = ",".join(f"{b}/{a}" for b, a in zip(self.pad_before, self.pad_after, strict=True))
        return f"{k} pad {pads}"


@dataclass(frozen=True)
class OutsideTap:
    axis: int
    phase: int
    source: int
    lands_on: int
    kernel: int


@dataclass(frozen=True)
class SubPixelPlan:
    """A transposed convolution placed into a stride-1 conv + pixel shuffle (+ crop)."""

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
    def crop(self) -> tuple[int, ...]:
        """Cells cropped from the end of each axis after the shuffle (independent of input size)."""
        out = []
        for ax, K, pb, pa in zip(
            self.axes, self.target.kernel_size, self.target.pad_before, self.target.pad_after, strict=True
        ):
            conv_minus_h = pb + pa - K + 1
            src_minus_rh = -ax.stride - 2 * ax.padding + ax.dilation * (ax.kernel - 1) + ax.output_padding + 1
            out.append(ax.stride * conv_minus_h - src_minus_rh)
        return tuple(out)

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


def plan_axes(source: TransposedConv) -> tuple[AxisPlan, ...]:
    return tuple(
        AxisPlan.build(k, r, p, op, d)
        for k, r, p, op, d in zip(
            source.kernel_size, source.stride, source.padding, source.output_padding, source.dilation, strict=True
        )
    )


def smallest(source: TransposedConv, mode: Mode = "symmetric") -> SubPixelPlan:
    """The smallest exact target geometry.

    ``symmetric``: one padding per axis (what ``nn.ConvNd(padding=P)`` takes).
    ``tight``: the smallest kernel, with padding before and after chosen separately.
    """
    axes = plan_axes(source)
    ks, pbs, pas = [], [], []
    for ax in axes:
        lo, hi, extra = ax.min_offset, ax.max_offset, ax.extra_cells
        if mode == "symmetric":
            P = max(-lo, extra + hi, 0)
            K = P + hi + 1
            pb = pa = P
        else:
            pb = max(-lo, 0)
            K = hi + pb + 1
            pa = max(extra + K - 1 - pb, 0)
        ks.append(K)
        pbs.append(pb)
        pas.append(pa)
    target = TargetGeometry(tuple(ks), tuple(pbs), tuple(pas))
    result = fit(source, target)
    assert result.exact, result.reasons  # the formulas above guarantee it; fit() re-checks
    return result


def fit(source: TransposedConv, target: TargetGeometry | tuple[IntOrSeq, IntOrSeq]) -> SubPixelPlan:
    """Place ``source`` into a given target geometry and say whether that is exact, and if not why.

    ``target`` is a :class:`TargetGeometry` or ``(kernel_size, padding)`` with symmetric padding.
    """
    if not isinstance(target, TargetGeometry):
        kernel, padding = target
        ks = _per_axis(kernel, source.rank, "target kernel_size")
        ps = _per_axis(padding, source.rank, "target padding")
        target = TargetGeometry(ks, ps, ps)
    if len(target.kernel_size) != source.rank:
        raise GeometryError(f"target has {len(target.kernel_size)} axes, the layer has {source.rank}")
    for K, pb, pa in zip(target.kernel_size, target.pad_before, target.pad_after, strict=True):
        if K < 1 or pb < 0 or pa < 0:
            raise GeometryError(f"target kernel must be >= 1 and padding >= 0 (got kernel {K}, padding {pb}/{pa})")
    axes = plan_axes(source)
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
    plan = SubPixelPlan(
        source=source, axes=axes, target=target, outside=tuple(outside), short_axes=tuple(short), reasons=tuple(reasons)
    )
    return plan


def explain_mismatch(plan: SubPixelPlan) -> str:
    """One sentence: why ``plan`` is not exact and which geometry would be."""
    if plan.exact:
        return "exact"
    best = smallest(plan.source)
    tight = smallest(plan.source, "tight")
    hint = f"exact needs a {_conv_words(best.target)}{_crop_words(best)}"
    if tight.target != best.target:
        hint += f" (or a {_conv_words(tight.target)}{_crop_words(tight)})"
    return f"{'; '.join(plan.reasons)}; {hint}"


def _crop_words(plan: SubPixelPlan) -> str:
    return f", cropping {_fmt(plan.crop)} cell(s) at the end" if any(plan.crop) else ""


def _conv_words(target: TargetGeometry) -> str:
    k = "x".join(map(str, target.kernel_size))
    if target.symmetric:
        return f"{k} conv with padding {_fmt(target.pad_before)}"
    per_axis = [f"{b} before and {a} after" for b, a in zip(target.pad_before, target.pad_after, strict=True)]
    if len(set(per_axis)) == 1:
        return f"{k} conv with padding {per_axis[0]}"
    return f"{k} conv with padding " + "; ".join(f"axis {i}: {p}" for i, p in enumerate(per_axis))


def subpixel_to_transposed(kernel_size: IntOrSeq, padding: IntOrSeq, stride: IntOrSeq, rank: int) -> TransposedConv:
    """The transposed convolution equal to a stride-1 conv (kernel ``K``, padding ``P``) + shuffle ``r``.

    Kernel ``K*r``, padding ``(K-1-P)*r``: tap ``(s, j)`` of the conv is source tap ``s + (K-1-j)*r``.
    Valid while ``P <= K-1`` (a transposed conv cannot have negative padding).
    """
    ks = _per_axis(kernel_size, rank, "kernel_size")
    ps = _per_axis(padding, rank, "padding")
    rs = _per_axis(stride, rank, "stride")
    for K, P in zip(ks, ps, strict=True):
        if P > K - 1:
            raise GeometryError(f"conv padding {P} exceeds kernel-1 = {K - 1}: no transposed conv has this geometry")
    return TransposedConv.make(
        kernel_size=tuple(K * r for K, r in zip(ks, rs, strict=True)),
        stride=rs,
        padding=tuple((K - 1 - P) * r for K, P, r in zip(ks, ps, rs, strict=True)),
        rank=rank,
    )
