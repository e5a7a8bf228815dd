"""The work of a batch: one file converted (with its record), and the worker processes.

A worker stops cleanly: SIGINT or SIGTERM during a file unwinds the conversion (its temporary
file is removed) and the worker exits; between files it exits at once. On Linux a worker also
gets SIGTERM when the batch process dies, even by SIGKILL, so none keeps running on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.sources import Sources, load_sources
from ..core.spec import load_spec
from ..errors import Deconv2ShuffleError
from . import batch_plan as plan
from .files import publish_file
from .single import NO_MODEL, migrate

PER_LAYER_ONLY = "only per-layer checks: no source model"

STOP_GRACE = 0.6  # seconds a stopped worker gets to remove its temporary file before it is killed


@dataclass
class FileResult:
    """What happened to one file of a batch."""

    input: str
    output: str
    status: str  # converted | checked (dry run) | skipped | failed | interrupted
    spec: str | None = None
    error: str | None = None
    layers: int = 0
    max_rel_error: float | None = None
    exact: bool | None = None
    seconds: float = 0.0
    note: str | None = None
    kind: str = "checkpoint"  # or "onnx"
    end_to_end_error: float | None = None  # the whole model's relative error; None: not run (see note)


class Stop(BaseException):  # noqa: N818 (not an error: a request to stop, like KeyboardInterrupt)
    """Raised in the main thread by SIGINT or SIGTERM while a batch runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SOURCES: dict[tuple[Any, ...], Sources] = {}  # per process: a spec or model shared by many files is loaded once


def _sources_for(job: dict[str, Any]) -> Sources:
    names = ("spec", "source_model", "target_model", "source_args", "target_args")
    args: list[Any] = [job.get(n) for n in names]
    explicit = bool(job.get("sidecar") and args[0] and (args[1] or args[2]))
    key = (*args, explicit, tuple(plan.identity(Path(args[0])) or ()) if args[0] else None)
    if key not in _SOURCES:
        if explicit:
            # models given for the whole batch replace a sidecar's [models] table, unimported
            sources = load_sources(None, *args[1:])
            sources.spec = load_spec(args[0])
            sources.spec.models = {k: v for k, v in sources.spec.models.items() if k == "input_shape"}
        else:
            sources = load_sources(*args)
        _SOURCES[key] = sources
    return _SOURCES[key]


def _write_record(job: dict[str, Any], state: dict[str, Any], output: list[int] | None) -> None:
    data = {"version": plan.RECORD_VERSION, "input": job["input"], **state, "output": output}
    inputs = plan.job_inputs(job)
    record = Path(job["record"])
    record.parent.mkdir(parents=True, exist_ok=True)
    publish_file(record, json.dumps(data, indent=1).encode(), inputs=inputs, force=True, what="record")


def convert_one(job: dict[str, Any]) -> FileResult:
    """Convert one file; every failure becomes a failed FileResult with the one-line message.

    Before the file is read its inputs' identity is recorded beside the output (a claim); once
    the output is written, the record gets the output's identity too. An input that changes
    meanwhile keeps the identity taken before, so the next run converts it again.

    Args:
        job: ``input``, ``output``, ``kind``, ``spec``, the model references, :func:`migrate`'s
            options, ``force`` and ``claim`` (plain data, so it can be sent to a worker process).

    Returns:
        The file's result.
    """
    start = time.perf_counter()
    kind = job.get("kind", "checkpoint")
    result = FileResult(input=job["input"], output=job["output"], status="failed", spec=job.get("spec"), kind=kind)
    claimed: list[bool] = []
    try:
        (_convert_onnx if kind == plan.ONNX else _convert_checkpoint)(job, result, claimed)
        result.status = "checked" if job["dry_run"] else "converted"
    except Deconv2ShuffleError as e:
        result.error = str(e)
        if any(claimed):
            plan.remove_record(Path(job["record"]))  # nothing of ours is there
    except Exception as e:  # one broken file must not stop the batch
        result.error = f"unexpected {type(e).__name__}: {e}"
    result.seconds = time.perf_counter() - start
    return result


def _claim(job: dict[str, Any], before: dict[str, Any], claimed: list[bool]) -> None:
    """Record the inputs' identity beside the output before anything is read (not in a dry run)."""
    if not job["dry_run"]:
        Path(job["output"]).parent.mkdir(parents=True, exist_ok=True)
        _write_record(job, before, None)
        claimed.append(job["claim"])


def _finish(job: dict[str, Any], state: dict[str, Any], result: FileResult) -> None:
    """Record the output's identity with the inputs' as they were read; note an input that changed since."""
    if not job["dry_run"]:
        _write_record(job, state, plan.identity(Path(job["output"])))
        if plan.current_state(job) != state:
            result.note = "an input changed while it was converted; the next run converts it again"


