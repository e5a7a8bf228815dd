"""Torch files that try to run code, allocate, expand, mislead or exhaust: each written by a function ``(path)``.

Every one of them must be refused in one line naming the file, quickly and without the memory it asks for.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch


class Call:
    """Pickles as ``fn(*args)``: how a hostile file asks the unpickler to call something."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.fn, self.args


def _small() -> dict[str, torch.Tensor]:
    return {"up.weight": torch.zeros(2, 2, 4, 4), "up.bias": torch.zeros(2)}


def _save(obj: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        torch.save(obj, path)

    return write


def _rewrite_zip(path: Path, obj: object, change: Callable[[str, bytes], bytes]) -> None:
    """torch.save ``obj``, then rewrite each record through ``change(name, data)`` (stored, uncompressed)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info)))


def short_record(path: Path) -> None:
    """A zip record shorter than the storage its pickle claims (torch.load with mmap would read past it)."""
    _rewrite_zip(path, {"w": torch.zeros(1000)}, lambda n, d: d[:400] if n.endswith("/data/0") else d)


def _with_pickle(data: bytes) -> Callable[[Path], None]:
    return lambda path: _rewrite_zip(path, _small(), lambda n, d: data if n.endswith("/data.pkl") else d)


def _deep_list(depth: int) -> bytes:
    # EMPTY_LIST x depth, then APPEND x (depth - 1): lists nested depth deep, without recursion to build it
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _memo_bomb() -> bytes:
    # None memoized at index 2**28: the C unpickler would allocate and clear a 4 GiB memo array
    return b"\x80\x02N" + b"r" + struct.pack("<I", 2**28) + b"."


def _legacy(obj: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        torch.save(obj, path, _use_new_zipfile_serialization=False)

    return write


def torchscript(path: Path) -> None:
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))


def plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"up.weight": [0.0] * 4}))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (writer, what the one-line refusal must say)
    "os.system": (_save({**_small(), "x": Call(__import__("os").system, "true")}), r"'posix\.system'.*run code"),
    "torch.Size(bytearray(10**8))": (_save({**_small(), "x": Call(torch.Size, Call(bytearray, 10**8))}), "torch.Size"),
    "Counter(bytearray(10**9))": (
        _save({**_small(), "x": Call(collections.Counter, Call(bytearray, 10**9))}),
        "collections.Counter",
    ),
    "bytearray(10**9) alone": (_save({**_small(), "x": Call(bytearray, 10**9)}), r"bytearray\(n\)"),
    "FloatStorage(10**6) without data": (_save({**_small(), "x": Call(torch.FloatStorage, 10**6)}), "no data"),
    "stride-0 view of 1 GiB": (_save({"up.weight": torch.zeros(1).expand(2**28)}), "expand"),
    "overlapping view": (_save({"up.weight": torch.zeros(2**15).as_strided((2**14, 2**14), (1, 1))}), "expand"),
    "zip record shorter than its tensor": (short_record, r"claims 4000 bytes but its record holds 400"),
    "LONG_BINPUT memo bomb": (_with_pickle(_memo_bomb()), "NoneType"),
    "list nested 200k deep": (_with_pickle(_deep_list(200_000)), "nest"),
    "meta tensor": (_save({"up.weight": torch.empty(2, device="meta")}), "meta tensor"),
    "sparse tensor": (_save({"up.weight": torch.eye(2).to_sparse()}), "sparse tensor"),
    "nested tensor": (
        _save({"up.weight": torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])}),
        "nested tensor",
    ),
    "quantized tensor": (
        _save({"up.weight": torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)}),
        "quantized tensor",
    ),
    "TorchScript archive": (torchscript, "TorchScript"),
    "plain pickle": (plain_pickle, "plain pickle"),
    "legacy file asking for os.system": (
        _legacy({**_small(), "x": Call(__import__("os").system, "true")}),
        r"'posix\.system'",
    ),
    "legacy file with bytearray(10**9)": (_legacy({**_small(), "x": Call(bytearray, 10**9)}), r"bytearray\(n\)"),
    "keys 1 and '1'": (_save({1: torch.zeros(2), "1": torch.ones(2)}), "both '1'"),
}
