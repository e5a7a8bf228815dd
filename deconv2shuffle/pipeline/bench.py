"""bench: time each ConvTranspose against its exact sub-pixel forms, in torch and ONNX Runtime.

Sub-pixel is not always faster: zero taps are real work, and backends tune transposed convs
differently. Every exact form is timed: ``symmetric`` (``ConvNd(padding=P)`` + shuffle),
``tight`` (smallest kernel without a phase shift) and ``minimal`` (phase shift, crops at both
ends: the fewest multiply-adds). Each runs in the same rounds as the ConvTranspose (at least ten);
a form is called faster or slower only when the spreads (25th to 75th percentile of the rounds)
do not overlap, and "no clear difference" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.planning import locate_layer, plan_layer
from ..core.sources import Sources, load_sources
from ..errors import SpecError, UsageError
from ..geometry import MODES, SubPixelPlan, TransposedConv, smallest
from ..nn import _TRANSPOSED, SUBPIXEL_CLASSES, transposed_spec
from .files import ReadOptions
from .timing import MIN_REPEATS, RUNTIMES, Timing, compare, onnx_runner, pick_runtimes, time_rounds, torch_threads

Layers = list[tuple[str, nn.Module, list[int]]]


@dataclass
class FormRow:
    """One exact sub-pixel form of a layer, timed against the ConvTranspose in the same rounds.

    ``ratio`` is its median over the ConvTranspose's; ``verdict`` compares the spreads;
    ``same_as`` names an earlier form with the same conv (timed once, figures shared).
    """

    form: str
    target: str
    macs_ratio: float
    median_ms: float
    spread_ms: list[float]
    ratio: float
    verdict: str
    max_rel_error: float
    same_as: str | None = None


@dataclass
class BenchRow:
    """One layer timed old vs every exact form, on one device and runtime."""

    layer: str
    geometry: str
    input_shape: list[int]
    device: str
    runtime: str
    repeats: int
    transposed_ms: float
    transposed_spread_ms: list[float]
    forms: list[FormRow] = field(default_factory=list)
    verdict: str = ""
    max_rel_error: float = 0.0

    def form(self, name: str) -> FormRow:
        """The row of form ``name`` (``"symmetric"``, ``"tight"`` or ``"minimal"``)."""
        return next(f for f in self.forms if f.form == name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def verdict(old: Timing, forms: Mapping[str, Timing]) -> str:
    """Which is faster here, only when the spreads say so.

    Args:
        old: the ConvTranspose's timing.
        forms: each sub-pixel form's timing, by name.

    Returns:
        ``"sub-pixel (FORM) N.NNx faster"`` for the fastest form, ``"transposed N.NNx faster"``,
        or ``"no clear difference"`` when that form's spread overlaps the ConvTranspose's.
    """
    kind = min(forms, key=lambda k: forms[k].median_ms)
    best = forms[kind]
    if best.high_ms < old.low_ms:
        return f"sub-pixel ({kind}) {old.median_ms / best.median_ms:.2f}x faster"
    if old.high_ms < best.low_ms:
        return f"transposed {best.median_ms / old.median_ms:.2f}x faster"
    return "no clear difference"


def _exact_forms(module: nn.Module) -> tuple[dict[str, nn.Module], dict[str, SubPixelPlan], dict[str, str]]:
    """Each distinct exact form of ``module`` (weights converted) with its plan; forms equal to an earlier one."""
    sub_cls = SUBPIXEL_CLASSES[len(module.kernel_size)]  # type: ignore[arg-type]
    source = transposed_spec(module)
    built: dict[str, nn.Module] = {}
    plans: dict[str, SubPixelPlan] = {}
    same_as: dict[str, str] = {}
    for form in MODES:
        plan = smallest(source, form)
        earlier = next((k for k, p in plans.items() if p.target == plan.target), None)
        if earlier is not None:
            same_as[form] = earlier
            continue
        plans[form] = plan
        built[form] = sub_cls.from_transposed(module, geometry=form).eval()
    return built, plans, same_as


def _eager(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: module(x)


def _runners(
    modules: Mapping[str, nn.Module], x: torch.Tensor, runtime: str, device: str, threads: int | None
) -> dict[str, Callable[[], Any]]:
    if runtime == "onnxruntime":
        return {name: onnx_runner(m, x, device, threads) for name, m in modules.items()}
    return {name: _eager(m, x) for name, m in modules.items()}


def _rel_error(got: Any, want: torch.Tensor) -> float:
    got_t = torch.as_tensor(got).to(want.device, want.dtype)
    if got_t.shape != want.shape:
        return float("inf")
    return float((got_t - want).abs().max() / want.abs().max().clamp_min(1e-30))


def bench_module(
    name: str,
    module: nn.Module,
    input_shape: Sequence[int],
    device: str,
    min_time: float = 0.2,
    *,
    runtime: str = "torch",
    repeats: int = MIN_REPEATS,
    threads: int | None = None,
) -> BenchRow:
    """Time one ConvTranspose module against every exact sub-pixel form.

    Args:
        name: the layer's name, for the row.
        module: the ConvTranspose module (moved to ``device``).
        input_shape: the input it gets.
        device: ``"cpu"``, ``"cuda"``...
        min_time: seconds of timing per variant, over all rounds.
        runtime: ``"torch"`` (eager) or ``"onnxruntime"`` (each variant exported to ONNX; the
            ConvTranspose as ``ConvTranspose``, the forms as Conv + DepthToSpace + Slice).
        repeats: rounds, at least ten; each variant runs one block per round.
        threads: CPU threads of torch and of the ONNX Runtime session (default: as they are).

    Returns:
        The row: medians, spreads, ratios and verdicts of every form, and each form's error.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    place = "cpu" if runtime == "onnxruntime" else device  # ONNX Runtime is fed NumPy arrays
    module = module.to(place).eval()
    dtype = next(module.parameters()).dtype
    forms, plans, same_as = _exact_forms(module)
    x = torch.randn(*input_shape, device=place, dtype=dtype)
    sync = torch.cuda.synchronize if place.startswith("cuda") else (lambda: None)
    with torch.no_grad(), torch_threads(threads):
        want = module(x)
        runners = _runners({"transposed": module, **forms}, x, runtime, device, threads)
        errors = {form: _rel_error(runners[form](), want) for form in forms}
        timings = time_rounds(runners, repeats, min_time, sync)
    old = timings.pop("transposed")
    rows = []
    for form in MODES:
        kind = same_as.get(form, form)
        plan, t = plans[kind], timings[kind]
        rows.append(
            FormRow(
                form=form,
                target=plan.target.describe(),
                macs_ratio=plan.macs_ratio,
                median_ms=t.median_ms,
                spread_ms=t.spread,
                ratio=t.median_ms / old.median_ms,
                verdict=compare(old, t),
                max_rel_error=errors[kind],
                same_as=same_as.get(form),
            )
        )
    return BenchRow(
        layer=name,
        geometry=transposed_spec(module).describe(),
        input_shape=list(input_shape),
        device=place,
        runtime=runtime,
        repeats=repeats,
        transposed_ms=old.median_ms,
        transposed_spread_ms=old.spread,
        forms=rows,
        verdict=verdict(old, timings),
        max_rel_error=max(errors.values()),
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
    runtime: str = "torch",
    repeats: int = MIN_REPEATS,
    threads: int | None = None,
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
        runtime: ``"torch"``, ``"onnxruntime"`` (needs the ``onnx`` extra) or ``"all"`` (torch,
            and ONNX Runtime when it is installed).
        repeats: timing rounds per variant, at least ten.
        threads: CPU threads of torch and ONNX Runtime while timing (default: as they are).

    Returns:
        One row per layer and runtime.

    Raises:
        UsageError: none of the three ways is given, ``kernel`` without ``stride``, an unknown
            runtime or one that is not installed, fewer than ten repeats.
    """
    dev = _pick_device(device)
    runtimes = pick_runtimes(runtime)
    if repeats < MIN_REPEATS:
        raise UsageError(f"repeats={repeats}: at least {MIN_REPEATS} are needed for a median and a spread")
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
    return [
        bench_module(name, module, shape, dev, min_time, runtime=rt, repeats=repeats, threads=threads)
        for name, module, shape in layers
        for rt in runtimes
    ]
