"""Reading a graph: names in use, where each value comes from, constants, static shapes, tensors.

Tensors move between ``TensorProto`` and torch as raw bytes (``raw_data``), so any element type
of width 1, 2, 4 or 8 bytes is carried bit for bit, including those torch has no float type for.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from onnx import TensorProto

from .attrs import Unsupported
from .files import skeleton

# ONNX element type -> the torch dtype of the same width used to carry its bits.
_CARRIER: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.UINT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.UINT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT64: torch.int64,
    TensorProto.FLOAT8E4M3FN: torch.uint8,
    TensorProto.FLOAT8E4M3FNUZ: torch.uint8,
    TensorProto.FLOAT8E5M2: torch.uint8,
    TensorProto.FLOAT8E5M2FNUZ: torch.uint8,
}
FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def type_name(data_type: int) -> str:
    return str(TensorProto.DataType.Name(data_type)).lower()


def to_torch(tensor: TensorProto, raw: Any = None) -> torch.Tensor:
    """The tensor's values as torch (float types as such, the others carried by an int of equal width).

    ``raw``: the tensor's bytes already read (any buffer, e.g. the array ONNX Runtime was fed),
    so they are not copied out of the protobuf again.
    """
    carrier = _CARRIER.get(tensor.data_type)
    if carrier is None:
        raise Unsupported(f"tensor {tensor.name!r} has element type {type_name(tensor.data_type)}, not supported")
    shape = tuple(int(d) for d in tensor.dims)
    if raw is not None:
        raw = memoryview(raw).cast("B")
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    if raw is None:
        raw = onnx.numpy_helper.to_array(tensor).tobytes()
    if not raw:
        return torch.empty(shape, dtype=carrier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only bytes: nothing here writes to them
        flat = torch.frombuffer(raw, dtype=carrier)
    if flat.numel() != _numel(shape):
        raise Unsupported(f"tensor {tensor.name!r} holds {flat.numel()} values but its shape {shape} needs more")
    return flat.reshape(shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def from_torch(values: torch.Tensor, name: str, data_type: int, into: TensorProto | None = None) -> TensorProto:
    """A ``TensorProto`` (``into``, or a new one) named ``name`` of type ``data_type`` holding ``values``'s bytes."""
    proto = TensorProto() if into is None else into
    proto.name = name
    proto.data_type = data_type
    proto.dims.extend(values.shape)
    proto.raw_data = values.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return proto


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Values read by any node (subgraphs included: they may read outer values) or output by the graph."""
    used = {o.name for o in graph.output}
    for node in all_nodes(graph):
        used.update(node.input)
    used.discard("")
    return used


class Names:
    """Fresh names that clash with no node, value or initializer anywhere in the model."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for seq in (graph.input, graph.output, graph.value_info):
            self.taken.update(v.name for v in seq)
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(t.values.name for t in graph.sparse_initializer)
        for node in graph.node:
            self.taken.update((node.name, *node.input, *node.output))
            for sub in subgraphs(node):
                self._collect(sub)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


@dataclass
class GraphIndex:
    """Where each value of the main graph comes from."""

    graph: onnx.GraphProto
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    inputs: set[str] = field(default_factory=set)
    sparse: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        index = cls(graph)
        index.initializers = {t.name: t for t in graph.initializer}
        index.inputs = {v.name for v in graph.input}
        index.sparse = {t.values.name for t in graph.sparse_initializer}
        for node in graph.node:
            for out in node.output:
                index.producers[out] = node
        return index

    def constant(self, name: str, role: str) -> TensorProto:
        """The constant tensor behind value ``name``; :class:`Unsupported` (saying why) otherwise."""
        if name in self.inputs:
            default = " (its initializer is only a default a caller can override)" if name in self.initializers else ""
            raise Unsupported(f"{role} {name!r} is a graph input{default}")
        if name in self.initializers:
            return self.initializers[name]
        if name in self.sparse:
            raise Unsupported(f"{role} {name!r} is a sparse initializer")
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    value: TensorProto = attr.t
                    return value
            raise Unsupported(f"{role} {name!r} comes from a Constant without a tensor value")
        if node is None:
            raise Unsupported(f"{role} {name!r} is produced by nothing in the graph")
        raise Unsupported(
            f"{role} {name!r} is computed by a {node.op_type} node, not a constant "
            "(fold constants when exporting, e.g. remove weight norm first)"
        )


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Inferred shapes of the main graph's values (None for unknown dimensions).

    Shape inference runs on the model's :func:`~.files.skeleton`, so it never copies the weights.
    """
    sk = skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        inferred = sk
    out: dict[str, tuple[int | None, ...]] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            out[v.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims)
    return out


def opset_blockers(model: onnx.ModelProto, old: int, new: int, skip: Set[int] = frozenset()) -> list[str]:
    """Operators whose definition differs between default-domain opsets ``old`` and ``new``.

    ``skip``: positions of main-graph nodes that will be replaced (their definition does not matter).
    """
    changed: set[str] = set()
    kept = (n for i, n in enumerate(model.graph.node) if i not in skip)
    for node in (inner for top in kept for inner in _with_subgraphs(top)):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            a = onnx.defs.get_schema(node.op_type, old, "").since_version
            b = onnx.defs.get_schema(node.op_type, new, "").since_version
        except onnx.defs.SchemaError:
            changed.add(node.op_type)
            continue
        if a != b:
            changed.add(node.op_type)
    return sorted(changed)


def _with_subgraphs(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    yield node
    for sub in subgraphs(node):
        yield from all_nodes(sub)


def set_opset(model: onnx.ModelProto, version: int) -> None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = version


def remove_unused(graph: onnx.GraphProto, candidates: set[str]) -> list[str]:
    """Remove initializers and nodes that produce only ``candidates`` values nobody reads any more.

    Repeats until nothing changes (a removed DequantizeLinear frees its inputs). Returns the
    removed value names. Value infos of removed values go too.
    """
    removed: list[str] = []
    while True:
        used = used_names(graph)
        produced = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
        dead = {c for c in candidates if c not in used and c in produced}
        if not dead:
            break
        candidates = candidates - dead
        for i in reversed(range(len(graph.node))):
            node = graph.node[i]
            if node.output and set(node.output) <= dead:
                candidates |= {name for name in node.input if name}
                del graph.node[i]
        for i in reversed(range(len(graph.initializer))):
            if graph.initializer[i].name in dead:
                del graph.initializer[i]
        for i in reversed(range(len(graph.value_info))):
            if graph.value_info[i].name in dead:
                del graph.value_info[i]
        removed.extend(sorted(dead))
    return removed
