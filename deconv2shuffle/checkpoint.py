"""Checkpoint I/O: sniff the format from the bytes, load safely and lazily, write atomically.

Reading never executes code from a file unless the caller passes ``trust_pickle=True``:
torch files load with ``weights_only=True`` and a refusal names the global that was asked for.
Tensors stay on disk until used (``mmap=True`` for torch zip files, zero-copy views over an
``mmap`` for safetensors), so a checkpoint is never held twice in memory.

Writing goes to a temporary file in the destination folder, is fsynced and then renamed over
the destination with ``os.replace``: a killed run leaves the old file or none, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import pickle
import re
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, OutputExistsError, UnsafeCheckpointError

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
SAFETENSORS = "safetensors"
SHARDED = "safetensors-sharded"

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# Where training stacks put the weights, in the order we prefer them.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "generator", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
# Optimizer state entries written beside the weights by common trainers.
OPTIMIZER_KEYS = ("optimizer_states", "optimizer", "optimizer_state_dict", "optim")

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("C64", "complex64"),
):
    if hasattr(torch, _attr):
        ST_DTYPES[_name] = getattr(torch, _attr)
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def sniff(path: Path) -> str:
    """The checkpoint format of ``path`` from its first bytes; raises with what the file looks like."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder; give a checkpoint file or a *.safetensors.index.json") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n > size:
            raise CheckpointError(
                f"{path}: safetensors header length {n} runs past the end of the file ({size} bytes); "
                "the file is truncated or corrupt"
            )
        return SAFETENSORS
    if head.lstrip()[:1] == b"{":
        return SHARDED
    kind = _foreign_kind(head)
    raise CheckpointError(
        f"{path}: not a checkpoint ({kind}); expected a torch file (.pth/.pt/.bin/.ckpt), .safetensors "
        "or a *.safetensors.index.json"
    )


def _foreign_kind(head: bytes) -> str:
    known = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip archive",
        b"\x93NUMPY": "a NumPy array",
        b"\x89HDF": "an HDF5 file",
        b"\x08": "possibly an ONNX model",
    }
    for magic, name in known.items():
        if head.startswith(magic):
            return name
    if head.startswith(b"\x80"):
        return "a plain pickle, not written by torch.save"
    return f"unknown content starting with {head[:8]!r}"


# --------------------------------------------------------------------------------------------
# safetensors, read lazily


@dataclass(frozen=True)
class StEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


def _parse_safetensors_header(
    path: Path, data: bytes | mmap.mmap, size: int
) -> tuple[dict[str, StEntry], dict[str, str]]:
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > size:
        raise CheckpointError(f"{path}: safetensors header length {n} runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    entries: dict[str, StEntry] = {}
    base = 8 + n
    for key, info in header.items():
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: tensor {key!r} has a malformed or unsupported header entry {info!r}"
            ) from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - start != math.prod(shape) * itemsize or start < 0 or base + end > size:
            raise CheckpointError(
                f"{path}: tensor {key!r} claims bytes {start}..{end} (shape {shape}) but the file holds "
                f"{size - base} data bytes; the file is truncated or corrupt"
            )
        entries[key] = StEntry(dtype, shape, base + start, base + end)
    return entries, {str(k): str(v) for k, v in meta.items()}


class SafetensorsFile:
    """A safetensors file opened with ``mmap``: header parsed, tensors as zero-copy views."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("rb")
        size = os.fstat(self._file.fileno()).st_size
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.entries, self.metadata = _parse_safetensors_header(path, self._mm, size)
        self.regions: dict[int, StEntry] = {}  # data_ptr of each tensor handed out -> its bytes in the file

    def tensor(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        if e.end == e.start:
            return torch.empty(e.shape, dtype=e.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the buffer is read-only; nothing here writes to it
            raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=e.end - e.start, offset=e.start)
        self.regions[raw.data_ptr()] = e
        return raw.view(e.dtype).reshape(e.shape)

    def copy_region(self, t: torch.Tensor, out: IO[bytes] | Sink) -> bool:
        """Write ``t``'s bytes by reading them from the file (pread into a buffer), if ``t`` is one of
        this file's tensors, untouched. Faster than faulting the mapping in page by page."""
        e = self.regions.get(t.data_ptr())
        if e is None or not t.is_contiguous() or t.numel() * t.element_size() != e.end - e.start:
            return False
        copy_range(self._file.fileno(), e.start, e.end - e.start, out)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: self.tensor(k) for k in self.entries}


