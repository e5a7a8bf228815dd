"""batch: convert a folder of checkpoints in one process (or ``jobs`` worker processes).

Each file gets the shared spec/models, or its sidecar spec (``gen.pth`` + ``gen.toml``). ONNX
models (``.onnx``, or sniffed) are rewritten by :func:`~deconv2shuffle.onnx_graph.migrate_onnx`
into ``<name>.onnx``: the graph carries every hyperparameter, so the checkpoint options (spec,
models, renames...) do not apply to them. A bad
file is recorded and skipped; an output whose record says it was made from the same input, spec
and options is left alone (see :mod:`.batch_plan`), so a stopped batch resumes where it stopped.
``shard=(i, n)`` keeps the files whose path hashes to ``i`` modulo ``n``: a stable split for
array jobs, with no coordinator.

SIGINT (Ctrl-C) and SIGTERM (what ``timeout``, Slurm and Kubernetes send) stop a batch at once:
queued files are not started, workers are stopped and remove their temporary files, finished
outputs stay, and the result so far comes back with ``stopped_by`` set.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.bounds import check_input_shape, short
from ..core.keys import KeyRules
from ..core.verify import DEFAULT_TOLERANCE
from ..errors import UsageError
from . import batch_plan as plan
from .batch_plan import CHECKPOINT_PATTERNS
from .batch_work import FileResult, Stop, convert_one, run_parallel
from .files import ReadOptions, check_new_file, write_json

__all__ = ["CHECKPOINT_PATTERNS", "BatchResult", "FileResult", "run_batch"]


@dataclass
class BatchResult:
    """Every file of a batch, in input order, and the time it took.

    ``stopped_by`` names the signal (``"SIGINT"``, ``"SIGTERM"``) that stopped the batch; files
    it stopped or never started have status ``interrupted``.
    """

    input_dir: str
    output_dir: str
    shard: str | None
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    stopped_by: str | None = None
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many files have ``status`` (converted, checked, skipped, failed or interrupted)."""
        return sum(f.status == status for f in self.files)

    @property
    def ok(self) -> bool:
        """No file failed and nothing stopped the batch."""
        return self.count("failed") == 0 and self.stopped_by is None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the counts and ``ok``."""
        data = asdict(self)
        for status in ("converted", "checked", "skipped", "failed", "interrupted"):
            data[status] = self.count(status)
        data["ok"] = self.ok
        return data


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
    rename: Sequence[tuple[str, str]] = (),
    drop: Sequence[str] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    input_shape: Sequence[int] | None = None,
    example_inputs: str | None = None,
    accept_guesses: bool = False,
    allow_missing: bool = False,
    drop_unexpected: bool = False,
    hash_source: bool = True,
    dry_run: bool = False,
    report_path: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> BatchResult:
    """Convert every checkpoint (and ONNX model) in a folder into a mirror folder.

    Args:
        in_dir: the folder of checkpoints and ONNX models (never written to).
        out_dir: the folder for the results; must differ from ``in_dir``.
        spec, source_model, target_model, source_args, target_args: for every checkpoint;
            without them each checkpoint needs a sidecar spec (``gen.pth`` + ``gen.toml``).
            Models given here replace a sidecar's ``[models]`` table, whose files are then never
            imported. ONNX models need none of this (nor the other checkpoint options); when
            the folder holds only ONNX models, ``notes`` says which given options went unused.
        patterns: file name patterns to convert.
        recursive: descend into subfolders.
        jobs: worker processes.
        force: redo outputs that are up to date, and replace outputs this batch did not write.
        shard: ``(i, n)``: convert only the files whose path hashes to ``i`` modulo ``n``.
        approx, trust_pickle, allow_globals, state_dict_key, rename, drop, tolerance,
            input_shape, example_inputs, accept_guesses, allow_missing, drop_unexpected,
            hash_source: as for :func:`migrate`, for every checkpoint (a sidecar spec's
            ``[models] example_inputs`` serves its own file).
        to: output format: ``"same"``, ``"safetensors"`` or ``"pth"``.
        dry_run: convert and verify every file, write no checkpoint (status ``checked``).
        report_path: also write the result as JSON here (also when interrupted); checked like an
            output before any work: never a file the batch reads or writes, never a non-regular
            file, an existing file only with ``force``.
        on_start: called with the number of files before the work starts.
        on_file: called with each file's result as it finishes.

    Returns:
        The :class:`BatchResult`; a failed file is recorded there and does not stop the others
        (an ONNX model without the ``onnx`` extra installed is such a failure).
        SIGINT or SIGTERM stop the batch: the result so far comes back with ``stopped_by`` set.

    Raises:
        UsageError: bad ``to``, ``jobs``, ``shard``, pattern or shape, ``out_dir`` equal to
            ``in_dir``, or a report path that must not be written.
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
    chosen = plan.check_shard(shard)
    ReadOptions.make(state_dict_key, trust_pickle, allow_globals)  # validated once, before any file
    KeyRules.make(rename, drop)
    shape = None if not input_shape else check_input_shape(input_shape, f"input_shape={short(input_shape)}", UsageError)
    common = {
        "source_model": source_model,
        "target_model": target_model,
        "source_args": source_args,
        "target_args": target_args,
        "approx": approx,
        "trust_pickle": trust_pickle,
        "allow_globals": list(allow_globals),
        "state_dict_key": state_dict_key,
        "rename": [list(r) for r in rename],
        "drop": list(drop),
        "tolerance": tolerance,
        "input_shape": None if shape is None else list(shape),
        "example_inputs": _absolute_ref(example_inputs),
        "accept_guesses": accept_guesses,
        "allow_missing": allow_missing,
        "drop_unexpected": drop_unexpected,
        "hash_source": hash_source,
        "dry_run": dry_run,
    }
    start = time.perf_counter()
    result = BatchResult(str(in_dir), str(out_dir), None if chosen is None else f"{chosen[0]}/{chosen[1]}")
    result.dry_run = dry_run
    files: list[Path] = []
    report_checks: dict[str, Any] | None = None  # set once the report's place is checked
    with _stop_on_signals():
        try:
            files = _select(in_dir, out_dir, patterns, recursive, chosen)
            kinds = {src: plan.ONNX if plan.is_onnx(src) else "checkpoint" for src in files}
            result.notes += _unused_options(kinds, in_dir, {"spec": spec, "to": to, **common})
            todo = _plan_jobs(files, kinds, in_dir, out_dir, to, spec, force, common, result)
            if report_path is not None:
                report_checks = _check_report(report_path, files, spec, todo, result, common, force)
            if on_start:
                on_start(len(files))
            for r in result.files:
                if on_file:
                    on_file(r)
            _run_jobs(todo, jobs, result, on_file)
        except Stop as stop:
            result.stopped_by = signal.Signals(stop.signum).name
    order = {str(p): i for i, p in enumerate(files)}
    result.files.sort(key=lambda f: order.get(f.input, 0))
    result.seconds = time.perf_counter() - start
    if report_path is not None and report_checks is not None:
        try:
            write_json(report_path, result.to_dict(), **report_checks)
        except Exception:
            if result.stopped_by is None:
                raise  # interrupted, the summary still gets printed; the report error is secondary
    return result


