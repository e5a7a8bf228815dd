"""bench: time each ConvTranspose against its exact sub-pixel forms on this device.

Sub-pixel is not always faster: zero taps are real work, and backends tune transposed convs
differently. Both exact geometries are timed: the symmetric one (``ConvNd(padding=P)``) and the
tight one (smallest kernel, asymmetric padding via ``F.pad``). Each variant is timed in several
blocks; the verdict names a winner only when the spreads (25th to 75th percentile of the blocks)
do not overlap, and says "no clear difference" otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from ..core.planning import locate_layer, plan_layer
from ..core.sources import Sources, load_sources
from ..errors import SpecError, UsageError
from ..geometry import TransposedConv, smallest
from ..nn import _TRANSPOSED, SUBPIXEL_CLASSES
from .files import ReadOptions

Layers = list[tuple[str, nn.Module, list[int]]]
_MIN_BLOCKS = 5


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


@dataclass
class BenchRow:
    """One layer timed old vs new on one device."""

    layer: str
    geometry: str
    input_shape: list[int]
    device: str
    transposed_ms: float
    symmetric_target: str
    symmetric_ms: float
    tight_target: str | None
    tight_ms: float | None
    max_rel_error: float
    verdict: str
    transposed_spread_ms: list[float]
    symmetric_spread_ms: list[float]
    tight_spread_ms: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def verdict(old: Timing, symmetric: Timing, tight: Timing | None) -> str:
    """Which is faster here, only when the spreads say so.

    Args:
        old: the ConvTranspose's timing.
        symmetric: the symmetric sub-pixel form's.
        tight: the tight form's (``None`` when it is the symmetric one).

    Returns:
        ``"sub-pixel (KIND) N.NNx faster"``, ``"transposed N.NNx faster"`` or ``"no clear difference"``
        when the faster form's spread overlaps the ConvTranspose's.
    """
    kind, best = "symmetric", symmetric
    if tight is not None and tight.median_ms < symmetric.median_ms:
        kind, best = "tight", tight
    if best.high_ms < old.low_ms:
        return f"sub-pixel ({kind}) {old.median_ms / best.median_ms:.2f}x faster"
    if old.high_ms < best.low_ms:
        return f"transposed {best.median_ms / old.median_ms:.2f}x faster"
    return "no clear difference"


def _time(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, min_time: float) -> Timing:
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
    with torch.no_grad():
        fn(x)  # warm-up (and algorithm selection on CUDA)
        first = timer.blocked_autorange(min_run_time=min_time / _MIN_BLOCKS)
        times = list(first.times)
        start = time.perf_counter()
        while len(times) < _MIN_BLOCKS or (time.perf_counter() - start < min_time and len(times) < 1000):
            times.extend(timer.timeit(first.number_per_run).times)
    return Timing.of(times)


def bench_module(
    name: str, module: nn.Module, input_shape: Sequence[int], device: str, min_time: float = 0.2
) -> BenchRow:
    """Time one ConvTranspose module against both exact sub-pixel forms.

    Args:
        name: the layer's name, for the row.
        module: the ConvTranspose module.
        input_shape: the input it gets.
        device: ``"cpu"``, ``"cuda"``...
        min_time: seconds of timing per variant (at least five blocks each).

    Returns:
        The row, with medians, spreads, the sub-pixel form's error and an honest verdict.
    """
    module = module.to(device).eval()
    dtype = next(module.parameters()).dtype
    sub_cls = SUBPIXEL_CLASSES[len(module.kernel_size)]  # type: ignore[arg-type]
    sym = sub_cls.from_transposed(module, geometry="symmetric").eval()
    tight_plan = smallest(sym.plan.source, "tight")
    tight = sub_cls.from_transposed(module, tight_plan.target).eval() if tight_plan.target != sym.plan.target else None
    x = torch.randn(*input_shape, device=device, dtype=dtype)
    with torch.no_grad():
        want = module(x)
        err = float((sym(x) - want).abs().max() / want.abs().max().clamp_min(1e-30))
    t_old, t_sym = _time(module, x, min_time), _time(sym, x, min_time)
    t_tight = _time(tight, x, min_time) if tight is not None else None
    return BenchRow(
        layer=name,
        geometry=sym.plan.source.describe(),
        input_shape=list(input_shape),
        device=device,
        transposed_ms=t_old.median_ms,
        symmetric_target=sym.plan.target.describe(),
        symmetric_ms=t_sym.median_ms,
        tight_target=tight.plan.target.describe() if tight is not None else None,
        tight_ms=t_tight.median_ms if t_tight is not None else None,
        max_rel_error=err,
        verdict=verdict(t_old, t_sym, t_tight),
        transposed_spread_ms=[t_old.low_ms, t_old.high_ms],
        symmetric_spread_ms=[t_sym.low_ms, t_sym.high_ms],
        tight_spread_ms=[t_tight.low_ms, t_tight.high_ms] if t_tight is not None else None,
    )


def _pick_device(device: str) -> str:
    """``"auto"`` -> CUDA when present, else CPU; a CUDA request without CUDA is refused."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={device!r}: no CUDA device here")
    return device


