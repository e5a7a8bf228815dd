"""Quantized weights (QDQ graphs): ``DequantizeLinear(q, scale, zero_point)`` feeding a ConvTranspose.

The integer tensor ``q`` is rearranged like a float weight, bit for bit; the taps the Conv has
and the ConvTranspose had not are set to the zero point, so they dequantize to exactly 0.

Per-channel axes differ between the two layouts. A ConvTranspose weight is
``(C_in, C_out/group, k...)``: its output-channel axis is 1 and holds ``C_out/group`` channels,
each scale serving that channel in every group. A Conv weight is ``(C_out*R, C_in/group, K...)``:
axis 0, one scale per new channel ``o*R + phase``. So scales (and zero points) along axis 1 are
first repeated for every group (``C_out`` values), then re-laid like the bias (each repeated
``R`` times), and the new DequantizeLinear gets ``axis=0``. Scales along ConvTranspose axis 0
(input channels) stay as they are and move to Conv axis 1, which only holds every input
channel when ``group == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch
from onnx import TensorProto, helper

from .attrs import Unsupported
from .graph import GraphIndex, to_torch, type_name

QUANT_TYPES = {
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
}


@dataclass(frozen=True)
class Quantized:
    """A DequantizeLinear of constants: the integer tensor, its scale and zero point, the axis."""

    node: onnx.NodeProto
    q: TensorProto
    scale: TensorProto
    zero_point: TensorProto | None
    axis: int | None  # None: per tensor

    def per_channel(self) -> bool:
        return self.axis is not None


def read_dequantize(node: onnx.NodeProto, index: GraphIndex, role: str) -> Quantized:
    """The constants behind a DequantizeLinear node; :class:`Unsupported` for anything else."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("block_size", 0)):
        raise Unsupported(f"{role} is dequantized blockwise (block_size {attrs['block_size']})")
    q = index.constant(node.input[0], f"quantized {role}")
    if q.data_type not in QUANT_TYPES:
        raise Unsupported(f"quantized {role} has element type {type_name(q.data_type)}, not supported")
    scale = index.constant(node.input[1], f"{role} scale")
    zp = index.constant(node.input[2], f"{role} zero point") if len(node.input) > 2 and node.input[2] else None
    count = 1
    for d in scale.dims:
        count *= int(d)
    axis = None
    if len(scale.dims) >= 1 and count > 1:
        axis = int(attrs.get("axis", 1))
        axis = axis + len(q.dims) if axis < 0 else axis
    return Quantized(node=node, q=q, scale=scale, zero_point=zp, axis=axis)


def dequantize(values: torch.Tensor, quant: Quantized, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float64, broadcast along the quantization axis."""
    s = scale.to(torch.float64).reshape(-1)
    z = torch.zeros(1, dtype=torch.float64) if zero is None else _ints(zero, quant.q.data_type).reshape(-1)
    if quant.axis is not None:
        shape = [1] * values.dim()
        shape[quant.axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.numel() > 1 else z
    return (_ints(values, quant.q.data_type) - z) * s


def _ints(values: torch.Tensor, data_type: int) -> torch.Tensor:
    """Integer values in float64; unsigned 16-bit data travels as int16 and is read back unsigned."""
    wide = values.to(torch.int64)
    if data_type == TensorProto.UINT16:
        wide = wide & 0xFFFF
    return wide.to(torch.float64)


@dataclass(frozen=True)
class WeightLayout:
    """How one quantized ConvTranspose weight maps to the Conv: the new axis and the vectors to re-lay."""

    new_axis: int | None
    vectors: tuple[torch.Tensor, ...]  # scale and zero point, C_out long, to re-lay like the bias
    fill: torch.Tensor  # the zero point, broadcastable to the new weight (before re-laying)


def weight_layout(quant: Quantized, group: int) -> WeightLayout:
    """Plan the per-channel parameters of a quantized ConvTranspose weight (see the module docstring)."""
    scale = to_torch(quant.scale)
    zero = to_torch(quant.zero_point) if quant.zero_point is not None else torch.zeros((), dtype=_carrier(quant.q))
    if quant.axis is None:
        return WeightLayout(None, (), zero.reshape(()))
    if quant.axis == 1:
        if scale.numel() != quant.q.dims[1]:
            raise Unsupported(f"weight scale has {scale.numel()} values for {quant.q.dims[1]} channels on axis 1")
        full = [scale.reshape(-1).repeat(group), zero.reshape(-1).expand(scale.numel()).repeat(group)]
        return WeightLayout(0, tuple(full), zero)
    if quant.axis == 0 and group == 1:
        shape = [1] * len(quant.q.dims)
        shape[1] = -1
        return WeightLayout(1, (), zero.reshape(-1).expand(scale.numel()).reshape(shape))
    raise Unsupported(
        f"weight is quantized per channel along axis {quant.axis} with group {group}; the Conv layout cannot hold it"
    )


def _carrier(tensor: TensorProto) -> torch.dtype:
    return to_torch(TensorProto(data_type=tensor.data_type, dims=[0])).dtype


def fill_new_taps(new_weight: torch.Tensor, placed: torch.Tensor, fill: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Set every weight entry that holds no source tap to the zero point (given per new channel on axis 0)."""
    if axis == 0:
        fill = fill.reshape(-1, *([1] * (new_weight.dim() - 1)))
    return torch.where(placed, new_weight, fill.to(new_weight.dtype))
