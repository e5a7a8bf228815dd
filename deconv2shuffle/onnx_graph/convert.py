"""Planning and rewriting ConvTranspose nodes, one at a time.

A node is planned when its weight (and bias, if any) are constants: an initializer, a Constant
node, or a DequantizeLinear of those. Anything else is left as it is, with the reason in the
report. Rewriting replaces the node, at its place in the graph, by (DequantizeLinear ->) Conv ->
shuffle -> crop; the last node writes the ConvTranspose's own output name, so every consumer,
graph output and value_info stays valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from ..errors import VerificationError
from .attrs import ConvTransposeAttrs, Padding, Unsupported, parse_attrs, resolve_padding
from .build import Emitter, conv_lengths, emit_conv, emit_crop, emit_shape_crop, emit_shuffle
from .graph import FLOATS, GraphIndex, Names, to_torch, type_name
from .lower import Lowering, lower
from .qdq import Quantized, dequantize, fill_new_taps, read_dequantize, weight_layout
from .report import OnnxNodeResult
from .verify import check_lengths, check_node


@dataclass
class Operand:
    """A constant weight or bias: the value the node reads, the tensor, and its DequantizeLinear if any.

    ``stored``: the name of the main-graph initializer that is ``tensor`` (None for a Constant node).
    """

    value: str
    tensor: TensorProto
    quant: Quantized | None = None
    stored: str | None = None


@dataclass
class NodePlan:
    position: int
    node: onnx.NodeProto
    attrs: ConvTransposeAttrs
    padding: Padding
    lengths: tuple[int | None, ...]
    weight: Operand
    bias: Operand | None
    result: OnnxNodeResult


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"ConvTranspose -> {node.output[0]}"


def _operand(name: str, index: GraphIndex, role: str) -> Operand:
    producer = index.producers.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.domain in ("", "ai.onnx"):
        quant = read_dequantize(producer, index, role)
        q = producer.input[0]
        return Operand(name, quant.q, quant, q if index.initializers.get(q) is quant.q else None)
    tensor = index.constant(name, role)
    if tensor.data_type not in FLOATS:
        raise Unsupported(f"{role} {name!r} has element type {type_name(tensor.data_type)}")
    return Operand(name, tensor, stored=name if index.initializers.get(name) is tensor else None)


def plan_node(
    position: int, node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, tuple[int | None, ...]]
) -> NodePlan | OnnxNodeResult:
    """Plan one ConvTranspose, or say (in a result with status ``left``) why it stays."""
    weight_shape = tuple(int(d) for d in index.initializers.get(node.input[1], TensorProto()).dims)
    result = OnnxNodeResult(
        node=node_label(node), status="left", old_geometry="ConvTranspose", weight=node.input[1], weight_shape=[]
    )
    try:
        weight = _operand(node.input[1], index, "weight")
        weight_shape = tuple(int(d) for d in weight.tensor.dims)
        result.weight_shape, result.quantized = list(weight_shape), weight.quant is not None
        attrs = parse_attrs(node, weight_shape)
        result.old_geometry = f"ConvTranspose{attrs.rank}d {attrs.describe()}"
        if weight.quant is not None:
            weight_layout(weight.quant, attrs.group)  # raises for layouts the Conv cannot hold
        bias = _operand(node.input[2], index, "bias") if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            _bias_vectors(bias.quant)
        if bias is not None and tuple(bias.tensor.dims) != (weight_shape[1] * attrs.group,):
            raise Unsupported(
                f"bias shape {tuple(bias.tensor.dims)} does not match {weight_shape[1] * attrs.group} channels"
            )
        full = shapes.get(node.input[0])
        lengths: tuple[int | None, ...] = (None,) * attrs.rank
        if full is not None and len(full) == attrs.rank + 2:
            lengths = full[2:]
        padding = resolve_padding(attrs, lengths)
    except Unsupported as e:
        result.reason = str(e)
        result.weight_shape = list(weight_shape)
        return result
    return NodePlan(position, node, attrs, padding, lengths, weight, bias, result)


def geometry(plan: NodePlan) -> Lowering:
    """The lowering without weights (for inspection and opset decisions)."""
    a, (begin, end) = plan.attrs, _static_padding(plan)
    return lower(a.kernel, a.strides, a.dilations, a.group, a.output_padding, begin, end)


def _static_padding(plan: NodePlan) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Crops handed to the engine: the node's own, or none (the graph computes them) when dynamic."""
    if plan.padding.begin is None or plan.padding.end is None:
        zeros = (0,) * plan.attrs.rank
        return zeros, zeros
    return plan.padding.begin, plan.padding.end


