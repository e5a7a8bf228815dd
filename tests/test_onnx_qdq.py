"""Quantized graphs: DequantizeLinear(int weight) -> ConvTranspose becomes DequantizeLinear -> Conv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_cases import convtranspose_model, op_types, random_input, relative_error, run, save  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

from deconv2shuffle.onnx_graph import migrate_onnx  # noqa: E402


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, shape: list[int]) -> None:
        self._it = iter([{"x": random_input(shape, seed=s)} for s in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _conv_weight_dq(model: onnx.ModelProto) -> onnx.NodeProto:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return next(n for n in model.graph.node if n.output[0] == conv.input[1])


@pytest.mark.parametrize("channels", [(4, 6), (32, 48)], ids=["small", "streamed"])  # 24 KiB of int8: deferred
@pytest.mark.parametrize("weight_type", [QuantType.QInt8, QuantType.QUInt8], ids=["int8", "uint8"])
def test_quantize_static_per_channel_gives_identical_outputs(
    tmp_path: Path, weight_type: QuantType, channels: tuple[int, int]
) -> None:
    shape = [1, channels[0], 6, 7]
    model = convtranspose_model(
        kernel=4,
        attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]},
        lengths=shape[2:],
        c_in=channels[0],
        c_out=channels[1],
    )
    float_path = save(model, tmp_path / "float.onnx")
    src = tmp_path / "q.onnx"
    quantize_static(
        str(float_path),
        str(src),
        _Batches(shape),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=weight_type,
        activation_type=QuantType.QUInt8,
    )
    dst = tmp_path / "out.onnx"
    report = migrate_onnx(src, dst, tolerance=0.0)
    assert report.ok and report.nodes[0].quantized and report.nodes[0].status == "converted"
    assert report.end_to_end is not None and report.end_to_end["max_rel_error"] == 0.0
    assert "ConvTranspose" not in op_types(dst)
    for seed in range(5):
        x = random_input(shape, seed=10 + seed)
        [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
        np.testing.assert_array_equal(want, got)

    before, after = onnx.load(str(src)), onnx.load(str(dst))
    old_dq = next(n for n in before.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith("w"))
    q_old = _initializer(before, old_dq.input[0])
    zp_old = _initializer(before, old_dq.input[2])
    new_dq = _conv_weight_dq(after)
    assert {a.name: helper.get_attribute_value(a) for a in new_dq.attribute}["axis"] == 0
    q_new, scale_new, zp_new = (_initializer(after, name) for name in new_dq.input)
    rows = 4 * channels[1]  # C_out * R
    assert q_new.dtype == q_old.dtype and q_new.shape == (rows, channels[0], 2, 2)
    # bit for bit: every old value lands exactly once; every other tap is its channel's zero point
    assert scale_new.shape == zp_new.shape == (rows,)
    np.testing.assert_array_equal(zp_new, np.repeat(zp_old, 4))
    assert sorted(q_new.reshape(-1).tolist()) == sorted(q_old.reshape(-1).tolist())  # k4 s2 p1: no new taps
    scale_old = _initializer(before, old_dq.input[1])
    np.testing.assert_array_equal(scale_new, np.repeat(scale_old, 4))
    bias_dq = next(
        n for n in after.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in _conv_inputs(after)
    )
    assert _initializer(after, bias_dq.input[0]).shape == (rows,)


def _conv_inputs(model: onnx.ModelProto) -> list[str]:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return list(conv.input[2:])


def _qdq_model(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, attrs: dict[str, Any], shape: list[int]
) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(q, "wq"),
        numpy_helper.from_array(scale, "ws"),
        numpy_helper.from_array(zero, "wz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq", axis=axis),
        helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(shape))],
        inits,
    )
    opset = 21 if q.dtype.itemsize > 1 else 17  # 16-bit DequantizeLinear is opset 21
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("dtype", "axis", "group", "attrs"),
    [
        ("uint8", None, 1, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
        ("uint8", 1, 2, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1], "group": 2}),
        ("int8", 0, 1, {"strides": [3, 2], "pads": [0, 1, 2, 0]}),
        ("int16", 1, 1, {"strides": [2, 2], "dilations": [2, 2]}),
        ("uint8", "1-d", 1, {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ],
    ids=["per-tensor-uint8-new-taps", "per-channel-groups", "per-input-channel", "int16-dilation", "one-scale-in-1d"],
)
def test_hand_built_qdq_layouts(tmp_path: Path, dtype: str, axis: Any, group: int, attrs: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(np.dtype(dtype))
    c_in, c_out_g, k = 4, 3, 3
    q = rng.integers(info.min, info.max, (c_in, c_out_g, k, k), endpoint=True).astype(dtype)
    count = {None: 1, "1-d": 1, 0: c_in, 1: c_out_g}[axis]
    scale = rng.uniform(0.01, 0.1, count).astype(np.float32)
    zero = rng.integers(info.min // 2 + info.max // 4, info.max // 2 + 2, count).astype(dtype)
    if axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    if axis == "1-d":  # one scale, but in a 1-D tensor: still per tensor
        axis = None
    shape = [1, c_in, 5, 6]
    src = save(_qdq_model(q, scale, zero, 1 if axis is None else axis, attrs, shape), tmp_path / "in.onnx")
    dst = tmp_path / "out.onnx"
    report = migrate_onnx(src, dst)
    assert report.nodes[0].status == "converted", report.nodes[0].reason
    x = random_input(shape)
    [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
    assert relative_error(want, got) <= 1e-5
    after = onnx.load(str(dst))
    new_dq = _conv_weight_dq(after)
    q_new = _initializer(after, new_dq.input[0])
    assert q_new.dtype == q.dtype and q_new.size > q.size
    new_axis = {a.name: helper.get_attribute_value(a) for a in new_dq.attribute}.get("axis", 1)
    assert new_axis == {None: 1, 0: 1, 1: 0}[axis]
    # every old tap moved once, bit for bit; every new tap dequantizes to exactly 0
    old = _dequantized(q, scale, zero, 1 if axis is None else axis)
    new = _dequantized(q_new, *(_initializer(after, n) for n in new_dq.input[1:]), new_axis)
    np.testing.assert_array_equal(np.sort(new), np.sort(np.concatenate([old, np.zeros(new.size - old.size)])))


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    z = zero.astype(np.float64).reshape(shape)
    return ((q.astype(np.float64) - z) * scale.astype(np.float64).reshape(shape)).reshape(-1)
