"""The whole model in ONNX Runtime: the original and the rewrite on the same random inputs.

Both run from memory, before anything is written: each model's :func:`~.files.skeleton` (large
initializers turned into graph inputs) is handed to ONNX Runtime, and the weights are fed as
inputs from arrays over the tensors' bytes. So ONNX Runtime neither parses nor copies hundreds of
megabytes twice, and weights both models share are read once. Graph optimisations and weight
prepacking are off: the graphs run as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import VerificationError
from .deferred import DEFERRABLE
from .files import skeleton

# element types whose weights travel as numpy inputs; others stay initializers of the skeleton
_FED = DEFERRABLE | {TensorProto.BOOL}
_NUMPY_OF = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass
class Reference:
    """The original model's outputs on random inputs, and the arrays of its weights."""

    feeds: dict[str, Any]
    shapes: dict[str, list[int]]
    names: list[str]
    outputs: list[Any]
    weights: dict[str, Any] = field(default_factory=dict)


def _array(tensor: TensorProto) -> Any:
    if tensor.HasField("raw_data"):
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


def _prepare(model: onnx.ModelProto, known: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A session over the model's skeleton, and the weights to feed it (reusing ``known`` arrays)."""
    import onnxruntime as ort

    sk = skeleton(model, movable=lambda t: t.data_type in _FED)
    moved = {v.name for v in sk.graph.input} - {v.name for v in model.graph.input}
    weights = {
        t.name: known[t.name] if t.name in known else _array(t) for t in model.graph.initializer if t.name in moved
    }
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(sk.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, weights


def _feeds(
    session: Any, weights: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], seed: int
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Random values for the graph's own inputs (unknown dimensions: 1 for the first, 8 for the others)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    used: dict[str, list[int]] = {}
    for arg in session.get_inputs():
        if arg.name in weights:
            continue
        if arg.name in shapes:
            shape = [int(d) for d in shapes[arg.name]]
        else:
            shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 8) for i, d in enumerate(arg.shape)]
        kind = _NUMPY_OF.get(arg.type)
        if kind is None:
            raise TypeError(f"input {arg.name!r} has type {arg.type}, which random inputs do not cover")
        if kind.startswith("float"):
            feeds[arg.name] = rng.standard_normal(shape).astype(kind)
        elif kind == "bool":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[arg.name] = rng.integers(0, 4, shape).astype(kind)
        used[arg.name] = shape
    return feeds, used


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:300] if text else type(e).__name__


def reference(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    known: Mapping[str, Any] | None = None,
) -> Reference | dict[str, Any]:
    """Run the original model on random inputs; a ``{"skipped": why}`` dict when that cannot be done.

    ``known``: arrays of initializers that are placeholders in ``model`` (see :mod:`.deferred`).
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"skipped": "onnxruntime is not installed; only the per-node float64 checks ran"}
    try:
        session, weights = _prepare(model, known or {})
        feeds, used = _feeds(session, weights, input_shapes or {}, seed)
        outputs = session.run(None, {**feeds, **weights})
    except Exception as e:  # the original itself does not run here: nothing to compare against
        return {
            "skipped": f"the original model does not run on random inputs in ONNX Runtime ({_last_line(e)}); "
            "pass input_shapes={name: shape} to choose them"
        }
    return Reference(feeds, used, [o.name for o in session.get_outputs()], outputs, weights)


def compare(
    ref: Reference | dict[str, Any],
    model: onnx.ModelProto,
    *,
    tolerance: float,
    known: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the rewritten model on the reference's inputs and compare every output.

    ``known``: arrays of initializers that are placeholders in ``model`` (the bytes to be written).
    Returns what was compared (or why the check was skipped); raises :class:`VerificationError`
    when an output differs by more than ``tolerance`` relative to the output's largest value
    (integer outputs must be equal).
    """
    if not isinstance(ref, Reference):
        return ref
    import onnxruntime as ort

    try:
        session, weights = _prepare(model, {**ref.weights, **(known or {})})
        got = session.run(None, {**ref.feeds, **weights})
    except Exception as e:
        raise VerificationError(
            f"the rewritten model does not run in ONNX Runtime ({_last_line(e)}); nothing was written"
        ) from None
    outputs: dict[str, Any] = {}
    worst = 0.0
    for name, a, b in zip(ref.names, ref.outputs, got, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise VerificationError(f"output {name!r} has shape {b.shape}, the original {a.shape}; nothing was written")
        if a.dtype.kind in "fc":
            err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            scale = float(np.max(np.abs(a.astype(np.float64)))) if a.size else 0.0
            rel = err / scale if scale > 0 else err
        else:
            err = rel = float(np.count_nonzero(a != b))
        outputs[name] = {"shape": list(a.shape), "max_abs_error": err, "max_rel_error": rel}
        worst = max(worst, rel)
        if not rel <= tolerance:
            raise VerificationError(
                f"output {name!r} differs from the original by {rel:.3g} relative (tolerance {tolerance:g}) "
                "in ONNX Runtime; nothing was written"
            )
    runtime = f"onnxruntime {ort.__version__}"
    return {"runtime": runtime, "inputs": ref.shapes, "outputs": outputs, "max_rel_error": worst}