def emitter(plan: NodePlan, graph: onnx.GraphProto, names: Names, opset: int) -> Emitter:
    """The emitter for one node's replacement (new names derive from the node's name)."""
    node = plan.node
    return Emitter(graph, names, opset, base=node.name or names.fresh(f"ConvTranspose_{node.output[0]}"))


def rewrite_node(
    plan: NodePlan, em: Emitter, *, verify: bool, seed: int, read: Mapping[str, Any] | None = None
) -> None:
    """Build the replacement of one planned node into ``em``; checks it in float64 first when ``verify``.

    ``read``: initializers' bytes already read (by name), used instead of copying them again.
    Raises :class:`Unsupported` for what only shows now (the caller leaves the node as it is).
    """
    a, node = plan.attrs, plan.node
    begin, end = _static_padding(plan)
    w, wq = _values(plan.weight, read or {}), plan.weight.quant
    b = None if plan.bias is None else _values(plan.bias, read or {})
    bq = None if plan.bias is None else plan.bias.quant
    layout = weight_layout(wq, a.group) if wq is not None else None
    vectors = list(layout.vectors) if layout is not None else []
    bias_vectors = _bias_vectors(bq)
    low = lower(
        a.kernel, a.strides, a.dilations, a.group, a.output_padding, begin, end, w, b,
        channel_vectors=vectors + bias_vectors, want_placed=wq is not None,
    )  # fmt: skip
    assert low.weight is not None
    new_w = low.weight
    if wq is not None and layout is not None:
        assert low.placed is not None
        fill = low.channels[1] if layout.new_axis == 0 else layout.fill
        new_w = fill_new_taps(new_w, low.placed, fill, layout.new_axis)
    if verify:
        _verify(plan, low, (w, b), (new_w, low.bias), layout.new_axis if layout else None, seed)
    weight_in = _weight_input(em, plan.weight, new_w, low.channels[: len(vectors)], layout.new_axis if layout else None)
    bias_in = None
    if plan.bias is not None and low.bias is not None:
        bias_in = _weight_input(em, plan.bias, low.bias, low.channels[len(vectors) :], 0 if bias_vectors else None)
    y = node.output[0]
    crop = plan.padding.dynamic or any(low.crop_before) or any(low.crop_after)
    last_shuffle = low.phases > 1
    out = emit_conv(em, node.input[0], weight_in, bias_in, low, a.group, None if (crop or last_shuffle) else y)
    if last_shuffle:
        channels = a.group * int(plan.weight.tensor.dims[1])
        out = emit_shuffle(em, out, low, channels, conv_lengths(low, plan.lengths), None if crop else y)
    if plan.padding.dynamic:
        emit_shape_crop(em, node.input[0], out, low, a, y)
    elif crop:
        emit_crop(em, out, low, y)
    plan.result.status = "converted"
    kind = "DepthToSpace CRD" if any(n.op_type == "DepthToSpace" for n in em.nodes) else "Reshape/Transpose"
    plan.result.new_geometry = low.describe() + (f" ({kind})" if last_shuffle else "")
    plan.result.new_weight_shape = list(new_w.shape)
    plan.result.new_nodes = [n.name for n in em.nodes]
    plan.result.macs_ratio = low.macs_ratio


def _values(operand: Operand, read: Mapping[str, Any]) -> torch.Tensor:
    return to_torch(operand.tensor, read.get(operand.stored) if operand.stored is not None else None)


def _bias_vectors(bq: Quantized | None) -> list[torch.Tensor]:
    if bq is None or bq.axis is None:
        return []
    scale = to_torch(bq.scale).reshape(-1)
    zero = to_torch(bq.zero_point).reshape(-1) if bq.zero_point is not None else None
    if zero is None or zero.numel() != scale.numel():
        raise Unsupported("bias is quantized per channel without a zero point per channel")
    return [scale, zero]


