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
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .errors import Deconv2ShuffleError, SpecError

CHECKPOINT_PATTERNS = ("*.pth", "*.pt", "*.bin", "*.ckpt", "*.safetensors", "*.safetensors.index.json")
_SUFFIXES = (".safetensors.index.json", ".index.json", ".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class FileResult:
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
    input_dir: str
    output_dir: str
    shard: str | None
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            converted=self.count("converted"), skipped=self.count("skipped"), failed=self.count("failed"), ok=self.ok
        )
        return data


def stem(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def sidecar(path: Path) -> Path:
    return path.with_name(stem(path) + ".toml")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise SpecError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def in_shard(rel: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    digest = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return digest % shard[1] == shard[0]


def find_checkpoints(root: Path, patterns: Iterable[str], recursive: bool) -> list[Path]:
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


def output_path(src: Path, in_dir: Path, out_dir: Path, to: str) -> Path:
    rel = src.relative_to(in_dir)
    dst = out_dir / rel
    if to == "same":
        return dst
    ext = {"safetensors": ".safetensors", "pth": ".pth"}[to]
    return dst.with_name(stem(src) + ext)


def up_to_date(src: Path, dst: Path, spec: Path | None) -> bool:
    if not dst.exists():
        return False
    newest = src.stat().st_mtime
    if spec is not None and spec.exists():
        newest = max(newest, spec.stat().st_mtime)
    return dst.stat().st_mtime >= newest


_SOURCES: dict[tuple[Any, ...], Any] = {}  # per process: a spec or model shared by many files is loaded once


def _sources_for(job: dict[str, Any]) -> Any:
    from .migrate import load_sources

    names = ("spec", "source_model", "target_model", "source_args", "target_args")
    args: list[Any] = [job.get(n) for n in names]
    key = (*args, Path(args[0]).stat().st_mtime_ns if args[0] and Path(args[0]).is_file() else None)
    if key not in _SOURCES:
        _SOURCES[key] = load_sources(*args)
    return _SOURCES[key]


def convert_one(job: dict[str, Any]) -> FileResult:
    """Convert one file; every failure becomes a failed FileResult with the one-line message."""
    from .migrate import migrate

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
    shard: str | None = None,
    approx: bool = False,
    to: str = "same",
    trust_pickle: bool = False,
    state_dict_key: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> BatchResult:
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if to not in ("same", "safetensors", "pth"):
        raise SpecError(f"--to {to!r}: expected same, safetensors or pth")
    if jobs < 1:
        raise SpecError("--jobs must be >= 1")
    if out_dir.resolve() == in_dir.resolve():
        raise SpecError(
            f"{out_dir}: the output folder must differ from the input folder (inputs are never overwritten)"
        )
    chosen = parse_shard(shard)
    start = time.perf_counter()
    out_dir_r = out_dir.resolve()
    files = [
        p
        for p in find_checkpoints(in_dir, patterns, recursive)
        if in_shard(str(p.relative_to(in_dir)), chosen) and not p.resolve().is_relative_to(out_dir_r)
    ]
    result = BatchResult(str(in_dir), str(out_dir), shard)
    shared = spec is not None or source_model is not None
    todo: list[dict[str, Any]] = []
    for src in files:
        dst = output_path(src, in_dir, out_dir, to)
        spec_path = Path(spec) if spec is not None else (sidecar(src) if sidecar(src).exists() else None)
        if not shared and spec_path is None:
            r = FileResult(
                str(src), str(dst), "failed", error=f"{src}: no spec; add {sidecar(src).name} beside it or pass --spec"
            )
            result.files.append(r)
            continue
        if not force and up_to_date(src, dst, spec_path):
            result.files.append(FileResult(str(src), str(dst), "skipped", spec=str(spec_path) if spec_path else None))
            continue
        todo.append(
            {
                "input": str(src),
                "output": str(dst),
                "spec": str(spec_path) if spec_path else None,
                "source_model": source_model,
                "target_model": target_model,
                "source_args": source_args,
                "target_args": target_args,
                "approx": approx,
                "trust_pickle": trust_pickle,
                "state_dict_key": state_dict_key,
            }
        )
    if on_start:
        on_start(len(files))
    for r in result.files:
        if on_file:
            on_file(r)
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            r = convert_one(job)
            result.files.append(r)
            if on_file:
                on_file(r)
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(convert_one, job) for job in todo]
            for fut in as_completed(futures):
                r = fut.result()
                result.files.append(r)
                if on_file:
                    on_file(r)
    order = {str(p): i for i, p in enumerate(files)}
    result.files.sort(key=lambda f: order.get(f.input, 0))
    result.seconds = time.perf_counter() - start
    return result
