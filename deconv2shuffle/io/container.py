"""The loaded checkpoint, and which entry of a training container holds the weights.

A torch file may hold a bare state dict, a module, or a container (Lightning, timm, a trainer of one's own)
with the state dict under one of its keys beside epoch counters, optimizer state and hyper-parameters. The
state dict is what gets converted; the container is kept around it when writing a torch file back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .formats import MAX_EXPANSION, MAX_EXPANSION_SLACK, MAX_TENSORS, SHARDED, show

# Where training stacks put the weights, in the order we prefer them.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "generator", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")

_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deconv2shuffle-sha256")
_STOP = threading.Event()  # set at interpreter exit: a hash nobody waits for stops instead of delaying the exit
# threading's exit hooks run newest first, so this one runs before concurrent.futures joins its workers
getattr(threading, "_register_atexit", lambda f: None)(_STOP.set)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the chosen state_dict plus everything needed to write it back.

    ``trust_pickle`` and ``allow_globals`` record how it was loaded; writing a torch file from it reads the
    new file back with the same trust.
    """

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
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # sharded: shard -> its metadata
    trust_pickle: bool = False
    allow_globals: tuple[str, ...] = ()
    regions: dict[int, Any] = field(default_factory=dict, repr=False)  # safetensors: where untouched views lie
    _sha256: str | None = field(default=None, repr=False)
    _hashing: Future[str] | None = field(default=None, repr=False)

    @property
    def top_level(self) -> list[str]:
        return list(self.container) if isinstance(self.container, dict) else []

    @property
    def files(self) -> list[Path]:
        """The files this checkpoint was read from (the index first, then each shard once)."""
        if self.format == SHARDED:
            return [self.path] + sorted({self.path.parent / s for s in self.shard_of.values()})
        return [self.path]

    def sha256(self) -> str:
        """sha256 of the file (of the index and every shard, in order, when sharded)."""
        if self._sha256 is None:
            self._sha256 = _hash_files(self.files)
        return self._sha256

    def sha256_later(self) -> Callable[[], str]:
        """Start hashing in a worker thread (hashlib releases the GIL) and return a function that waits for the
        digest (and re-raises, in the caller's thread, whatever the hashing raised)."""
        if self._sha256 is not None:
            digest = self._sha256
            return lambda: digest
        if self._hashing is None:
            self._hashing = _HASHER.submit(_hash_files, self.files)
        return self._hashing.result


def _hash_files(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 24)  # read() into one buffer: faster than faulting in a mapping
    for p in files:
        with p.open("rb") as f, memoryview(buf) as view:
            while (n := f.readinto(buf)) and not _STOP.is_set():
                h.update(view[:n])
    return h.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def as_state_dict(obj: Any) -> Any:
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
            f"{show(path)}: the file holds a {type(container).__name__}, not a dict of tensors; nothing to convert"
        )
    looks = [str(k) for k, v in container.items() if isinstance(k, str) and _is_state_dict(as_state_dict(v))]
    entries = ", ".join(map(repr, container)) or "none"
    if prefer is not None:
        if prefer not in container:
            raise CheckpointError(f"{show(path)}: no entry {prefer!r}; top-level entries are {entries}")
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
            f"{show(path)}: several entries look like state_dicts ({', '.join(looks)}); choose one with "
            f"state_dict_key={looks[0]!r}"
        )
    if _is_state_dict(container):
        return None, []
    raise CheckpointError(
        f"{show(path)}: found no state_dict; top-level entries are {entries}. Name the entry that holds the "
        "weights with state_dict_key='...'"
    )


def split_state_dict(raw: Any, chosen: str | None, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a state dict (keys as strings) and its other entries carried through untouched.

    Two keys that become the same string (``1`` and ``"1"``) are an error, not a silent overwrite.
    """
    where = f"[{chosen!r}]" if chosen else ""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{show(path)}: entry {chosen!r} is a {type(raw).__name__}, not a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    passthrough: dict[str, Any] = {}
    original: dict[str, Any] = {}
    for k, v in raw.items():
        name = k if isinstance(k, str) else str(k)
        if name in original:
            raise CheckpointError(
                f"{show(path)}: state_dict{where} has keys {original[name]!r} and {k!r}, which are both {name!r} "
                "as names; rename one of them"
            )
        original[name] = k
        if isinstance(v, torch.Tensor):
            state[name] = v
        elif name.endswith("_extra_state") or (chosen is None and not isinstance(v, Mapping)):
            # module extra state, or a plain value saved beside the weights in a flat dict ("step": 3)
            passthrough[name] = v
        else:
            raise CheckpointError(
                f"{show(path)}: state_dict{where}[{k!r}] is a {type(v).__name__}, expected a tensor; "
                "pick another entry with state_dict_key='...'"
            )
    if not state:
        raise CheckpointError(f"{show(path)}: the state_dict is empty")
    return state, passthrough


def check_tensors(state: Mapping[str, torch.Tensor], path: Path, file_bytes: int) -> None:
    """Every tensor dense, with data, on the CPU, no view that makes more bytes than its storage holds, and all
    of them together at most ``MAX_EXPANSION`` times the file (tied names counted once per name)."""
    if len(state) > MAX_TENSORS:
        raise CheckpointError(f"{show(path)}: holds {len(state)} tensors, more than the {MAX_TENSORS} allowed")
    total = 0
    for key, t in state.items():
        kind = _odd_kind(t)
        if kind:
            raise CheckpointError(
                f"{show(path)}: tensor {key!r} is {kind}; only dense tensors with data can be converted"
            )
        nbytes = t.numel() * t.element_size()
        if nbytes > t.untyped_storage().nbytes():
            raise CheckpointError(
                f"{show(path)}: tensor {key!r} of shape {tuple(t.shape)} is a view that would expand "
                f"{t.untyped_storage().nbytes()} bytes into {nbytes} (stride 0 or overlapping); refusing it"
            )
        total += nbytes
    budget = MAX_EXPANSION * file_bytes + MAX_EXPANSION_SLACK
    if total > budget:
        raise CheckpointError(
            f"{show(path)}: its tensors would make {total} bytes from a file of {file_bytes}; refusing it"
        )


def _odd_kind(t: torch.Tensor) -> str | None:
    if t.is_meta:
        return "a meta tensor (no data)"
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a sparse tensor ({t.layout})"
    if t.is_quantized:
        return "a quantized tensor"
    if t.device.type != "cpu":
        return f"on {t.device}"
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return f"a tensor subclass ({type(t).__name__})"
    return None
