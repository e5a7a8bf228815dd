"""Small ONNX models with ConvTranspose nodes, built with onnx.helper, and ONNX Runtime helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def convtranspose_model(
    *,
    rank: int = 2,
    c_in: int = 4,
    c_out: int = 6,
    kernel: int | Sequence[int] = 3,
    attrs: dict[str, Any] | None = None,
    bias: bool = True,
    lengths: Sequence[int] | None = None,
    weight_as: str = "initializer",
    opset: int = 17,
    seed: int = 0,
    name: str = "up",
) -> onnx.ModelProto:
    """Relu -> ConvTranspose -> Sigmoid. ``lengths`` None: batch and spatial axes are dynamic."""
    attrs = dict(attrs or {})
    group = int(attrs.get("group", 1))
    ks = [kernel] * rank if isinstance(kernel, int) else list(kernel)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_in, c_out // group, *ks)).astype(np.float32)
    inits = []
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="pre")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, _shape(c_in, rank, lengths))]
    if weight_as == "initializer":
        inits.append(numpy_helper.from_array(w, "w"))
    elif weight_as == "constant":
        nodes.append(helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w, "w")))
    elif weight_as == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    conv_inputs = ["h", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes.append(helper.make_node("ConvTranspose", conv_inputs, ["u"], name=name, **attrs))
    nodes.append(helper.make_node("Sigmoid", ["u"], ["y"], name="post"))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (rank + 2))
    graph = helper.make_graph(nodes, "g", inputs, [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _shape(channels: int, rank: int, lengths: Sequence[int] | None) -> list[Any]:
    if lengths is None:
        return ["N", channels, *[f"L{i}" for i in range(rank)]]
    return [1, channels, *lengths]


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def random_input(shape: Sequence[int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(list(shape)).astype(np.float32)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return err / scale if scale else err


def op_types(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
