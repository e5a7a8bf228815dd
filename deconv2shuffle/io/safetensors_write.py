"""Writing safetensors exactly as the ``safetensors`` library lays a file out, and reading it back through it.

Layout: an 8-byte little-endian header length, the JSON header padded with spaces to a multiple of 8 (so the
data starts 8-aligned), then the tensors back to back, little-endian, in the library's own order (dtype
descending in its ranking, which puts wider elements first, then name), so that every tensor's offset is a
multiple of its element size and the data region is byte for byte what ``safetensors.torch.save_file`` writes.
No gaps, no overlaps: the library refuses both.

Tied tensors (two names for the same memory): each name is stored as its own entry, the bytes written once per
name. ``safetensors.torch.load_file`` then returns every key and ``load_state_dict(strict=True)`` works; the
tie itself is not recorded (safetensors has no way to say it), so a model re-ties on load as it always does.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch

from ..errors import CheckpointError
from .safetensors_read import ST_NAMES, Region, as_bits

LateValue = Callable[[], str]  # a metadata value still being computed (a sha256 hex digest, 64 characters)
_LATE_WIDTH = 64

# The library's dtype ranking (its enum order); it writes tensors by rank descending, then by name.
_RANK = {
    code: i
    for i, code in enumerate(
        "BOOL F4 F6_E2M3 F6_E3M2 U8 I8 F8_E5M2 F8_E4M3 F8_E8M0 F8_E4M3FNUZ F8_E5M2FNUZ "
        "I16 U16 F16 BF16 I32 U32 F32 C64 F64 I64 U64".split()
    )
}

_LITTLE = sys.byteorder == "little"
_COPY_MIN = 1 << 20  # tensors from this size up are copied from their file when untouched
_COPY_CHUNK = 1 << 24

# Same-width integer views, for byte-swapping on a big-endian host (complex: per float component).
_SWAP_AS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def check_keys(keys: list[object], where: str) -> None:
    """Every key a string, none reserved by the format; raises naming the first offender."""
    for key in keys:
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: key {key!r} is a {type(key).__name__}; safetensors keys are strings")
        if key == "__metadata__":
            raise CheckpointError(f"{where}: a tensor named '__metadata__' cannot be stored in safetensors")


def layout(tensors: Mapping[str, torch.Tensor], where: str) -> list[tuple[str, torch.Tensor, int, int]]:
    """(name, tensor, start, end) in the library's write order (see the module doc)."""
    check_keys(list(tensors), where)
    for name, t in tensors.items():
        if t.dtype not in ST_NAMES:
            raise CheckpointError(
                f"{where}: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store; write a .pth output"
            )
    order = sorted(tensors.items(), key=lambda kv: (-_RANK[ST_NAMES[kv[1].dtype]], kv[0]))
    placed = []
    offset = 0
    for name, t in order:
        if t.layout != torch.strided or t.is_meta or t.is_nested:
            raise CheckpointError(f"{where}: tensor {name!r} is not a dense tensor with data; cannot store it")
        n = t.numel() * t.element_size()
        placed.append((name, t, offset, offset + n))
        offset += n
    return placed


def _header(placed: list[tuple[str, torch.Tensor, int, int]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, t, start, end in placed:
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [start, end]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return raw + b" " * (-len(raw) % 8)


def _le_bytes(t: torch.Tensor) -> memoryview:
    if t.numel() == 0:
        return memoryview(b"")
    if _LITTLE and t.device.type == "cpu" and not t.requires_grad and t.is_contiguous():
        return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # common case
    flat = t.detach().cpu().contiguous().reshape(-1)
    if sys.byteorder == "big" and flat.element_size() > 1:
        part = flat.view(torch.float32) if flat.is_complex() else flat
        part = part.view(_SWAP_AS[part.element_size()])
        flat = torch.from_numpy(part.numpy().byteswap()).view(flat.dtype)
    return memoryview(as_bits(flat).numpy())  # type: ignore[arg-type]


def _from_file(t: torch.Tensor, regions: Mapping[int, Region]) -> Region | None:
    """The file region ``t`` was mapped from, if ``t`` is that whole view, untouched since it was loaded."""
    nbytes = t.numel() * t.element_size()
    if nbytes < _COPY_MIN or not _LITTLE or t.device.type != "cpu":
        return None
    region = regions.get(t.untyped_storage().data_ptr())
    if region is None or region.nbytes != nbytes or region.version != t._version:
        return None
    return region if t.storage_offset() == 0 and t.is_contiguous() else None


def _copy(region: Region, f: IO[bytes] | Any, buf: bytearray) -> None:
    """Copy a region of its file into ``f`` through ``buf`` (pread: one descriptor, open only meanwhile)."""
    fd = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with memoryview(buf) as view:
            done = 0
            while done < region.nbytes:
                n = os.preadv(fd, [view[: min(len(buf), region.nbytes - done)]], region.offset + done)
                if n <= 0:
                    raise CheckpointError(f"{region.path}: the file shrank while it was being copied")
                f.write(view[:n])
                done += n
    finally:
        os.close(fd)


def write_safetensors(
    f: IO[bytes] | Any,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str | LateValue],
    where: str = "safetensors output",
    *,
    regions: Mapping[int, Region] | None = None,
) -> dict[str, str]:
    """Write ``tensors`` and ``metadata`` to the binary file ``f`` in safetensors layout (see the module doc).

    A metadata value may be a callable returning a 64-character string (a sha256 hex digest still being
    computed in another thread): a placeholder of that width is written first and overwritten in place once
    the data is written. ``regions`` (from loading): tensors still untouched in the file they were mapped
    from are copied from that file. Returns the metadata as finally written.
    """
    placed = layout(tensors, where)
    late = {k: v for k, v in metadata.items() if callable(v)}
    final: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{where}: metadata key {k!r} is not a string")
        final[k] = "0" * _LATE_WIDTH if callable(v) else str(v)
    raw = _header(placed, final)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    buf = bytearray(0)
    for _, t, _, _ in placed:
        region = _from_file(t, regions) if regions else None
        if region is None:
            f.write(_le_bytes(t))
            continue
        buf = buf or bytearray(_COPY_CHUNK)
        _copy(region, f, buf)
    if late:
        for key, compute in late.items():
            final[key] = compute()
            if len(final[key]) != _LATE_WIDTH:
                raise ValueError(f"late metadata {key!r} must be {_LATE_WIDTH} characters")
        patched = _header(placed, final)
        if len(patched) != len(raw):
            raise ValueError("late metadata changed the header length")
        f.flush()
        f.seek(8)
        f.write(patched)
        f.seek(0, os.SEEK_END)
    return final


def data_offsets(path: str | os.PathLike[str]) -> list[tuple[str, str, int]]:
    """(name, dtype code, absolute byte offset) of every tensor in a safetensors file, in header order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [(k, v["dtype"], 8 + n + int(v["data_offsets"][0])) for k, v in header.items() if k != "__metadata__"]
