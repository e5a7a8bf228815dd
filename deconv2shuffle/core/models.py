"""Model references (``pkg.module:Name`` or ``path/file.py:Name``) and what migrate reads from them.

From a source model: each ConvTranspose layer's hyperparameters. From a target model: its keys
and shapes, each Conv's geometry and the pixel shuffle that follows it (found with ``torch.fx``;
when tracing fails, the next shuffle module registered beside the conv).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from ..geometry import TargetGeometry
from ..nn import _TRANSPOSED, PixelShuffle, _SubPixelConvTranspose, transposed_spec
from ..references import import_attribute
from .spec import LayerSpec

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def load_model(ref: str, args: str | dict[str, Any] | None = None, *, what: str = "model") -> nn.Module:
    """Import ``ref`` and call it with ``args`` to get a module.

    Args:
        ref: ``"package.module:Name"`` or ``"path/to/file.py:Name"`` (a class or a factory).
        args: constructor keyword arguments, as a dict or as JSON object text.
        what: the parameter the reference came from (``"source_model"``), for messages.

    Returns:
        The module, in eval mode.

    Raises:
        SpecError: the reference cannot be imported or called, or gives no ``nn.Module``.
    """
    name_of = f"{what}={ref!r}"
    if ":" not in ref:
        raise SpecError(f"{name_of}: expected 'package.module:Name' or 'path/to/file.py:Name'")
    kwargs = model_args(args, what.replace("model", "args"))
    factory = import_attribute(ref, name_of, lambda where, name, e: _file_hint(where, name, what, e))
    name = ref.rpartition(":")[2]
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise SpecError(f"{name_of}: {name}(**{kwargs}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{name_of}: {name}(...) returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _file_hint(where: str, name: str, what: str, error: ModuleNotFoundError) -> str:
    """When a dotted reference names a file in the current folder that is not importable: say how to load it."""
    if error.name is None or not where.startswith(error.name):
        return ""
    candidate = Path(*where.split(".")).with_suffix(".py")
    if not candidate.is_file():
        return ""
    return f"; to load the file {candidate}, write {what}='{candidate.as_posix()}:{name}'"


def model_args(args: str | dict[str, Any] | None, what: str) -> dict[str, Any]:
    """Constructor arguments: a dict, JSON object text, or ``@file.json`` (a diffusers ``config.json``...).

    Args:
        args: the value given.
        what: the parameter's name, for messages.

    Returns:
        The keyword arguments.

    Raises:
        SpecError: not a JSON object, or the file cannot be read.
    """
    if args is None or args == "":
        return {}
    if isinstance(args, dict):
        return args
    text = args
    if args.startswith("@"):
        try:
            text = Path(args[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"{what}={args!r}: cannot read {args[1:]} ({getattr(e, 'strerror', None) or e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{what}={args!r}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise SpecError(f"{what}={args!r}: expected a JSON object of constructor kwargs")
    return value


def source_layers(model: nn.Module) -> list[LayerSpec]:
    """A LayerSpec for every ConvTranspose in ``model``, under every name it is reachable by (no target set)."""
    layers = []
    for name, module in model.named_modules(remove_duplicate=False):  # every alias of a shared module
        if isinstance(module, _TRANSPOSED):
            geo = transposed_spec(module)
            layers.append(
                LayerSpec(
                    source=name,
                    stride=geo.stride,
                    padding=geo.padding,
                    output_padding=geo.output_padding,
                    dilation=geo.dilation,
                    groups=geo.groups,
                )
            )
    return layers


@dataclass(frozen=True)
class TargetConv:
    """A stride-1 conv in the target model, and the shuffle that follows it (if any)."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    padding: tuple[int, ...]
    groups: int
    bias: bool
    factors: tuple[int, ...] | None
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    geometry: TargetGeometry | None = None  # a converted layer's conv: its padding and crops, as it applies them

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    def describe(self) -> str:
        conv = (
            f"Conv{self.rank}d({self.in_channels}, {self.out_channels}, kernel {'x'.join(map(str, self.kernel_size))}"
        )
        conv += f", padding {self.padding[0] if len(set(self.padding)) == 1 else self.padding})"
        if self.factors:
            f = self.factors[0] if len(set(self.factors)) == 1 else self.factors
            conv += f" + PixelShuffle({f})"
        return conv


def _shuffle_factors(module: nn.Module, rank: int) -> tuple[int, ...] | None:
    if isinstance(module, nn.PixelShuffle):
        return (module.upscale_factor,) * rank
    if isinstance(module, PixelShuffle):
        return module.factors
    return None


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_SubPixelConvTranspose, PixelShuffle)) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class ModelTrace:
    """What ``torch.fx`` sees a model do: the order its (de)conv modules run, and what feeds what.

    ``order`` maps each conv / ConvTranspose module to the position of its first call;
    ``ancestors`` maps it to the conv / ConvTranspose modules whose output reaches its input.
    """

    graph: torch.fx.Graph
    order: dict[str, int]
    ancestors: dict[str, frozenset[str]]

    def runs_before(self, first: str, then: str) -> bool:
        """Whether ``then`` reads (through any path) the output of ``first``: their order is the data's."""
        return first in self.ancestors.get(then, frozenset())


