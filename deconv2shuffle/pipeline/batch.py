"""batch: convert a folder of checkpoints in one process (or ``jobs`` worker processes).

Each file gets the shared spec/models, or its sidecar spec (``gen.pth`` + ``gen.toml``). A bad
file is recorded and skipped; outputs that are newer than their input and spec are left alone, so
a killed batch resumes where it stopped. ``shard=(i, n)`` keeps the files whose path hashes to
``i`` modulo ``n``: a stable split for array jobs, with no coordinator.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..core.sources import Sources, load_sources
from ..errors import Deconv2ShuffleError, SpecError, UsageError
from .files import ReadOptions, write_json
from .single import migrate

CHECKPOINT_PATTERNS = ("*.pth", "*.pt", "*.bin", "*.ckpt", "*.safetensors", "*.safetensors.index.json")
_SUFFIXES = (".safetensors.index.json", ".index.json", ".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class FileResult:
    """What happened to one file of a batch."""

    input: str
    output: str
    status: str  # converted | skipped | failed
    spec: str | None = None
    error: str | None = None
    layers: int = 0
    max_rel_error: float | None = None
    exact: bool | None = None
    seconds: float = 0.0


@dataclass
class BatchResult:
    """Every file of a batch, in input order, and the time it took."""

    input_dir: str
    output_dir: str
    shard: str | None
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """How many files have ``status`` (converted, skipped or failed)."""
        return sum(f.status == status for f in self.files)

    @property
    def ok(self) -> bool:
        """No file failed."""
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the counts and ``ok``."""
        data = asdict(self)
        data.update(
            converted=self.count("converted"), skipped=self.count("skipped"), failed=self.count("failed"), ok=self.ok
        )
        return data


def _stem(path: Path) -> str:
    """The file name without its checkpoint suffix (``m.safetensors.index.json`` -> ``m``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _sidecar(path: Path) -> Path:
    """The spec beside a checkpoint: ``gen.pth`` -> ``gen.toml``."""
    return path.with_name(_stem(path) + ".toml")


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate ``shard=(i, n)``: ``0 <= i < n``."""
    if shard is None:
        return None
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"shard={shard!r}: need 0 <= i < n (i counts from 0)")
    return i, n


def _in_shard(rel: str, shard: tuple[int, int] | None) -> bool:
    """Whether the file at relative path ``rel`` belongs to ``shard`` (by a hash of the path)."""
    if shard is None:
        return True
    digest = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return digest % shard[1] == shard[0]


def _find_checkpoints(root: Path, patterns: Iterable[str], recursive: bool) -> list[Path]:
    """Checkpoint files under ``root`` (shards listed by an index count as part of that index)."""
    if not root.is_dir():
        raise SpecError(f"{root}: not a folder")
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in (root.rglob(pattern) if recursive else root.glob(pattern)) if p.is_file())
    shards: set[Path] = set()
    for p in found:
        if p.name.endswith(".index.json"):
            try:
                weight_map = json.loads(p.read_text()).get("weight_map", {})
                shards.update(p.parent / s for s in weight_map.values() if isinstance(s, str))
            except (OSError, ValueError, AttributeError):
                pass  # a broken index is reported when it is converted
    return sorted((p for p in found - shards if not p.name.startswith(".")), key=lambda p: str(p.relative_to(root)))


def _output_path(src: Path, in_dir: Path, out_dir: Path, to: str) -> Path:
    """Where ``src`` is written: the same relative path under ``out_dir``, with ``to``'s extension."""
    rel = src.relative_to(in_dir)
    dst = out_dir / rel
    if to == "same":
        return dst
    ext = {"safetensors": ".safetensors", "pth": ".pth"}[to]
    return dst.with_name(_stem(src) + ext)


def _up_to_date(src: Path, dst: Path, spec: Path | None) -> bool:
    """Whether ``dst`` is newer than its input and spec."""
    if not dst.exists():
        return False
    newest = src.stat().st_mtime
    if spec is not None and spec.exists():
        newest = max(newest, spec.stat().st_mtime)
    return dst.stat().st_mtime >= newest


_SOURCES: dict[tuple[Any, ...], Sources] = {}  # per process: a spec or model shared by many files is loaded once


def _sources_for(job: dict[str, Any]) -> Sources:
    names = ("spec", "source_model", "target_model", "source_args", "target_args")
    args: list[Any] = [job.get(n) for n in names]
    key = (*args, Path(args[0]).stat().st_mtime_ns if args[0] and Path(args[0]).is_file() else None)
    if key not in _SOURCES:
        _SOURCES[key] = load_sources(*args)
    return _SOURCES[key]


def _convert_one(job: dict[str, Any]) -> FileResult:
    """Convert one file; every failure becomes a failed FileResult with the one-line message.

    Args:
        job: ``input``, ``output``, ``spec``, the model references, and :func:`migrate`'s options
            (plain data, so it can be sent to a worker process).

    Returns:
        The file's result.
    """
    start = time.perf_counter()
    src, dst = Path(job["input"]), Path(job["output"])
    result = FileResult(input=str(src), output=str(dst), status="failed", spec=job.get("spec"))
    try:
        sources = _sources_for(job)
        dst.parent.mkdir(parents=True, exist_ok=True)
        report = migrate(
            src,
            dst,
            sources=sources,
            approx=job.get("approx", False),
            force=True,
            trust_pickle=job.get("trust_pickle", False),
            allow_globals=job.get("allow_globals", ()),
            state_dict_key=job.get("state_dict_key"),
        )
        result.status = "converted"
        result.layers = len(report.layers)
        result.exact = all(layer.exact for layer in report.layers)
        result.max_rel_error = max((layer.max_rel_error for layer in report.layers), default=0.0)
    except Deconv2ShuffleError as e:
        result.error = str(e)
    except Exception as e:  # one broken file must not stop the batch
        result.error = f"unexpected {type(e).__name__}: {e}"
    result.seconds = time.perf_counter() - start
    return result


