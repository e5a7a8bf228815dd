"""ConvTranspose attributes, resolved into per-axis padding at the two ends.

ONNX defines (per spatial axis, input length ``H``, full length ``F = (H-1)*r + d*(k-1) + 1``):

- explicit ``pads`` (``auto_pad`` NOTSET): output ``F + op - begin - end`` cells, i.e. the full
  output (plus ``op`` cells of bias alone at the end) cropped ``begin`` cells at the start and
  ``end`` at the end; ``VALID`` is pads 0.
- ``SAME_UPPER``/``SAME_LOWER``: output ``H*r``; total padding ``op + d*(k-1) + 1 - r`` (the same
  for every ``H``), split ``total // 2`` at the start for SAME_UPPER (the odd cell at the end),
  ``total - total // 2`` for SAME_LOWER.
- ``output_shape`` (``pads`` ignored): total padding ``F + op - out`` (depends on ``H``), split as
  SAME_UPPER for SAME_UPPER and as SAME_LOWER otherwise.

A negative total padding has no agreed meaning (ONNX Runtime clamps it to zero and returns a
shorter output, the ONNX reference pads the input): such nodes are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


class Unsupported(Exception):
    """A node that is left as it is; the message says why (it goes into the report)."""


AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class ConvTransposeAttrs:
    """A ConvTranspose node's attributes with ONNX defaults filled in (one value per spatial axis)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int
    output_padding: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    auto_pad: str
    output_shape: tuple[int, ...] | None

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def same_total(self) -> tuple[int, ...]:
        """Total padding of SAME_UPPER/SAME_LOWER (independent of the input length)."""
        return tuple(
            op + d * (k - 1) + 1 - r
            for k, r, d, op in zip(self.kernel, self.strides, self.dilations, self.output_padding, strict=True)
        )

    def shape_total(self, length: tuple[int, ...]) -> tuple[int, ...]:
        """Total padding that ``output_shape`` implies for input lengths ``length``."""
        assert self.output_shape is not None
        return tuple(
            (h - 1) * r + op + d * (k - 1) + 1 - out
            for h, k, r, d, op, out in zip(
                length, self.kernel, self.strides, self.dilations, self.output_padding, self.output_shape, strict=True
            )
        )

    def split(self, total: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Split total paddings into (begin, end) the way ONNX does for ``auto_pad``/``output_shape``."""
        if self.auto_pad == "SAME_UPPER":
            begin = tuple(t // 2 for t in total)
        else:
            begin = tuple(t - t // 2 for t in total)
        return begin, tuple(t - b for t, b in zip(total, begin, strict=True))

    def describe(self) -> str:
        parts = [f"k{_fmt(self.kernel)}", f"s{_fmt(self.strides)}"]
        if self.output_shape is not None:
            parts.append(f"output_shape {_fmt(self.output_shape)}")
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            parts.append(self.auto_pad)
        elif any(self.pads_begin) or any(self.pads_end):
            if self.pads_begin == self.pads_end:
                parts.append(f"p{_fmt(self.pads_begin)}")
            else:
                parts.append("p" + ",".join(f"{b}/{e}" for b, e in zip(self.pads_begin, self.pads_end, strict=True)))
        if self.output_shape is not None and self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            parts.append(self.auto_pad)
        if any(self.output_padding):
            parts.append(f"op{_fmt(self.output_padding)}")
        if any(d != 1 for d in self.dilations):
            parts.append(f"d{_fmt(self.dilations)}")
        if self.group != 1:
            parts.append(f"g{self.group}")
        return " ".join(parts)


def _fmt(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def parse_attrs(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> ConvTransposeAttrs:
    """Read ``node``'s attributes against its weight's shape; raise :class:`Unsupported` if invalid."""
    from onnx import helper

    raw = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(weight_shape) - 2
    if rank not in (1, 2, 3):
        raise Unsupported(f"weight of shape {weight_shape} has {rank} spatial axes; only 1, 2 or 3 are supported")

    def ints(name: str, default: int, count: int = rank) -> tuple[int, ...]:
        if name not in raw:
            return (default,) * count
        values = tuple(int(v) for v in raw[name])
        if len(values) != count:
            raise Unsupported(f"{name} has {len(values)} values, expected {count}")
        return values

    kernel = ints("kernel_shape", 0)
    if "kernel_shape" in raw and kernel != weight_shape[2:]:
        raise Unsupported(f"kernel_shape {kernel} does not match the weight's {weight_shape[2:]}")
    kernel = tuple(weight_shape[2:])
    strides, dilations = ints("strides", 1), ints("dilations", 1)
    output_padding = ints("output_padding", 0)
    pads = ints("pads", 0, 2 * rank)
    auto_pad = raw.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    group = int(raw.get("group", 1))
    output_shape = tuple(int(v) for v in raw["output_shape"]) if "output_shape" in raw else None
    if auto_pad not in AUTO_PADS:
        raise Unsupported(f"auto_pad {auto_pad!r} is not one of {', '.join(AUTO_PADS)}")
    if output_shape is not None and len(output_shape) != rank:
        raise Unsupported(f"output_shape has {len(output_shape)} values, expected {rank} (the spatial axes)")
    if min(strides + dilations + kernel) < 1 or group < 1 or min(pads + output_padding) < 0:
        raise Unsupported("strides, dilations, kernel and group must be >= 1, pads and output_padding >= 0")
    for op, r, d in zip(output_padding, strides, dilations, strict=True):
        if op >= max(r, d):
            raise Unsupported(f"output_padding {op} must be smaller than max(stride, dilation) = {max(r, d)}")
    if weight_shape[0] % group:
        raise Unsupported(f"the weight's {weight_shape[0]} input channels do not divide into {group} groups")
    if auto_pad != "NOTSET" or output_shape is not None:
        pads = (0,) * (2 * rank)
    return ConvTransposeAttrs(
        kernel=kernel,
        strides=strides,
        dilations=dilations,
        group=group,
        output_padding=output_padding,
        pads_begin=pads[:rank],
        pads_end=pads[rank:],
        auto_pad=auto_pad,
        output_shape=output_shape,
    )


@dataclass(frozen=True)
class Padding:
    """Per-axis cells cropped from the full output at the start (``begin``) and end (``end``),
    with ``output_padding`` cells of bias alone appended first. ``begin``/``end`` are None when
    they depend on the input length (``output_shape`` with a dynamic input): then the crop is
    computed in the graph from the input's shape."""

    begin: tuple[int, ...] | None
    end: tuple[int, ...] | None

    @property
    def dynamic(self) -> bool:
        return self.begin is None


def resolve_padding(attrs: ConvTransposeAttrs, length: tuple[int | None, ...]) -> Padding:
    """The crop at both ends for input lengths ``length`` (None where unknown)."""
    if attrs.output_shape is not None:
        if any(h is None for h in length):
            return Padding(None, None)
        total = attrs.shape_total(tuple(int(h) for h in length if h is not None))
        if min(total) < 0:
            raise Unsupported(
                f"output_shape {attrs.output_shape} is longer than the full output (total padding {total}); "
                "runtimes disagree on its meaning"
            )
        return Padding(*attrs.split(total))
    if attrs.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = attrs.same_total()
        if min(total) < 0:
            raise Unsupported(
                f"{attrs.auto_pad} with kernel {attrs.kernel} smaller than the stride {attrs.strides} needs "
                "negative padding; runtimes disagree on its meaning"
            )
        return Padding(*attrs.split(total))
    return Padding(attrs.pads_begin, attrs.pads_end)