def trace_model(model: nn.Module) -> ModelTrace | None:
    """Trace ``model`` with ``torch.fx``; ``None`` when it cannot be traced (data-dependent code...).

    Args:
        model: the module.

    Returns:
        The :class:`ModelTrace` of its conv and ConvTranspose modules.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # the user's forward may do anything fx cannot follow
        return None
    modules = dict(model.named_modules())
    tracked = (*_CONVS, *_TRANSPOSED)
    order: dict[str, int] = {}
    ancestors: dict[str, frozenset[str]] = {}
    seen: dict[torch.fx.Node, frozenset[str]] = {}  # node -> tracked modules upstream of its output
    for node in graph.nodes:
        upstream = frozenset().union(*(seen[n] for n in node.all_input_nodes if n in seen))
        name = str(node.target) if node.op == "call_module" else ""
        if name and isinstance(modules.get(name), tracked):
            order.setdefault(name, len(order))
            ancestors.setdefault(name, upstream)
            upstream = upstream | {name}
        seen[node] = upstream
    return ModelTrace(graph, order, ancestors)


def _traced_shuffles(model: nn.Module, trace: ModelTrace) -> dict[str, tuple[int, ...]]:
    modules = dict(model.named_modules())
    found: dict[str, tuple[int, ...]] = {}
    for node in trace.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _CONVS):
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        user = users[0]
        rank = len(modules[node.target].kernel_size)
        factors = None
        if user.op == "call_module":
            factors = _shuffle_factors(modules[user.target], rank)
        elif user.op == "call_function" and user.target in (torch.nn.functional.pixel_shuffle, torch.pixel_shuffle):
            r = user.args[1] if len(user.args) > 1 else user.kwargs.get("upscale_factor")
            factors = (int(r),) * rank if isinstance(r, int) else None
        if factors:
            found[str(node.target)] = factors
    return found


def _registered_shuffles(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Fallback: a conv followed, in registration order under the same parent, by a shuffle."""
    found = {}
    names = list(model.named_modules())
    for (name, module), (next_name, nxt) in zip(names, names[1:], strict=False):
        if isinstance(module, _CONVS) and name.rpartition(".")[0] == next_name.rpartition(".")[0]:
            factors = _shuffle_factors(nxt, len(module.kernel_size))
            if factors:
                found[name] = factors
    return found


def target_convs(model: nn.Module, trace: ModelTrace | None = None) -> dict[str, TargetConv]:
    """Every stride-1 conv of the target model with the shuffle factor that follows it.

    Args:
        model: the target model.
        trace: its :func:`trace_model` when already traced (else it is traced here).

    Returns:
        Each conv by module path, in registration order.
    """
    shuffles: dict[str, tuple[int, ...]] = {}
    geometries: dict[str, TargetGeometry] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _SubPixelConvTranspose):
            conv_name = f"{name}.conv" if name else "conv"
            shuffles[conv_name] = module.plan.factors
            geometries[conv_name] = module.plan.target
    trace = trace or trace_model(model)
    shuffles.update(_traced_shuffles(model, trace) if trace is not None else _registered_shuffles(model))
    canonical = {id(m): n for n, m in model.named_modules()}  # fx and the trace know a shared module by one name
    out = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _CONVS):
            if name not in shuffles and canonical.get(id(module)) in shuffles:
                shuffles[name] = shuffles[canonical[id(module)]]
            padding = module.padding
            if isinstance(padding, str):  # 'same' / 'valid'
                padding = tuple(
                    (d * (k - 1)) // 2 if padding == "same" else 0
                    for k, d in zip(module.kernel_size, module.dilation, strict=True)
                )
            out[name] = TargetConv(
                name=name,
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                kernel_size=tuple(module.kernel_size),
                padding=tuple(padding),
                groups=module.groups,
                bias=module.bias is not None,
                factors=shuffles.get(name),
                stride=tuple(module.stride),
                dilation=tuple(module.dilation),
                geometry=geometries.get(name),
            )
    return out


def guess_input(model: nn.Module) -> tuple[int, ...] | None:
    """An input shape the model accepts, from its first layer (tried by running it)."""
    first = next((m for m in model.modules() if isinstance(m, (*_CONVS, *_TRANSPOSED, nn.Linear))), None)
    if first is None:
        return None
    candidates: list[tuple[int, ...]]
    if isinstance(first, nn.Linear):
        candidates = [(2, first.in_features)]
    else:
        rank = len(first.kernel_size)
        c = first.in_channels
        candidates = [(2, c, *([n] * rank)) for n in (16, 8, 1, 32, 4, 64)]
    for shape in candidates:
        try:
            with torch.no_grad():
                model(torch.zeros(shape, dtype=next(model.parameters()).dtype))
            return shape
        except Exception:
            continue
    return None
