"""Large weights kept out of the protobuf until the file is written.

A rewritten weight is as large as the one it replaces. Put into a ``TensorProto`` it would be
copied twice more (into the message, then into the serialised bytes) before it reaches the
file. Instead the graph gets a placeholder initializer (its fields but no data) and the values
stay in a numpy array. The checks use the same array: ``onnx.checker`` and shape inference see
the placeholder as a typed graph input (:func:`~.files.skeleton` moves every initializer above
``SKELETON_BIG`` bytes, and only those are deferred), ONNX Runtime is fed the array. The writer
then streams the bytes the checks ran on straight into the file. Large weights no rewrite
reads are handled the same way (:meth:`Deferred.adopt`): their bytes, read once for ONNX
Runtime, go to the file as they are, without serialising them with the rest.

The file stays one plain protobuf message, laid out as

    ir_version                                       (so its first bytes say "ONNX model")
    graph { initializer { <placeholder>, raw_data } }  once per deferred weight
    <the rest of the model, serialised by protobuf>  (ir_version again, the graph without them...)

Protobuf's wire format merges a message field that appears more than once and appends to
repeated fields (a scalar field keeps its last value), so this parses as the model with the
deferred initializers first: what ``onnx.load`` and ONNX Runtime read, and tests hold the written
bytes against protobuf's own parser. The weights come first so that they can be written while
the rewrite runs, as each node is done (see :mod:`.output`); only the rest waits for the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from .files import SKELETON_BIG

# element types deferred (written from numpy arrays); ONNX Runtime is fed these and bool (runtime._FED)
DEFERRABLE = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    TensorProto.UINT32,
    TensorProto.INT64,
    TensorProto.UINT64,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: Any, name: str) -> bytes:
    """The wire tag of a length-delimited field, from onnx's own message descriptor."""
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


_GRAPH = _tag(onnx.ModelProto, "graph")
_INITIALIZER = _tag(onnx.GraphProto, "initializer")
_RAW = _tag(TensorProto, "raw_data")


def should_defer(values: torch.Tensor, data_type: int) -> bool:
    """Whether a new weight stays out of the protobuf: the skeleton moves it, ONNX Runtime takes its type."""
    return data_type in DEFERRABLE and values.numel() * values.element_size() > SKELETON_BIG


@dataclass
class Deferred:
    """The values of placeholder initializers by name (``arrays``), and each placeholder's own fields."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    headers: dict[str, bytes] = field(default_factory=dict)

    def add(self, proto: TensorProto, name: str, data_type: int, values: torch.Tensor) -> None:
        """Make ``proto`` the placeholder of ``values``; keep their bytes as an array of the ONNX type.

        The array shares the tensor's memory (a copy only when the tensor is not contiguous).
        """
        proto.name = name
        proto.data_type = data_type
        proto.dims.extend(values.shape)
        flat = values.contiguous().reshape(-1).view(torch.uint8).numpy()
        self.arrays[name] = flat.view(helper.tensor_dtype_to_np_dtype(data_type)).reshape(tuple(values.shape))
        self.headers[name] = proto.SerializeToString()

    def adopt(self, graph: onnx.GraphProto, keep: set[str]) -> list[str]:
        """Turn the graph's large initializers into placeholders (their bytes read out once), except ``keep``.

        Weights the rewrite leaves alone then go to the file as they are, early, without being
        serialised with the rest of the model. Returns the names, in graph order.
        """
        adopted = []
        for t in graph.initializer:
            if t.name in keep or t.data_type not in DEFERRABLE or t.data_location == TensorProto.EXTERNAL:
                continue
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            shape = tuple(int(d) for d in t.dims)
            count = int(np.prod(shape, dtype=np.int64))
            if count * dtype.itemsize <= SKELETON_BIG or not t.HasField("raw_data"):
                continue
            raw = t.raw_data
            if len(raw) != count * dtype.itemsize:
                continue  # malformed: left to the checks as it is
            t.ClearField("raw_data")
            self.arrays[t.name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
            self.headers[t.name] = t.SerializeToString()
            adopted.append(t.name)
        return adopted

    def held(self, graph: onnx.GraphProto) -> list[str]:
        """The placeholders still in the graph, in its order (a node left as it was drops its own)."""
        return [
            t.name
            for t in graph.initializer
            if t.name in self.arrays and not t.HasField("raw_data") and t.data_location != TensorProto.EXTERNAL
        ]

    def fill(self, model: onnx.ModelProto) -> None:
        """Put the values into their placeholders (for writers that need whole tensors)."""
        held = set(self.held(model.graph))
        for t in model.graph.initializer:
            if t.name in held:
                t.raw_data = self.arrays[t.name].tobytes()


def prefix(model: onnx.ModelProto) -> bytes:
    """The file's first field, ``ir_version`` (so it reads as an ONNX model from its first bytes; the
    end repeats it with the same value)."""
    return _varint(model.DESCRIPTOR.fields_by_name["ir_version"].number << 3) + _varint(model.ir_version)


def fragment(deferred: Deferred, name: str) -> tuple[bytes, np.ndarray]:
    """``graph { initializer { <placeholder fields> raw_data: <...> } }`` up to the data, and the data."""
    array = np.ascontiguousarray(deferred.arrays[name])
    tensor = deferred.headers[name] + _RAW + _varint(array.nbytes)
    entry = _INITIALIZER + _varint(len(tensor) + array.nbytes) + tensor
    return _GRAPH + _varint(len(entry) + array.nbytes) + entry, array


def write_fragment(f: BinaryIO, deferred: Deferred, name: str) -> None:
    """Write one placeholder's fragment, its bytes straight from the array."""
    head, array = fragment(deferred, name)
    f.write(head)
    f.write(array.reshape(-1).view(np.uint8).data)


def head(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """The model serialised without the placeholders ``names`` (they are put back, at the graph's end)."""
    graph = model.graph
    drop = set(names)
    positions = [i for i, t in enumerate(graph.initializer) if t.name in drop]
    held = [graph.initializer[i].SerializeToString() for i in positions]
    for i in reversed(positions):
        del graph.initializer[i]
    try:
        data: bytes = model.SerializeToString()
        return data
    finally:
        for placeholder in held:
            graph.initializer.add().ParseFromString(placeholder)


def write_spliced(
    model: onnx.ModelProto, deferred: Deferred, f: BinaryIO, written: Sequence[str] | None = None
) -> None:
    """Write ``model`` with its deferred values to ``f`` as one protobuf message (see the module docstring).

    ``written``: ``f`` already holds the prefix and the fragments of these placeholders (all in
    the graph); the other placeholders follow, then the rest of the model. None: a new file.
    """
    held = deferred.held(model.graph)
    if written is None:
        f.write(prefix(model))
        written = ()
    for name in held:
        if name not in written:
            write_fragment(f, deferred, name)
    f.write(head(model, held))