def _convert_checkpoint(job: dict[str, Any], result: FileResult, claimed: list[bool]) -> None:
    src, dst = Path(job["input"]), Path(job["output"])
    sources = _sources_for(job)
    before = plan.current_state(job)
    _claim(job, before, claimed)
    report = migrate(src, None if job["dry_run"] else dst, sources=sources, force=job["force"], **_options(job))
    _finish(job, before, result)
    result.layers = len(report.layers)
    result.exact = all(layer.exact for layer in report.layers)
    result.max_rel_error = max((layer.max_rel_error for layer in report.layers), default=0.0)
    _record_end_to_end(result, report.end_to_end)


def _add_note(result: FileResult, *notes: str) -> None:
    result.note = "; ".join(filter(None, [result.note, *notes])) or None


def _record_end_to_end(result: FileResult, e2e: dict[str, Any] | None) -> None:
    """The whole model's error, or (a note) why the whole model was not checked."""
    e2e = e2e or {}
    if "max_rel_error" in e2e:
        result.end_to_end_error = e2e["max_rel_error"]
    elif "skipped" in e2e:
        _add_note(
            result, PER_LAYER_ONLY if e2e["skipped"] == NO_MODEL else f"end-to-end check skipped: {e2e['skipped']}"
        )


def _convert_onnx(job: dict[str, Any], result: FileResult, claimed: list[bool]) -> None:
    """Rewrite an ONNX model; its record lists the external-data files as they were when read."""
    from ..onnx_graph import migrate_onnx

    src, dst = Path(job["input"]), Path(job["output"])
    before = plan.current_state(job)
    _claim(job, before, claimed)
    read: dict[str, list[int] | None] = {}

    def on_read(files: tuple[Path, ...]) -> None:
        read.update((str(f), plan.identity(f)) for f in files)

    report = migrate_onnx(src, None if job["dry_run"] else dst, force=job["force"], on_read=on_read)
    job = {**job, "data_files": list(read)}
    _finish(job, {**before, "inputs": {str(src): before["inputs"][str(src)], **read}}, result)
    converted = report.converted
    result.layers = len(converted)
    result.exact = True  # every rewritten node moved its weights bit for bit, checked in float64
    result.max_rel_error = max((n.max_rel_error or 0.0 for n in converted), default=0.0)
    if report.left:
        _add_note(result, f"{len(report.left)} ConvTranspose node(s) left as they are ({report.left[0].reason})")
    _record_end_to_end(result, report.end_to_end)


def _options(job: dict[str, Any]) -> dict[str, Any]:
    keys = ["approx", "trust_pickle", "allow_globals", "state_dict_key", "drop", "tolerance", "input_shape"]
    keys += ["allow_missing", "drop_unexpected", "hash_source", "example_inputs", "accept_guesses"]
    return {k: job[k] for k in keys} | {"rename": [tuple(r) for r in job["rename"]]}


_IN_JOB = {"now": False}


def _worker_signal(signum: int, _frame: object) -> None:
    if _IN_JOB["now"]:
        _IN_JOB["now"] = False  # a second signal exits at once
        raise Stop(signum)  # unwinds the conversion: its temporary file is removed
    os._exit(128 + signum)


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, _worker_signal)
    signal.signal(signal.SIGTERM, _worker_signal)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the batch dies
    if os.getppid() != parent:  # the batch died before the line above
        os._exit(128 + signal.SIGTERM)


def _worker_run(job: dict[str, Any]) -> FileResult:
    _IN_JOB["now"] = True
    try:
        return convert_one(job)
    except Stop as stop:
        os._exit(128 + stop.signum)
    finally:
        _IN_JOB["now"] = False


def run_parallel(todo: list[dict[str, Any]], jobs: int, finished: Callable[[FileResult], None]) -> None:
    """Run ``todo`` in ``jobs`` worker processes, calling ``finished`` with each result.

    Raises:
        Stop: from the signal handler; queued jobs are cancelled and the workers stopped first.
    """
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    try:
        futures = {pool.submit(_worker_run, job): job for job in todo}
        for fut in as_completed(futures):
            try:
                finished(fut.result())
            except BrokenProcessPool as e:
                job = futures[fut]
                error = f"{job['input']}: the worker process died ({e}); nothing was written"
                finished(FileResult(job["input"], job["output"], "failed", job["spec"], error=error, kind=job["kind"]))
        pool.shutdown()
    except BaseException:
        _stop_pool(pool, [p for p in multiprocessing.active_children() if p not in before])
        raise


def _stop_pool(pool: ProcessPoolExecutor, workers: list[Any]) -> None:
    """Cancel queued jobs and stop the workers: SIGTERM, a short grace to clean up, then SIGKILL."""
    pool.shutdown(wait=False, cancel_futures=True)
    for p in workers:
        with contextlib.suppress(OSError, ValueError):
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in workers:
        if p.is_alive():
            with contextlib.suppress(OSError, ValueError):
                p.kill()
            p.join(1.0)