def layers_from_model(model: nn.Module, input_shape: Sequence[int]) -> Layers:
    """Each ConvTranspose with the input shape it sees when the model runs on ``input_shape``."""
    shapes: dict[str, list[int]] = {}
    hooks = []

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(name, list(args[0].shape))  # returns None: the input is left as it is

        return hook

    for name, m in model.named_modules():
        if isinstance(m, _TRANSPOSED):
            hooks.append(m.register_forward_pre_hook(record(name)))
    try:
        with torch.no_grad():
            model(torch.randn(*input_shape, dtype=next(model.parameters()).dtype))
    except Exception as e:
        raise SpecError(
            f"running the source model on input {tuple(input_shape)} failed ({type(e).__name__}: {e})"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    return [(name, modules[name], shape) for name, shape in shapes.items()]


def layers_from_checkpoint(path: str | Path, sources: Sources, size: int, batch: int, reading: ReadOptions) -> Layers:
    """ConvTranspose modules rebuilt from a checkpoint's weights and the spec's hyperparameters."""
    state = reading.load(path).state_dict
    out = []
    for layer in sources.layers():
        found = locate_layer(state, layer.source, str(path)).weights
        plan = plan_layer(layer, found.weight)
        shape = [batch, found.weight.shape[0], *[size] * plan.rank]
        out.append((layer.source, build_transposed(plan.source, found.weight, found.bias), shape))
    return out


def build_transposed(geo: TransposedConv, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A ConvTranspose module of geometry ``geo`` holding copies of ``weight`` and ``bias``."""
    cls = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[geo.rank]
    module = cls(
        weight.shape[0],
        weight.shape[1] * geo.groups,
        geo.kernel_size,  # type: ignore[arg-type]
        geo.stride,  # type: ignore[arg-type]
        geo.padding,  # type: ignore[arg-type]
        geo.output_padding,  # type: ignore[arg-type]
        geo.groups,
        bias is not None,
        geo.dilation,  # type: ignore[arg-type]
        dtype=weight.dtype,
    )
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)  # type: ignore[union-attr]
    return module


def layer_from_geometry(
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int] = (0,),
    output_padding: Sequence[int] = (0,),
    channels: Sequence[int] = (64, 64),
    size: int = 32,
    batch: int = 1,
) -> Layers:
    """One ConvTranspose of the given geometry with random weights.

    Args:
        kernel: one value (2D, square) or one per axis (its length is the rank).
        stride, padding, output_padding: one value for every axis, or one per axis.
        channels: ``(C_in, C_out)``; one value means both.
        size: spatial size per axis of the input.
        batch: batch size.

    Returns:
        ``[(name, module, input shape)]``.
    """
    rank = len(kernel) if len(kernel) > 1 else 2
    geo = TransposedConv.make(
        tuple(kernel) if len(kernel) > 1 else kernel[0], tuple(stride), tuple(padding), tuple(output_padding), rank=rank
    )
    torch.manual_seed(0)
    c_in, c_out = channels[0], channels[-1]
    w = torch.randn(c_in, c_out // geo.groups, *geo.kernel_size) * 0.1
    return [(geo.describe(), build_transposed(geo, w, torch.randn(c_out)), [batch, c_in, *[size] * geo.rank])]


def run_bench(
    checkpoint: str | Path | None = None,
    *,
    spec: str | Path | None = None,
    source_model: str | None = None,
    source_args: str | None = None,
    input_shape: Sequence[int] | None = None,
    kernel: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    padding: Sequence[int] = (0,),
    output_padding: Sequence[int] = (0,),
    channels: Sequence[int] = (64, 64),
    size: int = 32,
    batch: int = 1,
    device: str = "auto",
    min_time: float = 0.2,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> list[BenchRow]:
    """Time layers old vs new: one geometry, a source model's layers, or a checkpoint's (with a spec).

    Args:
        checkpoint: a checkpoint whose layers to time (with ``spec`` or ``source_model``).
        spec, source_model, source_args: the layers' hyperparameters.
        input_shape: with ``source_model`` and no checkpoint: run the model on this input and time
            each ConvTranspose on the input it sees.
        kernel, stride, padding, output_padding, channels: time one layer of this geometry.
        size, batch: input size per axis and batch size for geometry and checkpoint layers.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        min_time: seconds of timing per variant.
        state_dict_key, trust_pickle, allow_globals: how to read ``checkpoint``.

    Returns:
        One row per layer.

    Raises:
        UsageError: none of the three ways is given, or ``kernel`` without ``stride``.
    """
    dev = _pick_device(device)
    if kernel is not None:
        if stride is None:
            raise UsageError("kernel= needs stride= too")
        layers = layer_from_geometry(kernel, stride, padding, output_padding, channels, size, batch)
    elif source_model is not None and input_shape is not None:
        model = load_sources(None, source_model, None, source_args, None).source_model
        assert model is not None  # a reference was given
        layers = layers_from_model(model, input_shape)
    elif checkpoint is not None:
        sources = load_sources(spec, source_model, None, source_args, None)
        reading = ReadOptions.make(state_dict_key, trust_pickle, allow_globals)
        layers = layers_from_checkpoint(checkpoint, sources, size, batch, reading)
    else:
        raise UsageError(
            "give a checkpoint with spec='spec.toml', source_model='file.py:Name' with input_shape=(N, C, H, W), "
            "or kernel= and stride="
        )
    return [bench_module(name, module, shape, dev, min_time) for name, module, shape in layers]
