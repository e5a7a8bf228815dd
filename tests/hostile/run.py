"""Feed hostile cases to ``deconv2shuffle migrate`` in one fresh process; print one JSON report per case.

    python tests/hostile/run.py MANIFEST.json

The manifest lists cases ``{"name", "input", "output", "args"}`` and ``warm_up`` command lines, run before
any case is measured so that first-use imports are not charged to a case. For each case the runner records the exit
code, the output lines, whether the output (or any temporary file) appeared, whether the input changed, and
the CPU time and the peak memory the case added (:func:`measure`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(work: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``work``; return its result, the CPU seconds it took and the peak memory (MiB) it added.

    The peak is the process's resident high-water mark, reset before the work (writing 5 to
    /proc/self/clear_refs) so that an earlier, higher peak cannot hide this one; ``ru_maxrss`` is no use here,
    as it keeps the peak of whatever process image came before (a forked test runner).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = _cpu()
    result = work()
    cpu = _cpu() - cpu
    hwm = _status_kb("VmHWM")
    if base is not None and hwm is not None:
        return result, cpu, (hwm - base) / 1024
    return result, cpu, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_peak) / 1024


def main() -> None:
    warnings.simplefilter("ignore")
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    runner = CliRunner()
    manifest = json.loads(Path(sys.argv[1]).read_text())
    for args in manifest["warm_up"]:
        runner.invoke(app, args)
    cases = manifest["cases"]
    for case in cases:
        src, out = Path(case["input"]), Path(case["output"])
        before = _digest(src) if src.is_file() else None
        listing = set(os.listdir(out.parent)) if out.parent.is_dir() else set()
        wall = time.monotonic()
        args = ["migrate", str(src), str(out), *case["args"]]
        result, cpu, peak = measure(lambda args=args: runner.invoke(app, args))
        report = {
            "name": case["name"],
            "exit_code": result.exit_code,
            "lines": result.output.strip().splitlines(),
            "cpu_s": cpu,
            "wall_s": time.monotonic() - wall,
            "peak_growth_mb": peak,
            "input_unchanged": _digest(src) == before if src.is_file() else True,
            "new_files": sorted(set(os.listdir(out.parent)) - listing) if out.parent.is_dir() else [],
            "exception": repr(result.exception) if result.exception and result.exit_code not in (0, 1, 2) else None,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
