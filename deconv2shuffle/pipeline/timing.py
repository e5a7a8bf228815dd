"""Timing forward passes fairly on a shared machine, in torch and in ONNX Runtime.

Every variant is timed in the same rounds: a round runs one block of each variant, in an order
that rotates from round to round, so load that comes and goes on the machine touches every
variant alike. A :class:`Timing` keeps the median block and the spread (25th to 75th percentile);
comparisons name a winner only when the spreads do not overlap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

RUNTIMES = ("torch", "onnxruntime")
MIN_REPEATS = 10


@dataclass(frozen=True)
class Timing:
    """Milliseconds per forward: the median block and the spread (25th to 75th percentile)."""

    median_ms: float
    low_ms: float
    high_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """From per-forward times of several blocks, in seconds."""
        ms = sorted(s * 1e3 for s in seconds)
        if len(ms) < 2:
            return cls(ms[0], ms[0], ms[0])
        low, _, high = statistics.quantiles(ms, n=4, method="inclusive")
        return cls(statistics.median(ms), low, high)

    @property
    def spread(self) -> list[float]:
        """``[low_ms, high_ms]``."""
        return [self.low_ms, self.high_ms]


def compare(old: Timing, new: Timing) -> str:
    """``new`` against ``old``: ``"N.NNx faster"`` or ``"N.NNx slower"`` when the spreads do not overlap.

    Otherwise ``"no clear difference"``, whatever the medians say.
    """
    if new.high_ms < old.low_ms:
        return f"{old.median_ms / new.median_ms:.2f}x faster"
    if old.high_ms < new.low_ms:
        return f"{new.median_ms / old.median_ms:.2f}x slower"
    return "no clear difference"


def _block(fn: Callable[[], Any], number: int, sync: Callable[[], None]) -> float:
    """Seconds per call over one block of ``number`` calls."""
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number


def _calls_per_block(fn: Callable[[], Any], block_time: float, sync: Callable[[], None]) -> int:
    fn()  # warm-up (and algorithm selection on CUDA)
    number = 1
    while True:
        took = _block(fn, number, sync) * number
        if took >= block_time or number >= 1 << 20:
            return number
        wanted = number * block_time / took if took > 0 else number * 10
        number = max(number + 1, min(number * 10, int(wanted) + 1))


def time_rounds(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = MIN_REPEATS,
    min_time: float = 0.2,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Timing]:
    """Time each variant in ``repeats`` rounds of one block each.

    Args:
        fns: variant name -> a call that runs one forward.
        repeats: rounds (blocks per variant), at least :data:`MIN_REPEATS`.
        min_time: seconds of timing per variant, spread over the rounds.
        sync: waits for queued device work (``torch.cuda.synchronize`` on CUDA).

    Returns:
        Each variant's :class:`Timing`.

    Raises:
        UsageError: fewer than :data:`MIN_REPEATS` repeats.
    """
    if repeats < MIN_REPEATS:
        raise UsageError(f"repeats={repeats}: at least {MIN_REPEATS} are needed for a median and a spread")
    numbers = {name: _calls_per_block(fn, min_time / repeats, sync) for name, fn in fns.items()}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(_block(fns[name], numbers[name], sync))
    return {name: Timing.of(times[name]) for name in names}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads inside the block (``None``: as it is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def has_onnxruntime() -> bool:
    """Whether ``onnxruntime`` (and ``onnx``) can be imported here."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def pick_runtimes(runtime: str) -> list[str]:
    """``"torch"``, ``"onnxruntime"`` or ``"all"`` (torch, and ONNX Runtime when installed)."""
    if runtime == "all":
        return ["torch", "onnxruntime"] if has_onnxruntime() else ["torch"]
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime={runtime!r}: expected torch, onnxruntime or all")
    if runtime == "onnxruntime" and not has_onnxruntime():
        raise UsageError("runtime='onnxruntime' needs onnx and onnxruntime: pip install 'deconv2shuffle[onnx]'")
    return [runtime]


def _onnx_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    """The module as an ONNX model: TorchScript exporter (fast), else the ``torch.export`` one."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        try:
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(module, (x,), str(path), dynamo=False)
            return path.read_bytes()
        except Exception:
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
            assert program is not None
            return bytes(program.model_proto.SerializeToString())


def onnx_runner(module: nn.Module, x: torch.Tensor, device: str, threads: int | None = None) -> Callable[[], Any]:
    """A call that runs ``module`` exported to ONNX in an ONNX Runtime session on input ``x``.

    Args:
        module: the module to export, on the CPU.
        x: its input, on the CPU (the session is fed it as a NumPy array).
        device: ``"cpu"``, or ``"cuda"`` for the CUDA execution provider.
        threads: intra-op threads of the session (default: ONNX Runtime's choice).

    Returns:
        A call returning the session's first output (a NumPy array).

    Raises:
        UsageError: onnxruntime is missing, or has no provider for ``device``.
    """
    if not has_onnxruntime():
        raise UsageError("runtime='onnxruntime' needs onnx and onnxruntime: pip install 'deconv2shuffle[onnx]'")
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise UsageError(f"device={device!r}: this onnxruntime has no {provider}")
    with torch.no_grad():
        model = _onnx_bytes(module, x)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=[provider])
    feed = {session.get_inputs()[0].name: x.detach().numpy()}
    return lambda: session.run(None, feed)[0]
