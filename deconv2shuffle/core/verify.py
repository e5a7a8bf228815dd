"""Verification: each converted layer against the original, and the whole model end to end.

One tolerance policy (:class:`Tolerance`) decides what passes: a converted layer's float64 output
against the ConvTranspose's, relative to the output's scale, within ``layer`` (default 1e-10);
the end-to-end check within ``max(1e-8, layer)``, widened to the stored dtype's rounding when a
weight-norm fold happened in that dtype. NaN never passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError, VerificationError
from ..geometry import SubPixelPlan
from ..nn import clone_module, convert_model, subpixel_forward
from .keys import strip_prefix
from .models import guess_input

DEFAULT_TOLERANCE = 1e-10
E2E_TOLERANCE = 1e-8
_TRANSPOSED_FN: dict[int, Callable[..., torch.Tensor]] = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}


@dataclass(frozen=True)
class Tolerance:
    """What counts as "the same output": the one place the tolerances are decided."""

    layer: float = DEFAULT_TOLERANCE

    def layer_ok(self, rel_err: float) -> bool:
        """Whether a converted layer's relative float64 error passes (NaN never does)."""
        return rel_err <= self.layer

    def end_to_end(self, folded_dtypes: Iterable[torch.dtype] = ()) -> float:
        """The end-to-end tolerance.

        Args:
            folded_dtypes: stored dtypes of weights whose weight norm was folded. The fold
                ``g * v / ||v||`` is computed in the stored dtype, exactly as the old model's own
                forward computes it; against a float64 run of the old model that rounding shows at
                the dtype's epsilon, so the tolerance widens to 16 of them.

        Returns:
            ``max(1e-8, layer tolerance, 16 * eps of each folded dtype)``.
        """
        tol = max(E2E_TOLERANCE, self.layer)
        for dtype in folded_dtypes:
            tol = max(tol, 16 * torch.finfo(dtype).eps)
        return tol


def verify_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    plan: SubPixelPlan,
    seed: int = 0,
) -> tuple[float, float]:
    """Run the old and the new layer in float64 on one random input and compare.

    Args:
        weight, bias: the ConvTranspose's tensors.
        new_weight, new_bias: the converted conv's tensors.
        plan: the plan they were converted with.
        seed: seed of the random input.

    Returns:
        ``(max abs error, max abs error / max abs output)``; ``inf`` for both when the output
        shapes differ.
    """
    gen = torch.Generator().manual_seed(seed)
    geo = plan.source
    lengths = [max(3, min(8, k)) for k in geo.kernel_size]
    x = torch.randn(1, weight.shape[0], *lengths, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        old = _TRANSPOSED_FN[plan.rank](
            x,
            weight.double(),
            None if bias is None else bias.double(),
            geo.stride,
            geo.padding,
            geo.output_padding,
            geo.groups,
            geo.dilation,
        )
        new = subpixel_forward(x, new_weight.double(), None if new_bias is None else new_bias.double(), plan)
    if old.shape != new.shape:
        return math.inf, math.inf
    abs_err = float((old - new).abs().max()) if old.numel() else 0.0
    scale = float(old.abs().max()) if old.numel() else 0.0
    return abs_err, (abs_err / scale if scale > 0 else abs_err)


def _strip(state: Mapping[str, torch.Tensor], prefix: str, model: nn.Module) -> dict[str, torch.Tensor]:
    if prefix and not (set(state) & set(model.state_dict())):
        return {strip_prefix(k, prefix): v for k, v in state.items()}
    return dict(state)


def _load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, error: type[Exception], what: str
) -> None:
    try:
        model.load_state_dict(_strip(state, prefix, model), strict=True)
    except RuntimeError as e:
        raise error(f"{what}: {' '.join(str(e).split())[:300]}") from None


def _flat(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else torch.cat([t.flatten() for t in output])


def end_to_end(
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    source_model: nn.Module | None,
    target_model: nn.Module | None,
    prefix: str,
    input_shape: tuple[int, ...] | None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Load both states into their models (strict) and compare outputs on one random input, in float64.

    Args:
        old_state: the original state_dict, for ``source_model``.
        new_state: the converted state_dict, for ``target_model`` (or, without one, for
            ``convert_model(source_model)``).
        source_model, target_model: the models (copied; the originals are not touched).
        prefix: a wrapper prefix the states' keys carry and the models' keys do not.
        input_shape: the model input; ``None`` guesses one from the first layer.
        seed: seed of the random input.

    Returns:
        ``None`` without a source model; ``{"skipped": reason}`` when no input shape is known; else
        ``input_shape``, ``max_abs_error``, ``max_rel_error`` and ``dtype``.

    Raises:
        SpecError: the old state does not load into the source model, or the models cannot run.
        VerificationError: the new state does not load into the target model, or the outputs'
            shapes differ.
    """
    if source_model is None:
        return None
    old_model = clone_module(source_model).double().eval()
    _load_strict(old_model, old_state, prefix, SpecError, "the old checkpoint does not load into the source model")
    new_model = (
        clone_module(target_model).double().eval()
        if target_model is not None
        else convert_model(old_model, geometry="symmetric")
    )
    _load_strict(
        new_model, new_state, prefix, VerificationError, "the new checkpoint does not load into the target model"
    )
    shape = input_shape or guess_input(old_model)
    if shape is None:
        return {"skipped": "no input shape; pass input_shape=(N, C, H, W) with the model's input shape"}
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        try:
            want, got = _flat(old_model(x)), _flat(new_model(x))
        except Exception as e:
            raise SpecError(
                f"running the models on input {shape} failed ({type(e).__name__}: {e}); "
                "pass input_shape=(N, C, H, W) with the model's input shape"
            ) from None
    if want.shape != got.shape:
        raise VerificationError(f"end-to-end: old model output {tuple(want.shape)} vs new {tuple(got.shape)}")
    abs_err = float((want - got).abs().max())
    scale = float(want.abs().max()) or 1.0
    return {"input_shape": list(shape), "max_abs_error": abs_err, "max_rel_error": abs_err / scale, "dtype": "float64"}
