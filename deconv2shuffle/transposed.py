"""The source layer: a transposed convolution's hyperparameters, in integers only.

Also the reverse question: which transposed convolution equals a given stride-1 conv + shuffle.
Nothing here knows about tensors, files or terminals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GeometryError

IntOrSeq = int | Sequence[int]


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
    """Hyperparameters of a ``ConvTranspose{1,2,3}d`` layer (one value per spatial axis).

    ``padding`` is cropped from the start of each axis and ``padding_end`` from its end; they
    differ only for layers torch cannot build (ONNX ``ConvTranspose`` with ``pads`` begin != end).
    Left empty, ``padding_end`` is ``padding``.
    """

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    padding_end: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.padding_end:
            object.__setattr__(self, "padding_end", self.padding)

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
        *,
        padding_end: IntOrSeq | None = None,
    ) -> TransposedConv:
        """Build and validate from ints or per-axis sequences (the rank comes from the kernel).

        ``padding_end`` (default: ``padding``) crops the end of each axis separately: ONNX
        ``pads=[b1, b2, e1, e2]`` is ``padding=(b1, b2), padding_end=(e1, e2)``.
        """
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
            padding_end=() if padding_end is None else _per_axis(padding_end, rank, "padding_end"),
        )
        geo.validate()
        return geo

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def symmetric_padding(self) -> bool:
        """Whether torch's ``ConvTranspose*d`` can hold this layer (same padding at both ends)."""
        return self.padding == self.padding_end

    def validate(self) -> None:
        if len(self.padding_end) != self.rank:
            raise GeometryError(f"padding_end has {len(self.padding_end)} values but the layer has {self.rank} axes")
        for k, r, p, op, d, pe in zip(
            self.kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
            self.padding_end,
            strict=True,
        ):
            if k < 1 or r < 1 or d < 1:
                raise GeometryError(f"kernel_size, stride and dilation must be >= 1 (got k={k}, stride={r}, d={d})")
            if p < 0 or op < 0 or pe < 0:
                raise GeometryError(f"padding and output_padding must be >= 0 (got p={p}, op={op}, padding_end={pe})")
            if op >= max(r, d):
                raise GeometryError(
                    f"output_padding {op} must be smaller than stride {r} or dilation {d} (torch's own rule)"
                )
        if self.groups < 1:
            raise GeometryError(f"groups must be >= 1, got {self.groups}")

    def output_length(self, length: Sequence[int]) -> tuple[int, ...]:
        """Output length per axis for input length per axis."""
        return tuple(
            (h - 1) * r - p - pe + d * (k - 1) + op + 1
            for h, k, r, p, pe, op, d in zip(
                length,
                self.kernel_size,
                self.stride,
                self.padding,
                self.padding_end,
                self.output_padding,
                self.dilation,
                strict=True,
            )
        )

    def describe(self) -> str:
        pads = _fmt(self.padding)
        if not self.symmetric_padding:
            pads = _fmt_pairs(self.padding, self.padding_end)
        parts = [f"k{_fmt(self.kernel_size)}", f"s{_fmt(self.stride)}", f"p{pads}"]
        if any(self.output_padding):
            parts.append(f"op{_fmt(self.output_padding)}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"d{_fmt(self.dilation)}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        return " ".join(parts)


def _fmt(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _fmt_pairs(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    pairs = [f"{b}/{a}" for b, a in zip(before, after, strict=True)]
    return pairs[0] if len(set(pairs)) == 1 else ",".join(pairs)


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
