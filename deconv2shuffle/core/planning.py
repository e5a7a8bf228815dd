"""Planning one layer: find its weights in a state_dict, choose the target geometry, check the target.

What ``migrate``, ``inspect``, ``explain``, ``bench`` and ``spec`` share about a single layer lives
here, below all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConversionError, InexactTargetError, SpecError
from ..geometry import SubPixelPlan, TargetGeometry, TransposedConv, explain_mismatch, fit, smallest
from ..rewrite import LayerWeights, layer_weights
from .keys import find_prefix
from .models import TargetConv
from .spec import LayerSpec


@dataclass(frozen=True)
class LocatedLayer:
    """A layer's tensors in a state_dict, and the prefix its keys carry."""

    module: str
    prefix: str
    weights: LayerWeights

    @property
    def base(self) -> str:
        """What the layer's keys start with (``"module.up."``)."""
        return f"{self.prefix}{self.module}."


def locate_layer(state: Mapping[str, torch.Tensor], module: str, source_name: str = "checkpoint") -> LocatedLayer:
    """Find ``module``'s weight (plain or weight norm) and bias in ``state``.

    Args:
        state: the state_dict.
        module: module path as a spec or model names it (a wrapper prefix is found).
        source_name: the file the state comes from, for messages.

    Returns:
        The prefix and the layer's tensors (a weight-norm pair already folded).

    Raises:
        SpecError: no weight for ``module``, or an ambiguous prefix.
    """
    prefix = find_prefix(list(state), module, source_name)
    found = layer_weights(state, prefix + module)
    if found is None:
        raise SpecError(f"{source_name}: layer {module!r} has no key {prefix}{module}.weight")
    return LocatedLayer(module, prefix, found)


def plan_layer(layer: LayerSpec, weight: torch.Tensor, conv: TargetConv | None = None) -> SubPixelPlan:
    """The sub-pixel plan for one ConvTranspose layer.

    Args:
        layer: the layer's hyperparameters (stride, padding...; kernel and rank come from ``weight``).
        weight: its ConvTranspose weight, ``(C_in, C_out / groups, *kernel)``.
        conv: the target model's conv for this layer, when a target model is known: its geometry
            decides; otherwise the spec's ``target_kernel_size`` / ``target_padding``, else the
            smallest exact geometry.

    Returns:
        The plan (exact or not: see ``plan.exact``).

    Raises:
        ConversionError: a weight that is not a 1D/2D/3D ConvTranspose weight for these groups.
        GeometryError: invalid hyperparameters.
    """
    rank = weight.dim() - 2
    if rank not in (1, 2, 3):
        raise ConversionError(
            f"layer {layer.source!r}: weight shape {tuple(weight.shape)} is not a ConvTranspose1d/2d/3d weight"
        )
    geo = TransposedConv.make(
        tuple(weight.shape[2:]),
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.dilation,
        layer.groups,
        rank=rank,
    )
    if weight.shape[0] % geo.groups:
        raise ConversionError(f"layer {layer.source!r}: C_in {weight.shape[0]} is not divisible by groups {geo.groups}")
    if layer.target_kernel_size is not None:
        padding = layer.target_padding if layer.target_padding is not None else 0
        return fit(geo, (layer.target_kernel_size, padding))
    if conv is not None:
        return fit(geo, TargetGeometry(conv.kernel_size, conv.padding, conv.padding))
    return smallest(geo)


def check_exact(layer: LayerSpec, plan: SubPixelPlan, approx: bool) -> None:
    """Refuse a plan that is not exact, unless ``approx`` allows truncating taps.

    Raises:
        InexactTargetError: the target cannot hold the layer (too few cells: never allowed; taps
            outside the kernel: allowed with ``approx``).
    """
    if plan.short_axes or (plan.outside and not approx):
        raise InexactTargetError(
            f"layer {layer.source!r} ({plan.source.describe()}): "
            f"target conv {plan.target.describe()} is not exact: {explain_mismatch(plan)}"
            + ("" if plan.short_axes else "; or pass approx=True to truncate")
        )


def target_weight_shape(weight: torch.Tensor, plan: SubPixelPlan) -> list[int]:
    """Shape of the converted conv weight: ``(C_out * R, C_in / groups, *K)``."""
    groups = plan.source.groups
    return [weight.shape[1] * groups * plan.phases, weight.shape[0] // groups, *plan.target.kernel_size]


def _conv_name(rank: int, c_in: int, c_out: int) -> str:
    return f"Conv{rank}d({c_in}, {c_out})"


def _channel_cause(conv: TargetConv, c_in: int, c_out: int, phases: int, groups: int) -> str:
    if conv.in_channels == c_in and conv.out_channels == c_out:
        return (
            f": the channels were divided by r^2 = {phases} (its shuffle yields {c_out // phases} channels where the "
            f"layer has {c_out}); multiply instead"
        )
    if conv.in_channels == c_in and conv.out_channels % phases == 0:
        return f": its shuffle yields {conv.out_channels // phases} channels where the layer has {c_out}"
    if conv.in_channels != c_in:
        return f": input channels differ ({conv.in_channels} vs {c_in}); this is not the layer's counterpart"
    if conv.groups != groups:
        return f": groups differ ({conv.groups} vs {groups})"
    return ""


def check_target_conv(
    layer: LayerSpec, weight: torch.Tensor, has_bias: bool, plan: SubPixelPlan, conv: TargetConv
) -> None:
    """Refuse a target conv that cannot hold the layer, naming the mistake in plain words.

    The two forum mistakes (channels divided by ``r^2`` instead of multiplied, a shuffle factor
    that is not the stride) and other mismatches (stride or dilation, groups, a missing bias).

    Raises:
        ConversionError: the target conv does not fit the layer.
    """
    rank, groups, phases = plan.rank, plan.source.groups, plan.phases
    c_in, c_out = weight.shape[0], weight.shape[1] * groups
    r = plan.factors[0] if len(set(plan.factors)) == 1 else plan.factors
    needs = f"ConvTranspose{rank}d({c_in}, {c_out}) needs {_conv_name(rank, c_in, c_out * phases)} + PixelShuffle({r})"
    if conv.factors is not None and tuple(conv.factors) != plan.factors:
        raise ConversionError(
            f"layer {layer.source!r}: target {conv.name!r} is followed by a shuffle of {conv.factors}, "
            f"but the layer's stride is {plan.factors}; {needs}"
        )
    if any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        raise ConversionError(f"layer {layer.source!r}: target {conv.name!r} must have stride 1 and dilation 1")
    if conv.in_channels != c_in or conv.out_channels != c_out * phases or conv.groups != groups:
        cause = _channel_cause(conv, c_in, c_out, phases, groups)
        raise ConversionError(
            f"layer {layer.source!r}: {needs}; target {conv.name!r} is "
            f"{_conv_name(rank, conv.in_channels, conv.out_channels)}{cause}"
        )
    if has_bias and not conv.bias:
        raise ConversionError(
            f"layer {layer.source!r} has a bias but target {conv.name!r} was built with bias=False; "
            "the bias cannot be dropped exactly: build the target conv with bias=True"
        )