def copy_range(fd: int, start: int, length: int, out: IO[bytes] | Sink, chunk: int = 1 << 24) -> None:
    buf = bytearray(min(chunk, max(length, 1)))
    with memoryview(buf) as view:
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(len(buf), length - done)]], start + done)
            if n <= 0:
                raise CheckpointError(f"source file shrank while copying (at byte {start + done})")
            out.write(view[:n])
            done += n


def _read_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: a sharded index needs a 'weight_map' of key -> shard file")
    for key, shard in weight_map.items():
        shard_path = Path(shard)
        if shard_path.is_absolute() or ".." in shard_path.parts or shard_path.name != shard:
            raise CheckpointError(
                f"{path}: weight_map[{key!r}] names shard {shard!r} outside the index's folder; refusing it"
            )
        if not (path.parent / shard).is_file():
            raise CheckpointError(f"{path}: weight_map[{key!r}] names shard {shard!r}, which does not exist")
    return weight_map, {k: v for k, v in index.items() if k != "weight_map"}


# --------------------------------------------------------------------------------------------
# The loaded checkpoint


@dataclass
class Checkpoint:
    """A loaded checkpoint: the chosen state_dict plus everything needed to write it back."""

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    container: Any = None  # torch: the whole loaded object; None for safetensors
    state_key: str | None = None  # top-level entry holding the state_dict; None when bare
    candidates: list[str] = field(default_factory=list)  # other entries that look like state_dicts
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__
    shard_of: dict[str, str] = field(default_factory=dict)  # sharded: key -> shard file name
    index_extra: dict[str, Any] = field(default_factory=dict)  # sharded: index entries besides weight_map
    passthrough: dict[str, Any] = field(default_factory=dict)  # non-tensor state_dict entries (_extra_state)
    _sha256: str | None = None
    _sources: list[SafetensorsFile] = field(default_factory=list, repr=False)

    @property
    def top_level(self) -> list[str]:
        return list(self.container) if isinstance(self.container, dict) else []

    @property
    def files(self) -> list[Path]:
        if self.format == SHARDED:
            return [self.path] + sorted({self.path.parent / s for s in self.shard_of.values()})
        return [self.path]

    def sha256(self) -> str:
        """sha256 of the file (of the index and every shard, in order, when sharded)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            for p in self.files:
                buf = bytearray(1 << 24)  # read() into one buffer: faster than faulting in a mapping
                with p.open("rb") as f, memoryview(buf) as view:
                    while n := f.readinto(buf):
                        h.update(view[:n])
            self._sha256 = h.hexdigest()
        return self._sha256

    def sha256_later(self) -> Callable[[], str]:
        """Start hashing in a thread (hashlib releases the GIL) and return a function that waits for it."""
        if self._sha256 is not None:
            digest = self._sha256
            return lambda: digest
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.sha256()
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

        thread = threading.Thread(target=work, name="deconv2shuffle-sha256", daemon=True)
        thread.start()

        def result() -> str:
            thread.join()
            if errors:
                raise errors[0]
            assert self._sha256 is not None
            return self._sha256

        return result


def _load_torch(path: Path, fmt: str, trust_pickle: bool) -> Any:
    # torch.load sends a path ending in .safetensors to safetensors whatever its bytes are, and mmap
    # needs a path: a torch file with that name is read through a file object, without mmap.
    by_name = not path.name.endswith(".safetensors")
    try:
        if by_name:
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=fmt == TORCH_ZIP)
        with path.open("rb") as f:
            return torch.load(f, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[: ]+`?([\w.]+)", text, re.I)
        if found and not trust_pickle:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the pickle asks for global {found.group(1)!r}, which can run code. "
                "Rerun with --trust-pickle only if you trust who made this file"
            ) from None
        raise CheckpointError(f"{path}: corrupt pickle data ({_first_line(text)})") from None
    except ModuleNotFoundError as e:  # a trusted pickle naming code this Python cannot import: not damage
        raise CheckpointError(
            f"{path}: the pickle needs module {e.name!r}, which cannot be imported here; run from the folder "
            "that holds it, or add that folder to PYTHONPATH"
        ) from None
    except Exception as e:  # whatever torch raises underneath on damaged bytes, the user gets one line
        raise CheckpointError(
            f"{path}: cannot read this {fmt} checkpoint, it is truncated or corrupt ({_first_line(str(e))})"
        ) from None


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no detail")
    return line[:200]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _as_state_dict(obj: Any) -> Any:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return obj


def choose_state_dict(container: Any, prefer: str | None, path: Path) -> tuple[str | None, list[str]]:
    """Which top-level entry holds the weights: ``None`` for a bare state_dict.

    Returns the choice and every entry that looks like a state_dict (for the report).
    """
    if isinstance(container, torch.nn.Module):
        return None, []
    if not isinstance(container, Mapping):
        raise CheckpointError(
            f"{path}: the file holds a {type(container).__name__}, not a dict of tensors; nothing to convert"
        )
    looks = [str(k) for k, v in container.items() if isinstance(k, str) and _is_state_dict(_as_state_dict(v))]
    if prefer is not None:
        if prefer not in container:
            raise CheckpointError(
                f"{path}: no entry {prefer!r}; top-level entries are {', '.join(map(str, container)) or 'none'}"
            )
        return prefer, looks
    if container and all(isinstance(v, torch.Tensor) or str(k).endswith("_extra_state") for k, v in container.items()):
        return None, []
    for key in STATE_DICT_KEYS + EMA_KEYS:
        if key in looks:
            return key, looks
    if len(looks) == 1:
        return looks[0], looks
    if looks:
        raise CheckpointError(
            f"{path}: several entries look like state_dicts ({', '.join(looks)}); choose one with --state-dict-key"
        )
    if _is_state_dict(container):
        return None, []
    raise CheckpointError(
        f"{path}: found no state_dict; top-level entries are {', '.join(map(str, container)) or 'none'}. "
        "Name the entry that holds the weights with --state-dict-key"
    )


def load_checkpoint(
    path: str | os.PathLike[str], *, state_dict_key: str | None = None, trust_pickle: bool = False
) -> Checkpoint:
    """Load a checkpoint of any supported format. Tensors stay memory-mapped where the format allows."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == SAFETENSORS:
        st = SafetensorsFile(path)
        single = st.state_dict()
        restore_aliases(single, st.metadata)
        return Checkpoint(path, fmt, single, metadata=st.metadata, _sources=[st])
    if fmt == SHARDED:
        weight_map, extra = _read_index(path)
        state: dict[str, torch.Tensor] = {}
        sources: list[SafetensorsFile] = []
        for shard in dict.fromkeys(weight_map.values()):
            shard_path = path.parent / shard
            if sniff(shard_path) != SAFETENSORS:
                raise CheckpointError(f"{shard_path}: a shard of {path.name} is not a safetensors file")
            st = SafetensorsFile(shard_path)
            sources.append(st)
            shard_state = st.state_dict()
            restore_aliases(shard_state, st.metadata)
            for key, value in shard_state.items():
                if weight_map.get(key) == shard:
                    state[key] = value
        missing = [k for k in weight_map if k not in state]
        if missing:
            raise CheckpointError(f"{path}: key {missing[0]!r} is listed in the index but absent from its shard")
        meta = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
        return Checkpoint(
            path, fmt, state, shard_of=dict(weight_map), index_extra=extra, metadata=dict(meta or {}), _sources=sources
        )
    container = _load_torch(path, fmt, trust_pickle)
    chosen, looks = choose_state_dict(container, state_dict_key, path)
    raw = _as_state_dict(container if chosen is None else container[chosen])
    where = f"[{chosen!r}]" if chosen else ""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: entry {chosen!r} is a {type(raw).__name__}, not a dict of tensors")
    state, passthrough = {}, {}
    for k, v in raw.items():
        if isinstance(v, torch.Tensor):
            state[str(k)] = v
        elif str(k).endswith("_extra_state") or (chosen is None and not isinstance(v, Mapping)):
            # module extra state, or a plain value saved beside the weights in a flat dict ("step": 3):
            # carried through untouched
            passthrough[str(k)] = v
        else:
            raise CheckpointError(
                f"{path}: state_dict{where}[{k!r}] is a {type(v).__name__}, expected a tensor; "
                "pick another entry with --state-dict-key"
            )
    if not state:
        raise CheckpointError(f"{path}: the state_dict is empty")
    return Checkpoint(
        path, fmt, state, container=container, state_key=chosen, candidates=looks, passthrough=passthrough
    )


