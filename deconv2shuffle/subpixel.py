"""The drop-in sub-pixel replacement for ``ConvTranspose{1,2,3}d``.

``SubPixelConvTranspose{1,2,3}d`` holds one ``conv`` (so its state_dict keys are
``<name>.conv.weight`` / ``<name>.conv.bias``) and a ``shuffle``; its forward pads what the
conv does not pad itself, convolves, shuffles and crops both ends to the exact output of the
ConvTranspose it replaces. It takes what ``nn.ConvTranspose*d.forward`` takes: batched or
unbatched input and ``output_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConversionError, GeometryError
from .geometry import Mode, SubPixelPlan, TargetGeometry, TransposedConv, fit, smallest
from .rewrite import Rewritten, fold_weight_norm, transposed_to_subpixel
from .shuffle import PixelShuffle, as_batch, crop, like_input, output_lengths, pad_input, pixel_shuffle

# Under torch.fx.symbolic_trace these steps stay calls, decided when the graph runs (see shuffle.py).
for _name in ("as_batch", "crop", "like_input", "output_lengths", "pad_input"):
    torch.fx.wrap(_name)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _forward_lists(plan: SubPixelPlan) -> dict[str, list[int]]:
    """The integers the forward needs, as lists (what TorchScript reads)."""
    target = plan.target
    sym = target.symmetric
    sizes = zip(target.kernel_size, target.pad_before, target.pad_after, strict=True)
    return {
        "stride": list(plan.factors),
        # output length without output padding is H*stride + shortest
        "shortest": [ax.source_length(0) - ax.output_padding for ax in plan.axes],
        "output_padding": list(plan.source.output_padding),
        "pad_before": [0] * plan.rank if sym else list(target.pad_before),
        "pad_after": [0] * plan.rank if sym else list(target.pad_after),
        "conv_extra": [pb + pa - K + 1 for K, pb, pa in sizes],
        "crop_start": list(plan.crop_start),
    }


def subpixel_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    plan: SubPixelPlan,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """Conv (plan's kernel and padding) + pixel shuffle + crop at both ends: the ConvTranspose of ``plan``.

    ``x`` may be batched or not; ``output_size`` picks a longer output as in
    ``ConvTranspose*d.forward`` (up to ``stride - 1`` more cells per axis). Tap placement does not
    depend on the output length, so every length torch accepts is exact.
    """
    v = _forward_lists(plan)
    rank = plan.rank
    xb = as_batch(x, rank)
    wanted = None if output_size is None else [int(n) for n in output_size]
    lengths = output_lengths(x, wanted, v["stride"], v["shortest"], v["output_padding"])
    xb = pad_input(xb, lengths, v["pad_before"], v["pad_after"], v["conv_extra"], v["crop_start"], v["stride"])
    padding = plan.target.pad_before if plan.target.symmetric else 0
    z = _CONV_FN[rank](xb, weight, bias, padding=padding, groups=plan.source.groups)
    return like_input(crop(pixel_shuffle(z, plan.factors), v["crop_start"], lengths), x, rank)


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
        *,
        geometry: Mode = "minimal",
        padding_end: int | Sequence[int] | None = None,
    ) -> None:
        """The arguments of ``nn.ConvTranspose*d``, then the sub-pixel form.

        ``geometry``: ``"minimal"`` (the fewest multiply-adds; crops at both ends), ``"tight"``
        or ``"symmetric"`` (``ConvNd(padding=P)`` + shuffle, crop at the end only). ``target``
        overrides it with a given geometry. ``padding_end`` crops the end of each axis
        differently from the start (ONNX ``pads`` begin != end; torch's layers cannot).
        """
        super().__init__()
        source = TransposedConv.make(
            kernel_size, stride, padding, output_padding, dilation, groups, rank=self.rank, padding_end=padding_end
        )
        plan = smallest(source, geometry) if target is None else fit(source, target)
        if plan.short_axes:
            raise GeometryError("; ".join(plan.reasons))
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
        self.set_plan(plan, in_channels, out_channels)

    def set_plan(self, plan: SubPixelPlan, in_channels: int, out_channels: int) -> None:
        """Record ``plan`` and the ConvTranspose attributes a drop-in offers (``stride``, ``padding``...)."""
        self.plan = plan
        self.in_channels, self.out_channels = in_channels, out_channels
        src = plan.source
        self.kernel_size, self.stride, self.dilation = src.kernel_size, src.stride, src.dilation
        self.padding, self.output_padding, self.groups = src.padding, src.output_padding, src.groups
        v = _forward_lists(plan)
        self._sp_rank = plan.rank
        self._sp_stride = v["stride"]
        self._sp_shortest = v["shortest"]
        self._sp_output_padding = v["output_padding"]
        self._sp_pad_before = v["pad_before"]
        self._sp_pad_after = v["pad_after"]
        self._sp_conv_extra = v["conv_extra"]
        self._sp_crop_start = v["crop_start"]

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        x = as_batch(input, self._sp_rank)
        lengths = output_lengths(input, output_size, self._sp_stride, self._sp_shortest, self._sp_output_padding)
        x = pad_input(
            x,
            lengths,
            self._sp_pad_before,
            self._sp_pad_after,
            self._sp_conv_extra,
            self._sp_crop_start,
            self._sp_stride,
        )
        y = self.shuffle(self.conv(x))
        return like_input(crop(y, self._sp_crop_start, lengths), input, self._sp_rank)

    def extra_repr(self) -> str:
        crops = f"crop={self.plan.crop_end}"
        if any(self.plan.crop_start):
            crops = f"crop_start={self.plan.crop_start}, crop_end={self.plan.crop_end}"
        return (
            f"{self.in_channels}, {self.out_channels}, replaces {self.plan.source.describe()}, "
            f"conv {self.plan.target.describe()}, {crops}"
        )

    @classmethod
    def from_transposed(
        cls,
        module: nn.Module,
        target: TargetGeometry | None = None,
        *,
        approx: bool = False,
        geometry: Mode = "minimal",
    ) -> _SubPixelConvTranspose:
        """Build the exact equivalent of an existing ConvTranspose module (weights converted).

        Weight-normed modules (either layout) are folded first. ``geometry`` picks the form
        (``"minimal"``, ``"tight"`` or ``"symmetric"``); ``target`` a given geometry instead, and
        an inexact one needs ``approx=True``. This builds the plain layer: a subclass's own
        ``forward`` is not kept here (``convert_model`` keeps it).
        """
        spec = transposed_spec(module)
        if spec.rank != cls.rank:
            raise ConversionError(
                f"{type(module).__name__} has {spec.rank} spatial axes, {cls.__name__} has {cls.rank}"
            )
        weight, bias = effective_weight(module)
        plan = smallest(spec, geometry) if target is None else fit(spec, target)
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
            device=weight.device,
            dtype=weight.dtype,
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
    if not isinstance(module, _TRANSPOSED) or isinstance(module, _SubPixelConvTranspose):
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


def effective_weight(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight the module's forward uses (weight norm applied), and its bias."""
    weight: Any = module.weight  # parametrized modules compute it; hook-based weight norm keeps it fresh
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ConversionError(
            f"{type(module).__name__} has not run yet, so its weights do not exist; run it once on an example input"
        )
    if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
        weight = fold_weight_norm(module.weight_g, module.weight_v)  # type: ignore[arg-type]
    bias: Any = module.bias
    return weight, bias
