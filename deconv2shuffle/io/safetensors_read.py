"""Reading safetensors: the ``safetensors`` library opens and validates every file; tensors are views.

``safe_open`` checks the header (size cap, UTF-8, JSON object, known dtypes, contiguous offsets that cover the
data exactly, shapes that match their byte counts); a file it refuses is refused here, with its reason, in one
line. Once it has accepted a file, each tensor of a plain dtype at an aligned offset is made a zero-copy view of
one private (copy-on-write) mapping of the file, with a storage of its own (no descriptor stays open): asking
the library for each tensor costs tens of microseconds, so for 300k tiny tensors a load + save took 84 s
through ``load_file``/``save_file`` against 47 s here (``benchmarks/io_speed.py --tiny 300000``, a busy
2-CPU machine). Any other tensor (packed or exotic dtypes, misaligned offsets, empty tensors, big-endian
hosts) is read through the library itself, so what loads is exactly what it loads.

Each view is also recorded as a :class:`Region` of its file: writing a tensor that is still untouched (same
storage, same version counter) copies its bytes from the file with ``pread`` instead of faulting the mapping in
page by page (a 1.5 GB migrate: 1.7 s against 3.8 s when profiled; peak memory 0.17x the file).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from .formats import MAX_TENSORS, first_line, show

if TYPE_CHECKING:
    from collections.abc import Callable

# The safetensors dtype codes and the torch dtypes they hold (as in safetensors.torch). Dtypes absent from
# this torch are left out; packed ones (F4, F6) are left to the library.
ST_DTYPES: dict[str, torch.dtype] = {}
for _code, _attr in (
    ("F64", "float64"),
    ("F32", "float32"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("I64", "int64"),
    ("I32", "int32"),
    ("I16", "int16"),
    ("I8", "int8"),
    ("U64", "uint64"),
    ("U32", "uint32"),
    ("U16", "uint16"),
    ("U8", "uint8"),
    ("BOOL", "bool"),
    ("C64", "complex64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("F8_E8M0", "float8_e8m0fnu"),
):
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        ST_DTYPES[_code] = getattr(torch, _attr)
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}

# Written by earlier versions of this tool in place of tied tensors; honoured when reading, never written.
LEGACY_ALIASES_KEY = "deconv2shuffle.aliases"


@dataclass(frozen=True)
class Region:
    """Where a tensor's bytes lie in the file it was mapped from, as loaded (``version``: the tensor's version
    counter then; an in-place change bumps it). Holds the storage, so its address stays this region's."""

    path: Path
    offset: int
    nbytes: int
    version: int
    storage: Any = field(repr=False)


@dataclass(frozen=True)
class SafetensorsData:
    """One safetensors file as loaded: tensors in file order, the string metadata, and where each view lies
    (storage data pointer -> :class:`Region`)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    regions: dict[int, Region] = field(default_factory=dict)


def _fail(path: Path, error: BaseException) -> CheckpointError:
    detail = first_line(str(error) or type(error).__name__)
    if "incomplete metadata" in detail or "past the end" in detail:
        detail += "; the file is truncated or corrupt"
    return CheckpointError(f"{show(path)}: the safetensors library refuses this file ({detail})")


def read_safetensors(path: Path) -> SafetensorsData:
    """Open ``path`` with ``safetensors.safe_open`` (framework "pt") and return its tensors and metadata.

    Raises :class:`CheckpointError` (one line naming the file and the library's reason) for any file the
    library refuses, and for one holding more than ``MAX_TENSORS`` tensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.offset_keys())
            metadata = dict(f.metadata() or {})
            if len(keys) > MAX_TENSORS:
                raise CheckpointError(
                    f"{show(path)}: holds {len(keys)} tensors, more than the {MAX_TENSORS} a checkpoint may have"
                )
            tensors, regions = _views(path, keys, f.get_tensor)
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, and whatever torch raises on a shape the library let through
        raise _fail(path, e) from None
    if LEGACY_ALIASES_KEY in metadata:
        _restore_aliases(tensors, metadata.pop(LEGACY_ALIASES_KEY))
    return SafetensorsData(path, tensors, metadata, regions)


