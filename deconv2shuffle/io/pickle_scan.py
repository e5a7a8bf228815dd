"""Check a torch pickle before torch loads it: it may hold tensors backed by its own data, plain containers and
numbers, and nothing else.

``weights_only=True`` already refuses globals that can run code, but it still allows some that cost memory or
time on attacker-chosen arguments (``torch.Size(bytearray(10**8))``, ``collections.Counter(...)``, a storage
class called to allocate uninitialised memory, a stride-0 view that becomes a huge output). So the pickle is
first run through a *dry run*: Python's own pure-Python unpickler (its memo is a dict: the C unpickler sizes its
memo array by the largest index a ``LONG_BINPUT`` names, so 15 bytes can make it allocate gigabytes) with
``find_class`` answering only with inert stand-ins and checking functions of our own. Nothing from the file is
ever called:

- tensor rebuilds (``torch._utils._rebuild_tensor_v2/_v3``, ``_rebuild_parameter``) are checked for a storage
  that the file's own data backs (a zip record at least as long as the storage, a legacy storage that fits in
  the file), sizes and strides in range, and no view that would expand its storage (stride 0, overlap);
- ``OrderedDict``, ``set``, ``complex``, ``_codecs.encode(s, "latin1")`` and ``bytearray(b"...")`` are
  plain values and are built for real from the file's own (already bounded) literals;
- dtypes are values; storage classes may only name a storage's type inside a persistent id;
- any other global is collected (every one of them is named in the refusal) unless the caller allowed it.

Counts are bounded: the pickle's size, tensors, container nesting depth, bytes the tensors make.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import CheckpointError
from .formats import MAX_DEPTH, MAX_EXPANSION, MAX_EXPANSION_SLACK, MAX_PICKLE_BYTES, MAX_TENSORS, first_line, show


class Refused(Exception):
    """Raised inside the dry run: the pickle does something a state dict never needs."""


@dataclass
class ScanResult:
    """What the dry run saw: every global named, the ones refused, tensors rebuilt, bytes they make."""

    globals: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    tensors: int = 0
    tensor_bytes: int = 0


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype

    def __call__(self, *args: object) -> None:
        raise Refused(f"calls {self.name}(...) to allocate memory that no data in the file backs")


@dataclass(frozen=True)
class _Storage:
    dtype: torch.dtype
    nbytes: int


class _Tensor:
    """A tensor the pickle would rebuild (never a real one)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class _Opaque:
    """Stand-in for an allowed or refused global: takes any arguments and state, does nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _storage_types() -> dict[str, torch.dtype]:
    out = {"torch.storage.UntypedStorage": torch.uint8}
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if name.endswith("Storage") and isinstance(obj, type) and name not in ("TypedStorage", "UntypedStorage"):
            dtype = getattr(obj, "_dtype", None) or getattr(obj, "dtype", None)
            if isinstance(dtype, torch.dtype):
                out[f"torch.{name}"] = dtype
    return out


def _dtypes() -> dict[str, torch.dtype]:
    return {f"torch.{n}": getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


class _DryRun(pickle._Unpickler):
    def __init__(self, stream: IO[bytes], scan: _Scan) -> None:
        super().__init__(stream, encoding="utf-8")
        self.scan = scan

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self.scan.resolve(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return self.scan.storage(pid)


class _Scan:
    def __init__(self, path: Path, allowed: set[str], record_size: Callable[[str], int | None], budget: int) -> None:
        self.path = path
        self.allowed = allowed
        self.record_size = record_size
        self.budget = budget  # bytes tensors may make, in all
        self.result = ScanResult()
        self.storages: dict[str, _Storage] = {}
        self.storage_bytes = 0
        self._stubs: dict[str, type[_Opaque]] = {}
        self._storage_types = _storage_types()
        self._dtypes = _dtypes()
        self._calls: dict[str, Callable[..., Any]] = {
            "torch._utils._rebuild_tensor_v2": self._rebuild_v2,
            "torch._utils._rebuild_tensor_v3": self._rebuild_v3,
            "torch._utils._rebuild_parameter": self._parameter,
            "torch._utils._rebuild_parameter_with_state": self._parameter,
            "collections.OrderedDict": _ordered_dict,
            "builtins.set": _plain_set,
            "builtins.complex": _plain_complex,
            "_codecs.encode": _latin1,
            "builtins.bytearray": _plain_bytearray,
        }

    def resolve(self, name: str) -> Any:
        self.result.globals.add(name)
        if name in self._calls:
            return self._calls[name]
        if name in self._dtypes:
            return self._dtypes[name]
        if name in self._storage_types:
            return _StorageType(name, self._storage_types[name])
        if name not in self.allowed and name not in self.result.refused:
            self.result.refused.append(name)
        if name not in self._stubs:
            self._stubs[name] = type(name.rpartition(".")[2] or "Opaque", (_Opaque,), {})
        return self._stubs[name]

    def storage(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise Refused(f"has a persistent reference {str(pid)[:60]!r} that is not a tensor storage")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise Refused(f"has a malformed storage reference {str(pid)[:80]!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise Refused("uses storage views of the pre-1.0 format; load and save it again with torch")
        nbytes = numel * kind.dtype.itemsize
        if key in self.storages:
            return self.storages[key]
        have = self.record_size(key)
        if have is None:
            raise Refused(f"refers to storage {key!r}, which the file does not hold")
        if have < nbytes:
            raise Refused(f"storage {key!r} claims {nbytes} bytes but its record holds {have}; the file is corrupt")
        self.storage_bytes += nbytes
        self.storages[key] = _Storage(kind.dtype, nbytes)
        return self.storages[key]

    def _rebuild_v2(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _Tensor:
        dtype = storage.dtype if isinstance(storage, _Storage) else torch.uint8
        return self._tensor(storage, offset, size, stride, dtype)

    def _rebuild_v3(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _Tensor:
        dtype = rest[2] if len(rest) > 2 else None
        if not isinstance(dtype, torch.dtype):
            raise Refused("rebuilds a tensor without a dtype")
        return self._tensor(storage, offset, size, stride, dtype)

    def _parameter(self, data: Any, *rest: Any) -> Any:
        if not isinstance(data, _Tensor):
            raise Refused("makes a Parameter of something that is not a tensor")
        return data

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype) -> _Tensor:
        if not isinstance(storage, _Storage):
            raise Refused("rebuilds a tensor from something that is not a storage in the file")
        if not _ints(size) or not _ints(stride) or len(size) != len(stride) or not _ints((offset,)):
            raise Refused(f"rebuilds a tensor with malformed size {str(size)[:60]} or stride {str(stride)[:60]}")
        numel = math.prod(size)
        nbytes = numel * dtype.itemsize
        if numel:
            extent = (offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1) * dtype.itemsize
            if extent > storage.nbytes:
                raise Refused(
                    f"rebuilds a tensor of shape {tuple(size)} reaching past its storage of {storage.nbytes} bytes"
                )
            if nbytes > storage.nbytes:
                raise Refused(
                    f"rebuilds a tensor of shape {tuple(size)} and stride {tuple(stride)} that would expand "
                    f"{storage.nbytes} bytes of data into {nbytes} (a stride-0 or overlapping view)"
                )
        self.result.tensors += 1
        self.result.tensor_bytes += nbytes
        if self.result.tensors > MAX_TENSORS:
            raise Refused(f"holds more than {MAX_TENSORS} tensors")
        if self.result.tensor_bytes > self.budget:
            raise Refused(f"makes tensors of more than {self.budget} bytes from a file of fewer")
        return _Tensor(nbytes)


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and len(values) <= 64 and all(type(v) is int and 0 <= v < 2**62 for v in values)


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise Refused("builds an OrderedDict from something other than pairs")
    return OrderedDict(*args)


def _plain_set(*args: Any) -> set[Any]:
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise Refused("builds a set from something other than a list")
    return set(*args)


def _plain_complex(*args: Any) -> complex:
    if len(args) > 2 or not all(type(a) in (int, float) for a in args):
        raise Refused("builds a complex number from something other than numbers")
    return complex(*args)


def _latin1(*args: Any) -> bytes:
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise Refused("calls _codecs.encode with something other than a latin-1 string")
    return args[0].encode("latin1")


def _plain_bytearray(*args: Any) -> bytearray:
    if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
        raise Refused("builds a bytearray from something other than bytes (bytearray(n) allocates n bytes)")
    return bytearray(*args)


def _depth(obj: Any) -> int:
    """Nesting depth of plain containers, iteratively (a pickle can nest deeper than Python can recurse)."""
    deepest, seen = 0, set()
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list, tuple, set)) or id(item) in seen:
            continue
        seen.add(id(item))
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        values = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in values)
    return deepest


def zip_pickle(path: Path) -> tuple[bytes, Callable[[str], int | None]]:
    """The ``data.pkl`` of a torch zip file and a function giving each storage record's size (``None`` when
    absent or compressed). Refuses TorchScript archives and malformed zips."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
            prefixes = {n.partition("/")[0] + "/" for n in infos}
            if any(p + "constants.pkl" in infos or any(n.startswith(p + "code/") for n in infos) for p in prefixes):
                raise CheckpointError(
                    f"{show(path)}: is a TorchScript archive, not a checkpoint; save the model's weights with "
                    "torch.save(model.state_dict(), path) and convert that"
                )
            if len(pkl) != 1:
                raise CheckpointError(f"{show(path)}: a zip file without one data.pkl is not a torch checkpoint")
            info = infos[pkl[0]]
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{show(path)}: data.pkl is compressed or larger than {MAX_PICKLE_BYTES} bytes")
            data = z.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(
            f"{show(path)}: cannot read this torch zip file, it is truncated or corrupt ({first_line(str(e))})"
        ) from None
    prefix = pkl[0][: -len("data.pkl")]

    def record_size(key: str) -> int | None:
        rec = infos.get(f"{prefix}data/{key}")
        return rec.file_size if rec is not None and rec.compress_type == zipfile.ZIP_STORED else None

    return data, record_size


