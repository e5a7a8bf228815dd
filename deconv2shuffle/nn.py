"""Modules: an N-d pixel shuffle and the drop-in sub-pixel replacement for ConvTranspose.

``SubPixelConvTranspose{1,2,3}d`` holds one ``conv`` (so its state_dict keys are
``<name>.conv.weight`` / ``<name>.conv.bias``), then shuffles and crops to the exact output of
the ConvTranspose it replaces.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConversionError, GeometryError
from .geometry import SubPixelPlan, TargetGeometry, TransposedConv, fit, smallest
from .rewrite import WEIGHT_NORM_LAYOUTS, Rewritten, transposed_to_subpixel

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def pixel_shuffle(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """``(N, C*prod(r), *L) -> (N, C, *(L*r))``, channel ``c*R + phase``, phase row-major over axes."""
    rank = len(factors)
    if rank == 2 and factors[0] == factors[1]:
        return F.pixel_shuffle(x, factors[0])
    n, c_r, *spatial = x.shape
    if len(spatial) != rank:
        raise ValueError(f"pixel_shuffle with {rank} factors needs {rank} spatial axes, got shape {tuple(x.shape)}")
    R = 1
    for r in factors:
        R *= r
    if c_r % R:
        raise ValueError(f"{c_r} channels are not divisible by prod{tuple(factors)} = {R}")
    x = x.reshape(n, c_r // R, *factors, *spatial)
    # (N, C, r1..rn, L1..Ln) -> (N, C, L1, r1, ..., Ln, rn)
    order = [0, 1] + [i for a in range(rank) for i in (2 + rank + a, 2 + a)]
    x = x.permute(order)
    return x.reshape(n, c_r // R, *(length * r for length, r in zip(spatial, factors, strict=True)))


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def subpixel_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    plan: SubPixelPlan,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Conv (plan's kernel and padding) + pixel shuffle + crop: the ConvTranspose of ``plan``.

    ``output_size`` works as in ``ConvTranspose*d.forward``: it picks a longer output (another
    output_padding). Tap placement does not depend on output_padding, so any length the conv
    yields cells for is exact; a longer one raises.
    """
    target = plan.target
    spatial = x.shape[2:]
    if target.symmetric:
        z = _CONV_FN[plan.rank](x, weight, bias, padding=target.pad_before, groups=plan.source.groups)
    else:
        pads: list[int] = []
        for before, after in zip(reversed(target.pad_before), reversed(target.pad_after), strict=True):
            pads += [before, after]
        z = _CONV_FN[plan.rank](F.pad(x, pads), weight, bias, groups=plan.source.groups)
    y = pixel_shuffle(z, plan.factors)
    lengths = plan.output_length(spatial)
    if output_size is not None:
        wanted = [int(n) for n in output_size][-plan.rank :]
        for axis, (n, length) in enumerate(zip(wanted, lengths, strict=True)):
            shortest = length - plan.source.output_padding[axis]  # torch's range: shortest .. + max(r, d) - 1
            longest = min(
                shortest + max(plan.source.stride[axis], plan.source.dilation[axis]) - 1,
                y.shape[2 + axis] - plan.crop_start[axis],
            )
            if not shortest <= n <= longest:
                raise ValueError(
                    f"output_size {tuple(wanted)}: axis {axis} length {n} is outside {shortest}..{longest}, "
                    "the lengths this converted layer can give exactly"
                )
        lengths = tuple(wanted)
    starts = plan.crop_start
    return y[(slice(None), slice(None), *(slice(c, c + n) for c, n in zip(starts, lengths, strict=True)))]


class PixelShuffle(nn.Module):
    """Pixel shuffle for 1, 2 or 3 spatial axes with one upscale factor per axis.

    For 2D with equal factors this calls ``nn.functional.pixel_shuffle`` (same result as
    ``nn.PixelShuffle``); otherwise it is a reshape + permute in the same channel order.
    """

    def __init__(self, factors: int | Sequence[int], rank: int | None = None) -> None:
        super().__init__()
        if isinstance(factors, int):
            factors = (factors,) * (rank or 2)
        self.factors = tuple(int(f) for f in factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.factors)

    def extra_repr(self) -> str:
        return f"factors={self.factors}"


