"""Planning a batch: which files, where each goes, which collide, and which are up to date.

"Up to date" is decided on recorded identity, not on modification times: for each output
``OUT/sub/gen.pth`` a small record ``OUT/.deconv2shuffle/sub/gen.pth.json`` holds what it was made from
(size, ``mtime_ns``, ``ctime_ns`` and inode of the input, its shards, the spec and the model
files, taken *before* the input was read), a digest of the conversion options, and the identity
of the output written. An output is up to date when all of that still matches; an input that was
replaced or touched during its conversion no longer matches its record, so the next run redoes
it. The record also says the output is the batch's own: one without a record is replaced only
with ``force=True``.

ONNX models (named ``.onnx``, or sniffed from their first bytes) go to ``OUT/sub/<name>.onnx``;
their record lists the model file and the external-data files it read, and no checkpoint option
changes what they become.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import SpecError, UsageError
from ..onnx_graph.files import looks_like_onnx

CHECKPOINT_PATTERNS = (
    "*.pth",
    "*.pt",
    "*.bin",
    "*.ckpt",
    "*.pth.tar",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.onnx",
)
_SUFFIXES = (
    ".safetensors.index.json",
    ".index.json",
    ".safetensors",
    ".pth.tar",
    ".pth",
    ".pt",
    ".bin",
    ".ckpt",
    ".onnx",
)
ONNX = "onnx"  # a job's "kind" for ONNX models; checkpoints are "checkpoint"
RECORDS = ".deconv2shuffle"  # the folder of records, at the top of the output folder
RECORD_VERSION = 1
# options that change what a conversion writes (jobs, shard, force and the pickle allowances do not)
OUTPUT_OPTIONS = (
    "source_model",
    "target_model",
    "source_args",
    "target_args",
    "approx",
    "rename",
    "drop",
    "tolerance",
    "input_shape",
    "allow_missing",
    "drop_unexpected",
    "hash_source",
    "state_dict_key",
)


def stem(path: Path) -> str:
    """The file name without its checkpoint suffix (``m.safetensors.index.json`` -> ``m``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def sidecar(path: Path) -> Path:
    """The spec beside a checkpoint: ``gen.pth`` -> ``gen.toml``."""
    return path.with_name(stem(path) + ".toml")


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate ``shard=(i, n)``: ``0 <= i < n`` (``i`` counts from 0)."""
    if shard is None:
        return None
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"shard={shard!r}: need 0 <= i < n (i counts from 0)")
    return i, n


def in_shard(rel: str, shard: tuple[int, int] | None) -> bool:
    """Whether the file at relative path ``rel`` belongs to ``shard`` (by a hash of the path)."""
    if shard is None:
        return True
    digest = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return digest % shard[1] == shard[0]


def index_shards(index: Path) -> list[Path]:
    """The shard files a sharded index lists (none when it cannot be read: that is reported later)."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({index.parent / s for s in weight_map.values() if isinstance(s, str)})
    except (OSError, ValueError, AttributeError, RecursionError):
        return []


def find_checkpoints(root: Path, patterns: Iterable[str], recursive: bool) -> list[Path]:
    """Checkpoint files under ``root`` (shards listed by an index count as part of that index)."""
    if not root.is_dir():
        raise SpecError(f"{root}: not a folder")
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in (root.rglob(pattern) if recursive else root.glob(pattern)) if p.is_file())
    shards = {s for p in found if p.name.endswith(".index.json") for s in index_shards(p)}
    visible = [p for p in found - shards if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(visible, key=lambda p: str(p.relative_to(root)))


def is_onnx(path: Path) -> bool:
    """An ONNX model: named ``.onnx`` (a corrupt one is then reported as such), or sniffed as one."""
    return path.name.lower().endswith(".onnx") or looks_like_onnx(path)


def output_path(src: Path, in_dir: Path, out_dir: Path, to: str, kind: str = "checkpoint") -> Path:
    """Where ``src`` is written: the same relative path under ``out_dir``, with ``to``'s extension
    (an ONNX model always becomes ``<name>.onnx``)."""
    dst = out_dir / src.relative_to(in_dir)
    if kind == ONNX:
        return dst if dst.name.lower().endswith(".onnx") else dst.with_name(stem(src) + ".onnx")
    if to == "same":
        return dst
    ext = {"safetensors": ".safetensors", "pth": ".pth"}[to]
    return dst.with_name(stem(src) + ext)


def collisions(pairs: Iterable[tuple[Path, Path]], inputs: Iterable[Path]) -> dict[Path, str]:
    """The inputs that cannot be converted because of where they would be written, with the reason.

    Args:
        pairs: ``(input, output)`` for every file of the batch.
        inputs: every file the batch reads (checkpoints, shards, specs).

    Returns:
        Each input whose output another input shares (``gen.pth`` and ``gen.ckpt`` with
        ``to='safetensors'``) or whose output is a file the batch reads, with a one-line reason
        naming every input involved.
    """
    by_output: dict[Path, list[Path]] = {}
    for src, dst in pairs:
        by_output.setdefault(dst.resolve(), []).append(src)
    read = {p.resolve() for p in inputs}
    bad: dict[Path, str] = {}
    for dst, srcs in by_output.items():
        if len(srcs) > 1:
            names = ", ".join(str(s) for s in srcs[:-1]) + f" and {srcs[-1]}"
            both, neither = ("both", "neither") if len(srcs) == 2 else ("all", "none")
            reason = f"{names} would {both} be written to {dst}; {neither} was converted (rename one, or use to='same')"
            bad.update((s, reason) for s in srcs)
        elif dst in read:
            bad[srcs[0]] = f"{srcs[0]}: its output {dst} is a file this batch reads; choose another output folder"
    return bad


def record_path(dst: Path, out_dir: Path) -> Path:
    """Where the record of output ``dst`` lives: ``OUT/.deconv2shuffle/<dst relative to OUT>.json``."""
    return out_dir / RECORDS / f"{dst.relative_to(out_dir).as_posix()}.json"


def identity(path: Path) -> list[int] | None:
    """What tells one version of a file from another: size, mtime_ns, ctime_ns, inode (None: absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def model_files(job: Mapping[str, Any]) -> list[Path]:
    """The Python files the job's explicit model references name (``"dir/m.py:Name"``)."""
    refs = (job.get("source_model"), job.get("target_model"))
    wheres = [str(r).rpartition(":")[0] for r in refs if r]
    return [Path(w) for w in wheres if w.endswith(".py")]


def job_inputs(job: Mapping[str, Any]) -> list[Path]:
    """Every file a job reads: the checkpoint (and its shards), its spec, the model files; for an
    ONNX model, the model and its external-data files (``data_files``, as last recorded)."""
    src = Path(job["input"])
    if job.get("kind") == ONNX:
        return [src, *(Path(p) for p in job.get("data_files", ()))]
    shards = index_shards(src) if src.name.endswith(".index.json") else []
    spec = [Path(job["spec"])] if job.get("spec") else []
    return [src, *shards, *spec, *model_files(job)]


def options_digest(job: Mapping[str, Any]) -> str:
    """A digest of the options that change what the job writes (none of them change an ONNX model)."""
    chosen = {"kind": ONNX} if job.get("kind") == ONNX else {k: job.get(k) for k in OUTPUT_OPTIONS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_state(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a record compares: the identity of every input, and the options."""
    return {
        "inputs": {str(p): identity(p) for p in job_inputs(job)},
        "options": options_digest(job),
    }


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none (or it is not one of ours)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    return data


def recorded_data_files(record: Mapping[str, Any] | None, src: Path) -> list[str]:
    """The external-data files an ONNX model's record lists (every input but the model itself)."""
    inputs = record.get("inputs") if record else None
    return [p for p in inputs if p != str(src)] if isinstance(inputs, dict) else []


def up_to_date(job: Mapping[str, Any], record: Mapping[str, Any] | None) -> bool:
    """Whether the output was made from exactly these inputs and options, and is still as written."""
    if record is None or record.get("output") is None:
        return False
    state = current_state(job)
    return (
        record.get("inputs") == state["inputs"]
        and record.get("options") == state["options"]
        and record.get("output") == identity(Path(job["output"]))
    )


def remove_record(path: Path) -> None:
    """Forget a record (after a claim that came to nothing)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