# --------------------------------------------------------------------------------------------
# Writing


def output_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".index.json"):
        return SHARDED
    if name.endswith(".safetensors"):
        return SAFETENSORS
    return TORCH_ZIP


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse to overwrite without ``force``; the input may be overwritten only with ``force``."""
    out_r = out.resolve()
    for p in inputs:
        if p.resolve() == out_r and not force:
            raise OutputExistsError(
                f"{out}: is the input file; refusing to overwrite it (add --force to replace it atomically)"
            )
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists; add --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{out}: folder {parent} is not writable")


class Sink:
    """What :func:`atomic_file` yields: a binary file to write to, and its temporary ``path`` for
    writers that want a file name (``torch.save`` is faster given a path than a file object)."""

    def __init__(self, f: IO[bytes], path: Path) -> None:
        self._f = f
        self.path = path

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _WriteBehind(threading.Thread):
    """Asks the kernel, 20 times a second, to start writing the file's dirty pages to disk
    (``POSIX_FADV_DONTNEED`` starts asynchronous writeback). Without it a large write piles up
    dirty pages until the kernel throttles the writer, and the final fsync waits for all of them."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="deconv2shuffle-write-behind", daemon=True)
        self._fd = os.open(path, os.O_RDONLY)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def __enter__(self) -> _WriteBehind:
        if hasattr(os, "posix_fadvise"):
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.is_alive():
            self.join()
        os.close(self._fd)