def _weight_input(
    em: Emitter, operand: Operand, values: torch.Tensor, vectors: tuple[torch.Tensor, ...], axis: int | None
) -> str:
    """The new constant (or DequantizeLinear of new constants) the Conv reads."""
    name = em.tensor(f"{operand.value}_subpixel", values, operand.tensor.data_type)
    quant = operand.quant
    if quant is None:
        return name
    scale, zero = quant.node.input[1], quant.node.input[2] if len(quant.node.input) > 2 else ""
    if vectors:
        scale = em.tensor(f"{quant.node.input[1]}_subpixel", vectors[0], quant.scale.data_type)
        if zero and quant.zero_point is not None:
            zero = em.tensor(f"{quant.node.input[2]}_subpixel", vectors[1], quant.zero_point.data_type)
    attrs = {a.name: helper.get_attribute_value(a) for a in quant.node.attribute if a.name != "axis"}
    if axis is not None:
        attrs["axis"] = axis
    inputs = [name, scale] + ([zero] if zero else [])
    return em.node("DequantizeLinear", inputs, "dequantize_weight" if values.dim() > 1 else "dequantize_bias", **attrs)


def _verify(
    plan: NodePlan,
    low: Lowering,
    old: tuple[torch.Tensor, torch.Tensor | None],
    new: tuple[torch.Tensor, torch.Tensor | None],
    new_axis: int | None,
    seed: int,
) -> None:
    a = plan.attrs
    w64, b64 = _float64(old[0], plan.weight), None if old[1] is None else _float64(old[1], plan.bias)
    nw64 = _float64(new[0], plan.weight, new_axis, low.channels[:2] if new_axis == 0 else None)
    nb64 = None
    if new[1] is not None and plan.bias is not None:
        relaid = low.channels[-2:] if plan.bias.quant is not None and plan.bias.quant.axis is not None else None
        nb64 = _float64(new[1], plan.bias, 0 if relaid else None, relaid)
    if plan.padding.dynamic:
        lengths, check_low, pads = _dynamic_case(plan, low)
    else:
        assert plan.padding.begin is not None and plan.padding.end is not None
        pads = (plan.padding.begin, plan.padding.end)
        static = a.output_shape is not None and all(h is not None for h in plan.lengths)
        lengths = tuple(int(h or 0) for h in plan.lengths) if static else check_lengths(a, *pads)
        check_low = low
    err, rel = check_node(a, pads, check_low, (w64, b64), (nw64, nb64), lengths, seed)
    plan.result.max_abs_error, plan.result.max_rel_error = err, rel
    if not rel <= 1e-10:
        raise VerificationError(
            f"node {plan.result.node!r}: the rewrite differs from the ConvTranspose by {rel:.3g} relative in float64 "
            "(a bug in the rewrite); nothing was written"
        )


def _dynamic_case(
    plan: NodePlan, low: Lowering
) -> tuple[tuple[int, ...], Lowering, tuple[tuple[int, ...], tuple[int, ...]]]:
    """An input length valid for ``output_shape`` and the crop the graph computes for it."""
    a = plan.attrs
    lengths = []
    for i in range(a.rank):
        h = 2
        while a.shape_total(tuple(h if j == i else 10**6 for j in range(a.rank)))[i] < 0:
            h += 1
        lengths.append(h)
    begin, end = a.split(a.shape_total(tuple(lengths)))
    moved = dataclasses.replace(
        low,
        crop_before=tuple(c + b for c, b in zip(low.crop_before, begin, strict=True)),
        crop_after=tuple(c + e for c, e in zip(low.crop_after, end, strict=True)),
    )
    return tuple(lengths), moved, (begin, end)


def _float64(
    values: torch.Tensor,
    operand: Operand | None,
    axis: int | None = None,
    relaid: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """Values as the graph sees them: float weights as they are (the check converts what it samples),
    quantized ones dequantized in float64 with the given or the original parameters."""
    if operand is None or operand.quant is None:
        return values
    quant = operand.quant
    if relaid is not None:
        return dequantize(values, dataclasses.replace(quant, axis=axis), relaid[0], relaid[1])
    zero = to_torch(quant.zero_point) if quant.zero_point is not None else None
    return dequantize(
        values, dataclasses.replace(quant, axis=axis) if axis is not None else quant, to_torch(quant.scale), zero
    )