def _views(
    path: Path, keys: list[str], from_library: Callable[[str], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[int, Region]]:
    """Every tensor of an accepted file: views of one mapping where that is exact, the library's otherwise."""
    header, base = _header(path)
    size = os.path.getsize(path)
    whole: Any = torch.UntypedStorage.from_file(os.fspath(path), shared=False, nbytes=size) if size else None
    fast = sys.byteorder == "little" and whole is not None
    out: dict[str, torch.Tensor] = {}
    regions: dict[int, Region] = {}
    for key in keys:
        info = header.get(key)
        dtype = ST_DTYPES.get(info.get("dtype", "")) if isinstance(info, dict) else None
        view = _view(whole, base, info, dtype) if fast and dtype is not None and isinstance(info, dict) else None
        if view is None:
            out[key] = from_library(key)
            continue
        out[key], (start, nbytes) = view
        storage = view[0].untyped_storage()
        regions[storage.data_ptr()] = Region(path, start, nbytes, view[0]._version, storage)
    return out, regions


def _header(path: Path) -> tuple[dict[str, object], int]:
    """The header the library has just accepted, parsed again for the offsets (it does not expose them)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return (header if isinstance(header, dict) else {}), 8 + n


def _view(
    whole: Any, base: int, info: dict[str, object], dtype: torch.dtype
) -> tuple[torch.Tensor, tuple[int, int]] | None:
    offsets, shape = info.get("data_offsets"), info.get("shape")
    if whole is None or not isinstance(offsets, list) or not isinstance(shape, list):
        return None
    start, end = base + int(offsets[0]), base + int(offsets[1])
    itemsize = dtype.itemsize
    if end <= start or start % itemsize or end - start != math.prod(shape) * itemsize:
        return None  # empty, misaligned, or not what we expect: the library decides
    t = torch.empty(0, dtype=dtype)
    # a storage slice of its own per tensor: torch.save of one tensor then writes only its own bytes
    t.set_(whole[start:end], 0, shape)  # type: ignore[call-overload]
    return t, (start, end - start)


def _restore_aliases(tensors: dict[str, torch.Tensor], text: str) -> None:
    try:
        aliases = json.loads(text)
    except (ValueError, RecursionError):
        return
    if isinstance(aliases, dict):
        for name, target in aliases.items():
            if isinstance(name, str) and isinstance(target, str) and target in tensors and name not in tensors:
                tensors[name] = tensors[target]


def verify_safetensors(
    tmp: Path,
    out: Path,
    expected: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    check_values: Callable[[str], bool],
) -> None:
    """Read a file just written back through the ``safetensors`` library (not through our reader): every key,
    dtype and shape, the metadata, and the bits of the keys ``check_values`` selects."""
    from safetensors import safe_open

    try:
        with safe_open(tmp, framework="pt") as f:
            keys = set(f.keys())
            got_meta = f.metadata() or {}
            if keys != set(expected) or dict(got_meta) != dict(metadata):
                raise CheckpointError(
                    f"{show(out)}: read-back check failed (keys or metadata differ); nothing was written"
                )
            for key, t in expected.items():
                piece = f.get_slice(key)
                if piece.get_dtype() != ST_NAMES.get(t.dtype) or list(piece.get_shape()) != list(t.shape):
                    raise CheckpointError(f"{show(out)}: read-back check failed for {key!r}; nothing was written")
                if check_values(key) and not _same_bits(f.get_tensor(key), t):
                    raise CheckpointError(f"{show(out)}: read-back values differ for {key!r}; nothing was written")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{show(out)}: the safetensors library refuses the file just written ({first_line(str(e))}); "
            "nothing was written"
        ) from None


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (no copy when it is already contiguous on the CPU)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bits(a), as_bits(b))
