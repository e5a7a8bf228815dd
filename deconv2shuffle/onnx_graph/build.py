"""Emitting the nodes that replace one ConvTranspose: Conv, pixel shuffle, crop.

Pixel shuffle. The Conv's output channel ``o*R + phase`` (phase row-major over the axes) holds
output channel ``o`` at offset ``phase``. For 2D with one factor that is ONNX ``DepthToSpace`` in
``CRD`` mode (opset 11+). Otherwise: reshape ``(N, C*R, D1..Dn)`` to ``(N, C, r1..rn, D1..Dn)``,
transpose to ``(N, C, D1, r1, ..., Dn, rn)`` and reshape to ``(N, C, D1*r1, ..., Dn*rn)``.
Reshape shapes are constants when at most one spatial length is unknown (``0`` copies the batch,
``-1`` takes the unknown length), else computed from ``Shape``.

Crop. A ``Slice`` whose starts and ends are constants (negative ends count from the end), so it
holds for every input length; only ``output_shape`` with unknown input lengths needs its start
computed from the input's ``Shape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from .attrs import ConvTransposeAttrs, Unsupported
from .deferred import Deferred, should_defer
from .graph import Names, from_torch
from .lower import Lowering

INT64_MAX = 2**63 - 1


@dataclass
class Emitter:
    """Collects new nodes; adds new initializers straight to ``graph`` (a weight is copied only once).

    Every name is fresh and derived from ``base`` (the ConvTranspose's name).
    """

    graph: onnx.GraphProto
    names: Names
    opset: int
    base: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # initializers put into the graph
    deferred: Deferred | None = None  # large weights kept out of the protobuf

    def const(self, label: str, values: Sequence[int]) -> str:
        name = self.names.fresh(f"{self.base}/{label}")
        self.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values)))
        self.added.append(name)
        return name

    def tensor(self, base: str, values: torch.Tensor, data_type: int) -> str:
        name = self.names.fresh(base)
        proto = self.graph.initializer.add()
        if self.deferred is not None and should_defer(values, data_type):
            self.deferred.add(proto, name, data_type, values)
        else:
            from_torch(values, name, data_type, into=proto)
        self.added.append(name)
        return name

    def node(self, op: str, inputs: Sequence[str], label: str, output: str | None = None, **attrs: Any) -> str:
        out = output if output is not None else self.names.fresh(f"{self.base}/{label}_output")
        name = self.names.fresh(f"{self.base}/{label}")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out


def emit_conv(em: Emitter, x: str, weight: str, bias: str | None, low: Lowering, group: int, output: str | None) -> str:
    inputs = [x, weight] + ([bias] if bias else [])
    attrs: dict[str, Any] = {"kernel_shape": list(low.kernel), "pads": [*low.pads_before, *low.pads_after]}
    if group != 1:
        attrs["group"] = group
    return em.node("Conv", inputs, "conv", output, **attrs)


def emit_shuffle(
    em: Emitter, y: str, low: Lowering, channels: int, lengths: tuple[int | None, ...], output: str | None
) -> str:
    """Pixel shuffle of ``y`` (``channels*R`` channels, conv output lengths ``lengths``)."""
    factors = low.factors
    rank = len(factors)
    if rank == 2 and factors[0] == factors[1] and em.opset >= 11:
        return em.node("DepthToSpace", [y], "shuffle", output, blocksize=factors[0], mode="CRD")
    unknown = [i for i, n in enumerate(lengths) if n is None]
    if len(unknown) <= 1:
        first = em.const("shuffle_shape", [0, channels, *factors, *[-1 if n is None else n for n in lengths]])
        last = em.const(
            "unshuffle_shape",
            [0, channels, *[-1 if n is None else n * r for n, r in zip(lengths, factors, strict=True)]],
        )
    else:
        shape = em.node("Shape", [y], "shape")
        spatial = em.node("Gather", [shape, em.const("spatial_axes", list(range(2, 2 + rank)))], "lengths", axis=0)
        first = em.node("Concat", [em.const("shuffle_head", [0, channels, *factors]), spatial], "shuffle_shape", axis=0)
        grown = em.node("Mul", [spatial, em.const("factors", list(factors))], "grown")
        last = em.node("Concat", [em.const("unshuffle_head", [0, channels]), grown], "unshuffle_shape", axis=0)
    split = em.node("Reshape", [y, first], "shuffle_split")
    perm = [0, 1] + [a for i in range(rank) for a in (2 + rank + i, 2 + i)]
    moved = em.node("Transpose", [split], "shuffle_interleave", perm=perm)
    return em.node("Reshape", [moved, last], "shuffle_merge", output)


def emit_crop(em: Emitter, y: str, low: Lowering, output: str) -> str:
    """Constant crop of ``low.crop_before`` / ``low.crop_after`` cells on each spatial axis."""
    axes = [i for i, (b, a) in enumerate(zip(low.crop_before, low.crop_after, strict=True)) if b or a]
    starts = [low.crop_before[i] for i in axes]
    ends = [-low.crop_after[i] if low.crop_after[i] else INT64_MAX for i in axes]
    spatial = [2 + i for i in axes]
    if em.opset < 10:
        return em.node("Slice", [y], "crop", output, starts=starts, ends=ends, axes=spatial)
    inputs = [y, em.const("crop_starts", starts), em.const("crop_ends", ends), em.const("crop_axes", spatial)]
    return em.node("Slice", inputs, "crop", output)


def emit_shape_crop(em: Emitter, x: str, y: str, low: Lowering, attrs: ConvTransposeAttrs, output: str) -> str:
    """The crop of ``output_shape`` for input lengths known only at run time.

    Total padding ``H*r + (op + d*(k-1) + 1 - r - out)``, its start ``total // 2`` (SAME_UPPER)
    or ``total - total // 2``; the Slice keeps ``out`` cells from there.
    """
    if em.opset < 10:
        raise Unsupported(f"output_shape with unknown input sizes needs opset 10 or newer (the model has {em.opset})")
    assert attrs.output_shape is not None
    rank = attrs.rank
    spatial = list(range(2, 2 + rank))
    lengths = em.node("Gather", [em.node("Shape", [x], "input_shape"), em.const("spatial_axes", spatial)], "lengths")
    offset = [
        op + d * (k - 1) + 1 - r - out
        for k, r, d, op, out in zip(
            attrs.kernel, attrs.strides, attrs.dilations, attrs.output_padding, attrs.output_shape, strict=True
        )
    ]
    scaled = em.node("Mul", [lengths, em.const("strides", list(attrs.strides))], "scaled")
    total = em.node("Add", [scaled, em.const("pad_offset", offset)], "total_pad")
    half = em.node("Div", [total, em.const("two", [2] * rank)], "half_pad")
    head = half if attrs.auto_pad == "SAME_UPPER" else em.node("Sub", [total, half], "head_pad")
    starts = em.node("Add", [head, em.const("crop_before", list(low.crop_before))], "crop_starts")
    ends = em.node("Add", [starts, em.const("output_shape", list(attrs.output_shape))], "crop_ends")
    return em.node("Slice", [y, starts, ends, em.const("crop_axes", spatial)], "crop", output)


def conv_lengths(low: Lowering, lengths: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """Conv output lengths for input lengths ``lengths`` (None stays unknown)."""
    return tuple(
        None if h is None else h + b + a - k + 1
        for h, b, a, k in zip(lengths, low.pads_before, low.pads_after, low.kernel, strict=True)
    )