@contextlib.contextmanager
def atomic_file(path: Path, check: Callable[[Path], None] | None = None) -> Iterator[Sink]:
    """Yield a temp file beside ``path``; on success fsync it, run ``check`` on it (a read-back),
    and ``os.replace`` it into place. On any failure the temp file is removed."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot create a file in {parent} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f, _WriteBehind(Path(tmp)):
            yield Sink(f, Path(tmp))  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            raise CheckpointError(f"{path}: write failed ({e.strerror or e}); nothing was written") from None
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (no copy when it is already contiguous on the CPU)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(_as_bits(t).numpy())  # type: ignore[arg-type]


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)


LateValue = Callable[[], str]


def write_safetensors(
    f: IO[bytes] | Sink,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str | LateValue],
    sources: Sequence[SafetensorsFile] = (),
) -> dict[str, str]:
    """Write ``tensors`` in safetensors layout. Tensors that are views of the same memory are written
    once; the others are listed in metadata ``deconv2shuffle.aliases`` (name -> stored name) and
    returned, since safetensors cannot express aliasing.

    A metadata value may be a callable returning a 64-character string (a sha256 hex digest still
    being computed in another thread): a placeholder of that length is written first and replaced
    in place once the data is written."""
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    aliases: dict[str, str] = {}
    stored: list[tuple[str, torch.Tensor]] = []
    for name, t in tensors.items():
        key = _storage_key(t)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored.append((name, t))
    header: dict[str, Any] = {}
    late = {k: v for k, v in metadata.items() if callable(v)}
    meta: dict[str, str] = {k: ("0" * 64 if callable(v) else v) for k, v in metadata.items()}
    if aliases:
        meta["deconv2shuffle.aliases"] = json.dumps(aliases, sort_keys=True)
    if meta:
        header["__metadata__"] = meta
    offset = 0
    for name, t in stored:
        if t.dtype not in ST_NAMES:
            raise CheckpointError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for _, t in stored:
        if not any(src.copy_region(t, f) for src in sources):
            f.write(_tensor_bytes(t))
    if late:
        for late_key, compute in late.items():
            meta[late_key] = compute()  # type: ignore[operator]
            if len(meta[late_key]) != 64:
                raise ValueError(f"late metadata {late_key!r} must be 64 characters")
        patched = json.dumps(header, separators=(",", ":")).encode()
        patched += b" " * (-len(patched) % 8)
        if len(patched) != len(raw):
            raise ValueError("late metadata changed the header length")
        f.flush()
        f.seek(8)
        f.write(patched)
        f.seek(0, os.SEEK_END)
    return aliases


def restore_aliases(state: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Re-tie tensors that :func:`write_safetensors` stored once (in place on a freshly loaded dict)."""
    text = metadata.get("deconv2shuffle.aliases")
    if text:
        for name, target in json.loads(text).items():
            if target in state:
                state[name] = state[target]


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    like: Checkpoint | None = None,
    container_updates: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str | LateValue] | None = None,
    force: bool = False,
    check_values: ValueCheck = lambda key: False,
) -> list[Path]:
    """Write ``state_dict`` to ``path`` in the format its extension names, atomically.

    ``like`` is the checkpoint it came from: its container (epoch, hyper_parameters, optimizer
    state...) is kept around the new state_dict, with ``container_updates`` applied; safetensors
    metadata is kept and ``metadata`` added; a sharded source keeps its shard layout.
    Every file is read back before it is renamed into place: all keys, shapes and dtypes, and the
    values of the keys ``check_values`` selects. Returns the files written.
    """
    out = Path(path)
    check_output(out, like.files if like else [], force)
    fmt = output_format(out)
    passthrough = like.passthrough if like else {}
    if fmt == TORCH_ZIP:
        obj: Any = {**state_dict, **passthrough}
        state_key = None
        if like is not None and like.container is not None and like.state_key is not None:
            state_key = like.state_key
            obj = dict(like.container)
            obj[state_key] = {**state_dict, **passthrough}
            obj.update(container_updates or {})
        with atomic_file(out, _check_torch(out, state_key, state_dict, check_values)) as f:
            torch.save(obj, f.path)  # by name: torch writes a path without a Python-level copy
        return [out]
    meta: dict[str, str | LateValue] = {"format": "pt"}
    meta.update(like.metadata if like and like.format == SAFETENSORS else {})
    meta.update({str(k): (v if callable(v) else str(v)) for k, v in (metadata or {}).items()})
    if fmt == SAFETENSORS:
        with atomic_file(out, _check_safetensors(out, state_dict, check_values)) as f:
            write_safetensors(f, state_dict, meta, like._sources if like else ())
        return [out]
    return _save_sharded(out, state_dict, like, meta, force, check_values)