class _SubPixelConvTranspose(nn.Module):
    rank = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        target: TargetGeometry | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        source = TransposedConv.make(kernel_size, stride, padding, output_padding, dilation, groups, rank=self.rank)
        plan = smallest(source) if target is None else fit(source, target)
        if plan.short_axes:
            raise GeometryError("; ".join(plan.reasons))
        self.plan = plan
        self.in_channels, self.out_channels = in_channels, out_channels
        conv_padding: tuple[int, ...] | int = plan.target.pad_before if plan.target.symmetric else 0
        self.conv = _CONV[self.rank](
            in_channels,
            out_channels * plan.phases,
            plan.target.kernel_size,  # type: ignore[arg-type]
            padding=conv_padding,  # type: ignore[arg-type]
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.shuffle = PixelShuffle(plan.factors)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        return subpixel_forward(x, self.conv.weight, self.conv.bias, self.plan, output_size)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, replaces {self.plan.source.describe()}, "
            f"conv {self.plan.target.describe()}, crop={self.plan.crop}"
        )

    @classmethod
    def from_transposed(
        cls,
        module: nn.Module,
        target: TargetGeometry | None = None,
        *,
        approx: bool = False,
    ) -> _SubPixelConvTranspose:
        """Build the exact equivalent of an existing ConvTranspose module (weights converted).

        Weight-normed modules (either layout) are folded first. ``target`` picks a geometry other
        than the smallest exact one; an inexact one needs ``approx=True``.
        """
        spec = transposed_spec(module)
        if spec.rank != cls.rank:
            raise ConversionError(
                f"{type(module).__name__} has {spec.rank} spatial axes, {cls.__name__} has {cls.rank}"
            )
        weight, bias = effective_weight(module)
        factory = {"device": weight.device, "dtype": weight.dtype}
        plan = smallest(spec) if target is None else fit(spec, target)
        new = cls(
            module.in_channels,  # type: ignore[arg-type]
            module.out_channels,  # type: ignore[arg-type]
            spec.kernel_size,
            spec.stride,
            spec.padding,
            spec.output_padding,
            spec.groups,
            bias is not None,
            spec.dilation,
            target=plan.target,
            **factory,  # type: ignore[arg-type]
        )
        rewritten = transposed_to_subpixel(
            weight.detach(), None if bias is None else bias.detach(), plan, approx=approx
        )
        new.load_rewritten(rewritten)
        new.train(module.training)
        return new

    def load_rewritten(self, rewritten: Rewritten) -> None:
        with torch.no_grad():
            self.conv.weight.copy_(rewritten.weight)
            if rewritten.bias is not None and self.conv.bias is not None:
                self.conv.bias.copy_(rewritten.bias)
        self.dropped_mass = rewritten.dropped_mass


class SubPixelConvTranspose1d(_SubPixelConvTranspose):
    """Drop-in exact replacement for ``nn.ConvTranspose1d``: Conv1d + shuffle + crop."""

    rank = 1


class SubPixelConvTranspose2d(_SubPixelConvTranspose):
    """Drop-in exact replacement for ``nn.ConvTranspose2d``: Conv2d + PixelShuffle + crop."""

    rank = 2


class SubPixelConvTranspose3d(_SubPixelConvTranspose):
    """Drop-in exact replacement for ``nn.ConvTranspose3d``: Conv3d + shuffle + crop."""

    rank = 3


SUBPIXEL_CLASSES: dict[int, type[_SubPixelConvTranspose]] = {
    1: SubPixelConvTranspose1d,
    2: SubPixelConvTranspose2d,
    3: SubPixelConvTranspose3d,
}


def transposed_spec(module: nn.Module) -> TransposedConv:
    """The geometry of a ConvTranspose module; other padding modes are refused."""
    if not isinstance(module, _TRANSPOSED):
        raise ConversionError(f"{type(module).__name__} is not a ConvTranspose1d/2d/3d")
    if module.padding_mode != "zeros":
        raise GeometryError(f"padding_mode={module.padding_mode!r} is not supported (only 'zeros' is)")
    return TransposedConv.make(
        module.kernel_size,
        module.stride,
        module.padding,  # type: ignore[arg-type]
        module.output_padding,
        module.dilation,
        module.groups,
        rank=len(module.kernel_size),
    )


def effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight the module's forward uses (weight norm applied), and its bias."""
    weight = module.weight  # parametrized modules compute it; hook-based weight norm keeps it fresh
    if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
        from .rewrite import fold_weight_norm

        weight = fold_weight_norm(module.weight_g, module.weight_v)  # type: ignore[arg-type]
    bias = module.bias
    return weight, bias  # type: ignore[return-value]


def clone_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with hook-based weight norm.

    That weight norm keeps a computed (non-leaf) ``weight`` attribute, which deepcopy refuses; a
    detached copy stands in for it (the hook recomputes it from weight_g/weight_v before use).
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and not isinstance(w, nn.Parameter) and w.grad_fn is not None:
            memo[id(w)] = w.detach().clone()
    return copy.deepcopy(model, memo)


def convert_model(
    model: nn.Module,
    *,
    inplace: bool = False,
    targets: dict[str, TargetGeometry] | None = None,
    approx: bool = False,
) -> nn.Module:
    """Return ``model`` with every ConvTranspose replaced by its exact sub-pixel equivalent.

    The input model is deep-copied unless ``inplace``. ``targets`` maps module names to a target
    geometry other than the smallest exact one.
    """
    if not inplace:
        model = clone_module(model)
    targets = targets or {}
    names = [name for name, m in model.named_modules() if isinstance(m, _TRANSPOSED)]
    for name in names:
        module = model.get_submodule(name)
        spec = transposed_spec(module)
        new = SUBPIXEL_CLASSES[spec.rank].from_transposed(module, targets.get(name), approx=approx)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not child:
            raise ConversionError("the model itself is a ConvTranspose; use SubPixelConvTranspose*d.from_transposed")
        setattr(parent, child, new)
    return model


def plan_for(module: nn.Module, target: TargetGeometry | None = None) -> SubPixelPlan:
    """The plan a module would be converted with."""
    spec = transposed_spec(module)
    return smallest(spec) if target is None else fit(spec, target)


__all__ = [
    "WEIGHT_NORM_LAYOUTS",
    "PixelShuffle",
    "SubPixelConvTranspose1d",
    "SubPixelConvTranspose2d",
    "SubPixelConvTranspose3d",
    "convert_model",
    "pixel_shuffle",
    "plan_for",
    "transposed_spec",
]