def scan_zip(path: Path, allowed: set[str]) -> ScanResult:
    """Dry-run the ``data.pkl`` of a torch zip file (see the module doc); raises on anything refused."""
    data, record_size = zip_pickle(path)
    return _run(path, io.BytesIO(data), allowed, record_size, os.path.getsize(path))


def scan_legacy(path: Path, allowed: set[str]) -> ScanResult:
    """Dry-run the main pickle of a legacy (pre-zip) torch file; its storages must fit in what follows it."""
    size = os.path.getsize(path)
    with path.open("rb") as f:
        stream = _Capped(f, MAX_PICKLE_BYTES)
        try:
            for _ in range(3):  # magic number, protocol version, system info: plain values only
                _Plain(stream).load()
        except Exception:
            raise CheckpointError(
                f"{show(path)}: cannot read this legacy torch file, it is truncated or corrupt"
            ) from None
        left = size - f.tell()

        def record_size(key: str) -> int | None:
            return left  # every storage's bytes follow the pickles; together they must fit in what is left

        return _run(path, stream, allowed, record_size, left)


class _Capped:
    """A file whose reads never ask for more than ``cap`` bytes in all (a pickle's length fields cannot make
    the reader allocate what the file does not hold)."""

    def __init__(self, f: IO[bytes], cap: int) -> None:
        self._f = f
        self._left = cap

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._f.readline(min(self._left, 1 << 20))
        self._left -= len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Plain(pickle._Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise Refused(f"names {module}.{name} where a plain value belongs")


def _run(
    path: Path, stream: Any, allowed: set[str], record_size: Callable[[str], int | None], data_limit: int
) -> ScanResult:
    size = os.path.getsize(path)
    scan = _Scan(path, allowed, record_size, MAX_EXPANSION * size + MAX_EXPANSION_SLACK)
    try:
        obj = _DryRun(stream, scan).load()
    except Refused as e:
        if scan.result.refused:
            return scan.result  # a refused global comes first: the refusal names every one seen
        raise CheckpointError(f"{show(path)}: refused to load: the pickle {e}") from None
    except RecursionError:
        raise CheckpointError(f"{show(path)}: refused to load: the pickle nests deeper than {MAX_DEPTH}") from None
    except Exception as e:
        if scan.result.refused:
            return scan.result  # a stand-in broke the dry run: the refusal names every global seen so far
        raise CheckpointError(
            f"{show(path)}: cannot read this checkpoint, it is truncated or corrupt ({type(e).__name__}: "
            f"{str(e)[:120]})"
        ) from None
    if scan.storage_bytes > data_limit:
        raise CheckpointError(
            f"{show(path)}: refused to load: its storages claim {scan.storage_bytes} bytes, more than the file holds"
        )
    if _depth(obj) > MAX_DEPTH:
        raise CheckpointError(f"{show(path)}: refused to load: containers nest deeper than {MAX_DEPTH} levels")
    return scan.result