def _save_sharded(
    out: Path,
    state_dict: Mapping[str, torch.Tensor],
    like: Checkpoint | None,
    meta: dict[str, str | LateValue],
    force: bool,
    check_values: ValueCheck,
) -> list[Path]:
    stem = out.name[: -len(".index.json")]
    stem = stem[: -len(".safetensors")] if stem.endswith(".safetensors") else stem
    shard_of = dict(like.shard_of) if like and like.shard_of else {}
    default = f"{stem}.safetensors" if not shard_of else next(iter(shard_of.values()))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in state_dict.items():
        groups.setdefault(shard_of.get(key) or _sibling_shard(key, shard_of) or default, {})[key] = t
    written = []
    inputs = like.files if like else []
    for shard in groups:
        check_output(out.parent / shard, inputs, force)
    shard_meta = {src.path.name: src.metadata for src in (like._sources if like else [])}
    for shard, tensors in groups.items():
        with atomic_file(out.parent / shard, _check_safetensors(out.parent / shard, tensors, check_values)) as f:
            # each shard keeps its own metadata, with the provenance added
            write_safetensors(f, tensors, {**shard_meta.get(shard, {}), **meta}, like._sources if like else ())
        written.append(out.parent / shard)
    index = dict(like.index_extra) if like else {}
    index_meta = dict(index.get("metadata") or {}) if isinstance(index.get("metadata"), dict) else {}
    index_meta["total_size"] = sum(t.numel() * t.element_size() for t in state_dict.values())
    index["metadata"] = index_meta
    index["weight_map"] = {k: shard for shard, tensors in groups.items() for k in tensors}
    with atomic_file(out) as f:
        f.write(json.dumps(index, indent=2).encode())
    return [out, *written]


def _sibling_shard(key: str, shard_of: Mapping[str, str]) -> str | None:
    """A new key (``up.conv.weight``) goes to the shard of its module's old keys (``up.weight``)."""
    module = key.rsplit(".", 1)[0]
    while module:
        for old, shard in shard_of.items():
            if old.startswith(module + "."):
                return shard
        module = module.rpartition(".")[0]
    return None


ValueCheck = Callable[[str], bool]


def _compare(
    out: Path, back: Mapping[str, Any], expected: Mapping[str, torch.Tensor], check_values: ValueCheck
) -> None:
    for key, t in expected.items():
        got = back.get(key)
        if not isinstance(got, torch.Tensor) or got.shape != t.shape or got.dtype != t.dtype:
            raise CheckpointError(f"{out}: read-back check failed for {key!r}; nothing was written")
        if check_values(key) and not torch.equal(_as_bits(got), _as_bits(t)):
            raise CheckpointError(f"{out}: read-back values differ for {key!r}; nothing was written")


def _check_torch(out: Path, state_key: str | None, expected: Mapping[str, torch.Tensor], check_values: ValueCheck):
    def check(tmp: Path) -> None:
        loaded = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        _compare(out, loaded[state_key] if state_key is not None else loaded, expected, check_values)

    return check


def _check_safetensors(out: Path, expected: Mapping[str, torch.Tensor], check_values: ValueCheck):
    def check(tmp: Path) -> None:
        st = SafetensorsFile(tmp)
        back: dict[str, torch.Tensor] = st.state_dict()
        restore_aliases(back, st.metadata)
        _compare(out, back, expected, check_values)

    return check
