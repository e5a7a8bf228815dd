"""bench: time each ConvTranspose against its exact sub-pixel forms on this device.

Sub-pixel is not always faster: zero taps are real work, and backends tune transposed convs
differently. Both exact geometries are timed: the symmetric one (``ConvNd(padding=P)``) and the
tight one (smallest kernel, asymmetric padding via ``F.pad``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from .checkpoint import load_checkpoint
from .errors import SpecError
from .geometry import TransposedConv, smallest
from .migrate import Sources, find_prefix, plan_layer
from .nn import _TRANSPOSED, SUBPIXEL_CLASSES
from .rewrite import layer_weights


@dataclass
class BenchRow:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time(fn: Any, x: torch.Tensor, min_time: float) -> float:
    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
    with torch.no_grad():
        fn(x)  # warm-up (and algorithm selection on CUDA)
        return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def bench_module(
    name: str, module: nn.Module, input_shape: Sequence[int], device: str, min_time: float = 0.2
) -> BenchRow:
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
    t_old = _time(module, x, min_time)
    t_sym = _time(sym, x, min_time)
    t_tight = _time(tight, x, min_time) if tight is not None else None
    best = min(t_sym, t_tight if t_tight is not None else float("inf"))
    kind = "tight" if t_tight is not None and t_tight < t_sym else "symmetric"
    verdict = (
        f"sub-pixel ({kind}) {t_old / best:.2f}x faster" if best < t_old else f"transposed {best / t_old:.2f}x faster"
    )
    return BenchRow(
        layer=name,
        geometry=sym.plan.source.describe(),
        input_shape=list(input_shape),
        device=device,
        transposed_ms=t_old,
        symmetric_target=sym.plan.target.describe(),
        symmetric_ms=t_sym,
        tight_target=tight.plan.target.describe() if tight is not None else None,
        tight_ms=t_tight,
        max_rel_error=err,
        verdict=verdict,
    )


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("--device cuda: no CUDA device here")
    return device


def layers_from_model(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, nn.Module, list[int]]]:
    """Each ConvTranspose with the input shape it sees when the model runs on ``input_shape``."""
    shapes: dict[str, list[int]] = {}
    hooks = []

    def record(name: str) -> Any:
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


def layers_from_checkpoint(
    path: str | Path, sources: Sources, size: int, batch: int, state_dict_key: str | None = None
) -> list[tuple[str, nn.Module, list[int]]]:
    """ConvTranspose modules rebuilt from a checkpoint's weights and the spec's hyperparameters."""
    state = load_checkpoint(path, state_dict_key=state_dict_key).state_dict
    out = []
    for layer in sources.layers():
        found = layer_weights(state, find_prefix(list(state), layer.source, str(path)) + layer.source)
        assert found is not None  # find_prefix found its weight
        weight, bias = found.weight, found.bias
        plan = plan_layer(layer, weight)
        out.append(
            (layer.source, build_transposed(plan.source, weight, bias), [batch, weight.shape[0], *[size] * plan.rank])
        )
    return out


def build_transposed(geo: TransposedConv, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
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
    geo: TransposedConv, channels: tuple[int, int], size: int, batch: int
) -> list[tuple[str, nn.Module, list[int]]]:
    torch.manual_seed(0)
    c_in, c_out = channels
    w = torch.randn(c_in, c_out // geo.groups, *geo.kernel_size) * 0.1
    return [(geo.describe(), build_transposed(geo, w, torch.randn(c_out)), [batch, c_in, *[size] * geo.rank])]
