"""New weights kept out of the protobuf until the file is written.

A rewritten weight is as large as the one it replaces. Put into a ``TensorProto`` it would be
copied twice more (into the message, then into the serialised bytes) before it reaches the
file. Instead the graph gets a placeholder initializer (name, type, shape, no data) and the
values stay in a numpy array. The checks use the same array: ``onnx.checker`` and shape
inference see the placeholder as a typed graph input (:func:`~.files.skeleton` moves every
initializer above ``SKELETON_BIG`` bytes, and only those are deferred), ONNX Runtime is fed the
array. The writer then streams the bytes the checks ran on straight into the file.

The file stays one plain protobuf message. Protobuf's wire format merges a message field that
appears twice and appends to repeated fields, so ``ModelProto`` bytes followed by
``graph { initializer { name, data_type, dims, raw_data } ... }`` parse as the model with those
initializers appended: exactly what ``onnx.load`` and ONNX Runtime read (tests hold the written
file against ``onnx.load`` of the same model serialised by protobuf itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from .files import SKELETON_BIG

# element types fed to ONNX Runtime as numpy arrays (see runtime._FED), the only ones deferred
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


def _tag(message: Any, field: str) -> bytes:
    """The wire tag of a length-delimited field, from onnx's own message descriptor."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_GRAPH = _tag(onnx.ModelProto, "graph")
_INITIALIZER = _tag(onnx.GraphProto, "initializer")
_RAW = _tag(TensorProto, "raw_data")


def should_defer(values: torch.Tensor, data_type: int) -> bool:
    """Whether a new weight stays out of the protobuf: the skeleton moves it, ONNX Runtime takes its type."""
    return data_type in DEFERRABLE and values.numel() * values.element_size() > SKELETON_BIG


def placeholder(proto: TensorProto, name: str, data_type: int, values: torch.Tensor) -> np.ndarray:
    """Make ``proto`` the placeholder of ``values`` and return their bytes as an array of the ONNX type.

    The array shares the tensor's memory (a copy only when the tensor is not contiguous).
    """
    proto.name = name
    proto.data_type = data_type
    proto.dims.extend(values.shape)
    flat = values.contiguous().reshape(-1).view(torch.uint8).numpy()
    return flat.view(helper.tensor_dtype_to_np_dtype(data_type)).reshape(tuple(values.shape))


def _held(graph: onnx.GraphProto, deferred: Mapping[str, np.ndarray]) -> list[int]:
    """Positions of the placeholders still in the graph (a node left as it was drops its own)."""
    return [
        i
        for i, t in enumerate(graph.initializer)
        if t.name in deferred and not t.HasField("raw_data") and t.data_location != TensorProto.EXTERNAL
    ]


def fill(model: onnx.ModelProto, deferred: Mapping[str, np.ndarray]) -> None:
    """Put the deferred values into their placeholders (for writers that need whole tensors)."""
    graph = model.graph
    for i in _held(graph, deferred):
        graph.initializer[i].raw_data = deferred[graph.initializer[i].name].tobytes()


def write_spliced(model: onnx.ModelProto, deferred: Mapping[str, np.ndarray], f: BinaryIO) -> None:
    """Write ``model`` with the deferred values to ``f`` as one protobuf message (see the module docstring).

    The placeholders leave the graph while it is serialised and come back, at its end, afterwards.
    """
    graph = model.graph
    positions = _held(graph, deferred)
    headers = [graph.initializer[i].SerializeToString() for i in positions]
    names = [graph.initializer[i].name for i in positions]
    for i in reversed(positions):
        del graph.initializer[i]
    try:
        head = model.SerializeToString()
    finally:
        for header in headers:
            graph.initializer.add().ParseFromString(header)
    arrays = [deferred[name] for name in names]
    entries = [_entry_head(header, array.nbytes) for header, array in zip(headers, arrays, strict=True)]
    f.write(head)
    if entries:
        size = sum(len(e) + a.nbytes for e, a in zip(entries, arrays, strict=True))
        f.write(_GRAPH + _varint(size))
        for entry, array in zip(entries, arrays, strict=True):
            f.write(entry)
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def _entry_head(header: bytes, nbytes: int) -> bytes:
    """``initializer`` tag, length, the tensor's fields, and the ``raw_data`` tag and length (the data follows)."""
    body = header + _RAW + _varint(nbytes)
    return _INITIALIZER + _varint(len(body) + nbytes) + body