def _select(
    in_dir: Path, out_dir: Path, patterns: Iterable[str], recursive: bool, shard: tuple[int, int] | None
) -> list[Path]:
    out_dir_r = out_dir.resolve()
    return [
        p
        for p in plan.find_checkpoints(in_dir, patterns, recursive)
        if plan.in_shard(str(p.relative_to(in_dir)), shard) and not p.resolve().is_relative_to(out_dir_r)
    ]


def _plan_jobs(
    files: list[Path],
    kinds: dict[Path, str],
    in_dir: Path,
    out_dir: Path,
    to: str,
    spec: str | Path | None,
    force: bool,
    common: dict[str, Any],
    result: BatchResult,
) -> list[dict[str, Any]]:
    """A job per file to convert; files that cannot be, and those up to date, go straight into ``result``."""
    shared = spec is not None or common["source_model"] is not None
    pairs = [(src, plan.output_path(src, in_dir, out_dir, to, kinds[src])) for src in files]
    specs = {src: Path(spec) if spec is not None else plan.sidecar(src) for src in files if kinds[src] != plan.ONNX}
    reads = [*files, *(s for p in files for s in plan.index_shards(p)), *specs.values()]
    refused = plan.collisions(pairs, reads)
    todo: list[dict[str, Any]] = []
    for src, dst in pairs:
        spec_path = specs[src] if src in specs and (spec is not None or specs[src].exists()) else None
        spec_text = str(spec_path) if spec_path else None
        job: dict[str, Any] = {"input": str(src), "output": str(dst), "kind": kinds[src], "spec": spec_text}
        job["sidecar"] = spec is None
        job.update(common, record=str(plan.record_path(dst, out_dir)))
        record = None if common["dry_run"] else plan.read_record(Path(job["record"]))
        if kinds[src] == plan.ONNX:
            job["data_files"] = plan.recorded_data_files(record, src)
        error = refused.get(src)
        if error is None and not shared and src in specs and spec_path is None:
            error = f"{src}: no spec; add {plan.sidecar(src).name} beside it or pass spec='spec.toml' for every file"
        if error is None and not force and not common["dry_run"] and record is None and dst.exists():
            error = f"{dst}: already exists and no record says this batch wrote it; pass force=True to replace it"
        if error is not None:
            result.files.append(FileResult(str(src), str(dst), "failed", spec=spec_text, error=error, kind=kinds[src]))
        elif not force and plan.up_to_date(job, record):
            result.files.append(FileResult(str(src), str(dst), "skipped", spec=spec_text, kind=kinds[src]))
        else:
            todo.append({**job, "force": force or record is not None, "claim": record is None})
    return todo