def run_batch(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    spec: str | Path | None = None,
    source_model: str | None = None,
    target_model: str | None = None,
    source_args: str | None = None,
    target_args: str | None = None,
    patterns: Iterable[str] = CHECKPOINT_PATTERNS,
    recursive: bool = False,
    jobs: int = 1,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    approx: bool = False,
    to: str = "same",
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    state_dict_key: str | None = None,
    report_path: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> BatchResult:
    """Convert every checkpoint in a folder into a mirror folder.

    Args:
        in_dir: the folder of checkpoints (never written to).
        out_dir: the folder for the results; must differ from ``in_dir``.
        spec, source_model, target_model, source_args, target_args: for every file; without
            them each file needs a sidecar spec (``gen.pth`` + ``gen.toml``).
        patterns: file name patterns to convert.
        recursive: descend into subfolders.
        jobs: worker processes.
        force: redo outputs that are already newer than their input and spec.
        shard: ``(i, n)``: convert only the files whose path hashes to ``i`` modulo ``n``.
        approx, trust_pickle, allow_globals, state_dict_key: as for :func:`migrate`.
        to: output format: ``"same"``, ``"safetensors"`` or ``"pth"``.
        report_path: also write the result as JSON here.
        on_start: called with the number of files before the work starts.
        on_file: called with each file's result as it finishes.

    Returns:
        The :class:`BatchResult`; a failed file is recorded there and does not stop the others.

    Raises:
        UsageError: bad ``to``, ``jobs``, ``shard``, or ``out_dir`` equal to ``in_dir``.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if to not in ("same", "safetensors", "pth"):
        raise UsageError(f"to={to!r}: expected 'same', 'safetensors' or 'pth'")
    if jobs < 1:
        raise UsageError(f"jobs={jobs!r}: must be >= 1")
    if out_dir.resolve() == in_dir.resolve():
        raise UsageError(
            f"{out_dir}: the output folder must differ from the input folder (inputs are never overwritten)"
        )
    chosen = _check_shard(shard)
    ReadOptions.make(state_dict_key, trust_pickle, allow_globals)  # validated once, before any file
    start = time.perf_counter()
    out_dir_r = out_dir.resolve()
    files = [
        p
        for p in _find_checkpoints(in_dir, patterns, recursive)
        if _in_shard(str(p.relative_to(in_dir)), chosen) and not p.resolve().is_relative_to(out_dir_r)
    ]
    result = BatchResult(str(in_dir), str(out_dir), None if chosen is None else f"{chosen[0]}/{chosen[1]}")
    common = {
        "source_model": source_model,
        "target_model": target_model,
        "source_args": source_args,
        "target_args": target_args,
        "approx": approx,
        "trust_pickle": trust_pickle,
        "allow_globals": list(allow_globals),
        "state_dict_key": state_dict_key,
    }
    todo = _plan_jobs(files, in_dir, out_dir, to, spec, force, common, result)
    if on_start:
        on_start(len(files))
    for r in result.files:
        if on_file:
            on_file(r)
    result.files.extend(_run_jobs(todo, jobs, on_file))
    order = {str(p): i for i, p in enumerate(files)}
    result.files.sort(key=lambda f: order.get(f.input, 0))
    result.seconds = time.perf_counter() - start
    if report_path is not None:
        write_json(report_path, result.to_dict())
    return result


def _plan_jobs(
    files: list[Path],
    in_dir: Path,
    out_dir: Path,
    to: str,
    spec: str | Path | None,
    force: bool,
    common: dict[str, Any],
    result: BatchResult,
) -> list[dict[str, Any]]:
    """A job per file to convert; files without a spec, and those up to date, go straight into ``result``."""
    shared = spec is not None or common["source_model"] is not None
    todo: list[dict[str, Any]] = []
    for src in files:
        dst = _output_path(src, in_dir, out_dir, to)
        spec_path = Path(spec) if spec is not None else (_sidecar(src) if _sidecar(src).exists() else None)
        if not shared and spec_path is None:
            error = f"{src}: no spec; add {_sidecar(src).name} beside it or pass spec='spec.toml' for every file"
            result.files.append(FileResult(str(src), str(dst), "failed", error=error))
        elif not force and _up_to_date(src, dst, spec_path):
            result.files.append(FileResult(str(src), str(dst), "skipped", spec=str(spec_path) if spec_path else None))
        else:
            spec_text = str(spec_path) if spec_path else None
            todo.append({"input": str(src), "output": str(dst), "spec": spec_text, **common})
    return todo


def _run_jobs(todo: list[dict[str, Any]], jobs: int, on_file: Callable[[FileResult], None] | None) -> list[FileResult]:
    done: list[FileResult] = []

    def finished(r: FileResult) -> None:
        done.append(r)
        if on_file:
            on_file(r)

    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            finished(_convert_one(job))
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_convert_one, job) for job in todo]):
                finished(fut.result())
    return done
