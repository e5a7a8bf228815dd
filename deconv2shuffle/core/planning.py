"""Planning one layer: find its weights in a state_dict, choose the target geometry, check the target.

What ``migrate``, ``inspect``, ``explain``, ``bench`` and ``spec`` share about a single layer lives
here, below all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConversionError, InexactTargetError, SpecError
from ..geometry import (
    AxisPlan,
    Mode,
    SubPixelPlan,
    TargetGeometry,
    TransposedConv,
    explain_mismatch,
    fit,
    plan_axes,
    smallest,
)
from ..rewrite import LayerWeights, layer_weights
from ..transposed import _per_axis
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


def plan_layer(
    layer: LayerSpec, weight: torch.Tensor, conv: TargetConv | None = None, *, geometry: Mode = "minimal"
) -> SubPixelPlan:
    """The sub-pixel plan for one ConvTranspose layer.

    Args:
        layer: the layer's hyperparameters (stride, padding...; kernel and rank come from ``weight``).
        weight: its ConvTranspose weight, ``(C_in, C_out / groups, *kernel)``.
        conv: the target model's conv for this layer, when a target model is known: its geometry
            decides (see :func:`fit_conv`); otherwise the spec's ``target_kernel_size`` /
            ``target_padding``, else the exact form ``layer.geometry`` or ``geometry`` names.
        geometry: the form when neither a target conv nor the spec says: ``"minimal"`` (the fewest
            multiply-adds, cropping both ends), ``"tight"`` or ``"symmetric"`` (``ConvNd(padding=P)``
            + shuffle, cropping the end only).

    Returns:
        The plan (exact or not: see ``plan.exact``).

    Raises:
        ConversionError: a weight that is not a 1D/2D/3D ConvTranspose weight for these groups.
        GeometryError: invalid hyperparameters or geometry.
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
        kernel = _per_axis(layer.target_kernel_size, rank, "target_kernel_size")
        padding = _per_axis(layer.target_padding if layer.target_padding is not None else 0, rank, "target_padding")
        return fit_conv(geo, kernel, padding, padding)
    if conv is not None:
        if conv.geometry is not None:  # a converted layer: it pads and crops as its plan says
            return fit(geo, conv.geometry)
        return fit_conv(geo, conv.kernel_size, conv.padding, conv.padding)
    return smallest(geo, layer.geometry or geometry)  # type: ignore[arg-type]  # the spec checked the name


def _axis_exact(ax: AxisPlan, kernel: int, pad_before: int, pad_after: int) -> bool:
    inside = all(0 <= tap.offset + pad_before < kernel for tap in ax.taps)
    return inside and pad_before + pad_after - kernel + 1 >= ax.extra_cells


def fit_conv(
    source: TransposedConv, kernel: tuple[int, ...], pad_before: tuple[int, ...], pad_after: tuple[int, ...]
) -> SubPixelPlan:
    """Place ``source`` into a conv whose kernel and padding are given (a hand-written target).

    A conv alone does not say where its forward crops the shuffled output, so per axis the
    smallest start crop that makes the layer exact is taken: none for the usual symmetric form
    (``3x3 pad 1`` for k4 s2 p1), one cell for its minimal form (``2x2 pad 1``, which a forward
    crops as ``y[..., 1:-1, 1:-1]``; :func:`forward_crop` writes that slice). When no crop is exact,
    the plan with no start crop, and its reasons.
    """
    crops = []
    for ax, K, pb, pa in zip(plan_axes(source), kernel, pad_before, pad_after, strict=True):
        # beyond this start crop every tap offset is below -pad_before: nothing can fit
        last = ax.stride * (pb + 1) + ax.padding
        found = (
            c
            for c in range(last + 1)
            if _axis_exact(
                AxisPlan.build(
                    ax.kernel,
                    ax.stride,
                    ax.padding,
                    ax.output_padding,
                    ax.dilation,
                    padding_end=ax.pad_end,
                    crop_start=c,
                ),
                K,
                pb,
                pa,
            )
        )
        crops.append(next(found, 0))
    return fit(source, TargetGeometry(tuple(kernel), tuple(pad_before), tuple(pad_after), tuple(crops)))


def forward_crop(plan: SubPixelPlan) -> str:
    """The slice a hand-written forward applies to the shuffled output, ``"y[..., 1:-1, 1:-1]"``; ``""`` if none.

    Rows: the start crop (:attr:`SubPixelPlan.crop_start`) and the end crop
    (:attr:`SubPixelPlan.crop_end`) of each axis, for the layer's default output length
    (``output_size`` in the ConvTranspose call asks for up to ``stride - 1`` more cells).
    """
    if not any(plan.crop_start) and not any(plan.crop_end):
        return ""
    parts = [f"{start or ''}:{-end if end else ''}" for start, end in zip(plan.crop_start, plan.crop_end, strict=True)]
    return f"y[..., {', '.join(parts)}]"


def crop_note(layer: LayerSpec, plan: SubPixelPlan) -> str | None:
    """What a hand-written target's forward must do after the shuffle, when it must crop at all."""
    slc = forward_crop(plan)
    if not slc:
        return None
    r = plan.factors[0] if len(set(plan.factors)) == 1 else plan.factors
    return (
        f"{layer.source}: target conv {plan.target.describe()} holds the layer when its forward crops the shuffled "
        f"output: y = pixel_shuffle(conv(x), {r}); {slc}"
    )


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