# checkpoint options that are set when they differ from these (ONNX models use none of them)
_CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "spec": None,
    "source_model": None,
    "target_model": None,
    "source_args": None,
    "target_args": None,
    "to": "same",
    "approx": False,
    "trust_pickle": False,
    "allow_globals": [],
    "state_dict_key": None,
    "rename": [],
    "drop": [],
    "tolerance": DEFAULT_TOLERANCE,
    "input_shape": None,
    "example_inputs": None,
    "accept_guesses": False,
    "allow_missing": False,
    "drop_unexpected": False,
}


def _absolute_ref(ref: str | None) -> str | None:
    """An example-inputs file or ``file.py:function`` with an absolute path, as worker processes see it."""
    if not ref:
        return None
    where, colon, name = ref.rpartition(":")
    if colon and where.endswith(".py"):
        return f"{Path(where).resolve()}:{name}"
    if not colon and Path(ref).exists():
        return str(Path(ref).resolve())
    return ref  # a package.module:function reference


def _unused_options(kinds: dict[Path, str], in_dir: Path, given: dict[str, Any]) -> list[str]:
    """A note when checkpoint options were given but every file is an ONNX model (none uses them)."""
    if not kinds or any(kind != plan.ONNX for kind in kinds.values()):
        return []
    unused = [f"{k}={_shown(given[k])}" for k, default in _CHECKPOINT_DEFAULTS.items() if given[k] != default]
    if not unused:
        return []
    return [
        f"{', '.join(unused)} {'applies' if len(unused) == 1 else 'apply'} to checkpoints only, and the "
        f"{len(kinds)} file(s) of {in_dir} are all ONNX models, which carry their own hyperparameters: "
        f"they were converted without {'it' if len(unused) == 1 else 'them'}"
    ]


def _shown(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = [tuple(v) for v in value]  # rename pairs, as the API takes them
    return repr(str(value) if isinstance(value, Path) else value)


def _read_files(result: BatchResult, spec: str | Path | None, common: dict[str, Any]) -> list[Path]:
    """Every file the batch reads (for the report check)."""
    out: list[Path] = []
    for f in result.files:
        src = Path(f.input)
        job = {"input": f.input, "spec": f.spec, **common}
        out += [*plan.job_inputs(job), plan.sidecar(src)]
    return [*out, *([Path(spec)] if spec else [])]


def _check_report(
    path: str | Path,
    files: list[Path],
    spec: str | Path | None,
    todo: list[dict[str, Any]],
    result: BatchResult,
    common: dict[str, Any],
    force: bool,
) -> dict[str, Any]:
    """The report must not replace a file the batch reads or writes (checked before any work).

    Returns:
        The checks to repeat when the report is written (:func:`publish_file`'s keywords).
    """
    planned = [FileResult(j["input"], j["output"], "planned", spec=j["spec"], kind=j["kind"]) for j in todo]
    everything = BatchResult(result.input_dir, result.output_dir, None, [*result.files, *planned])
    inputs = [*files, *_read_files(everything, spec, common)]
    outputs = [Path(f.output) for f in everything.files]
    outputs += [Path(f"{f.output}.data") for f in everything.files if f.kind == plan.ONNX]  # external data
    outputs += [plan.record_path(p, Path(result.output_dir)) for p in outputs]
    check_new_file(path, inputs=inputs, outputs=outputs, force=force)
    return {"inputs": inputs, "outputs": outputs, "force": force}


def _run_jobs(
    todo: list[dict[str, Any]], jobs: int, result: BatchResult, on_file: Callable[[FileResult], None] | None
) -> None:
    """Run the jobs, adding each result as it finishes; on a stop, the rest are marked interrupted."""
    done: set[str] = set()

    def finished(r: FileResult) -> None:
        result.files.append(r)
        done.add(r.input)
        if on_file:
            on_file(r)

    try:
        if jobs == 1 or len(todo) <= 1:
            for job in todo:
                finished(convert_one(job))
        else:
            run_parallel(todo, jobs, finished)
    except Stop:
        for job in todo:
            if job["input"] not in done:
                note = "stopped before it finished; partial output removed; the next run converts it"
                result.files.append(
                    FileResult(job["input"], job["output"], "interrupted", job["spec"], note=note, kind=job["kind"])
                )
        raise


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Within: the first SIGINT or SIGTERM raises :class:`Stop` in the main thread; later ones are
    ignored while the batch stops. Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)

    def stop(signum: int, _frame: object) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise Stop(signum)

    previous = {s: signal.signal(s, stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
