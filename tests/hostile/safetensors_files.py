"""Malformed (and oddly formed but valid) safetensors files, as bytes.

Each case is judged by ``safetensors.torch.load_file``: our loader must refuse exactly what it refuses and
load exactly what it loads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _file(header: dict | list | bytes, data: bytes = b"", pad: bytes = b" ") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += pad * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _entry(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


D16 = bytes(range(16))

CASES: dict[str, Callable[[], bytes]] = {
    "valid": lambda: _file({"a": F32x2, "b": _entry("F32", [2], 8, 16)}, D16),
    "overlapping offsets": lambda: _file({"a": F32x2, "b": _entry("F32", [2], 4, 12)}, D16[:12]),
    "gapped offsets": lambda: _file({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [2], 8, 16)}, D16),
    "offsets past the end": lambda: _file({"a": _entry("F32", [4], 0, 16)}, D16[:8]),
    "trailing bytes": lambda: _file({"a": _entry("F32", [1], 0, 4)}, D16[:8]),
    "end before start": lambda: _file({"a": _entry("U8", [0], 8, 0)}, D16[:8]),
    "offsets out of order in the header": lambda: _file(
        {"b": _entry("U8", [8], 8, 16), "a": _entry("U8", [8], 0, 8)}, D16
    ),
    "unknown dtype": lambda: _file({"a": _entry("F33", [2], 0, 8)}, D16[:8]),
    "dtype C128": lambda: _file({"a": _entry("C128", [1], 0, 16)}, D16),
    "dtype F8_E4M3FNUZ": lambda: _file({"a": _entry("F8_E4M3FNUZ", [8], 0, 8)}, D16[:8]),
    "dtype F8_E5M2FNUZ": lambda: _file({"a": _entry("F8_E5M2FNUZ", [8], 0, 8)}, D16[:8]),
    "dtype F8_E8M0": lambda: _file({"a": _entry("F8_E8M0", [8], 0, 8)}, D16[:8]),
    "dtype F6 (no torch dtype)": lambda: _file({"a": _entry("F6_E2M3", [4], 0, 3)}, D16[:3]),
    "dtype U16": lambda: _file({"a": _entry("U16", [4], 0, 8)}, D16[:8]),
    "bool bytes other than 0 and 1": lambda: _file({"a": _entry("BOOL", [8], 0, 8)}, D16[:8]),
    "float32 at an odd offset": lambda: _file({"a": _entry("U8", [3], 0, 3), "b": _entry("F32", [1], 3, 7)}, D16[:7]),
    "non-UTF-8 header": lambda: _file(b'{"a\xff": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}', D16[:8]),
    "lone surrogate escape": lambda: _file(b'{"\\ud800": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}', D16[:8]),
    "NUL and escapes in a key": lambda: _file(
        b'{"\\u00e9\\u0000": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}', D16[:8]
    ),
    "duplicate key, last entry fits": lambda: _file(
        b'{"a": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}, "a": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}',
        D16[:8],
    ),
    "duplicate key, last entry does not fit": lambda: _file(
        b'{"a": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}, "a": {"dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
        D16[:8],
    ),
    "duplicate __metadata__": lambda: _file(
        b'{"__metadata__":{"x":"1"}, "__metadata__":{"y":"2"}, "a": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}',
        D16[:8],
    ),
    "header is a JSON list": lambda: _file([1, 2]),
    "header is a JSON number": lambda: _file(b"12345678"),
    "header is not JSON": lambda: _file(b"{abc"),
    "header with a trailing comma": lambda: _file(b'{"a": {"dtype":"U8","shape":[8],"data_offsets":[0,8]},}', D16[:8]),
    "header padded with NUL": lambda: _file({"a": _entry("U8", [8], 0, 8)}, D16[:8], pad=b"\0"),
    "header not padded": lambda: _file(json.dumps({"a": _entry("U8", [8], 0, 8)}).encode() + b"", D16[:8], pad=b""),
    "header with leading spaces": lambda: _file(b'  {"a": {"dtype":"U8","shape":[8],"data_offsets":[0,8]}}', D16[:8]),
    "__metadata__ value not a string": lambda: _file({"__metadata__": {"x": 1}, "a": _entry("U8", [8], 0, 8)}, D16[:8]),
    "__metadata__ a list": lambda: _file({"__metadata__": ["x"], "a": _entry("U8", [8], 0, 8)}, D16[:8]),
    "__metadata__ nested": lambda: _file({"__metadata__": {"x": {"y": "z"}}, "a": _entry("U8", [8], 0, 8)}, D16[:8]),
    "__metadata__ null": lambda: _file({"__metadata__": None, "a": _entry("U8", [8], 0, 8)}, D16[:8]),
    "tensor entry not an object": lambda: _file({"a": 5}),
    "missing data_offsets": lambda: _file({"a": {"dtype": "U8", "shape": [8]}}, D16[:8]),
    "three data_offsets": lambda: _file({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8, 9]}}, D16[:8]),
    "negative dim": lambda: _file({"a": _entry("U8", [-8], 0, 8)}, D16[:8]),
    "float dim": lambda: _file({"a": _entry("U8", [8.0], 0, 8)}, D16[:8]),
    "NaN dim": lambda: _file(b'{"a": {"dtype":"U8","shape":[NaN],"data_offsets":[0,8]}}', D16[:8]),
    "dims whose product overflows": lambda: _file({"a": _entry("U8", [2**62, 4], 0, 8)}, D16[:8]),
    "dim of 2**64": lambda: _file({"a": _entry("U8", [2**64], 0, 8)}, D16[:8]),
    "empty tensor with a 2**64-1 dim": lambda: _file({"a": _entry("U8", [0, 2**64 - 1], 0, 0)}),
    "empty tensor with a 2**63-1 dim": lambda: _file({"a": _entry("U8", [0, 2**63 - 1], 0, 0)}),
    "a hundred dims": lambda: _file({"a": _entry("U8", [1] * 100, 0, 1)}, b"x"),
    "zero-size tensor": lambda: _file({"a": _entry("F32", [0, 3], 0, 0)}),
    "no tensors": lambda: _file({}),
    "JSON nested 100k deep": lambda: _file(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "header length claims past the end": lambda: struct.pack("<Q", 10**9) + b'{"a":1}',
    "header length 2**64-1": lambda: b"\xff" * 8 + b"{}",
    "truncated data": lambda: _file({"a": F32x2, "b": _entry("F32", [2], 8, 16)}, D16)[:-3],
}


def write_huge_header_claim(path: Path) -> None:
    """A sparse file whose header claims 100_000_008 bytes (over the library's 100 MB cap) and holds them:
    the claim is consistent with the file size, so only the cap refuses it. Uses no disk space."""
    n = 100_000_008
    with path.open("wb") as f:
        f.write(struct.pack("<Q", n) + b"{")
        f.seek(8 + n - 1)
        f.write(b"}")
