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

from ..compare import flatten_output
from ..errors import SpecError, VerificationError
from ..examples import ExampleInputs, random_inputs
from ..geometry import SubPixelPlan, TargetGeometry
from ..nn import clone_module, convert_model, subpixel_forward
from ..references import first_line
from ..rewrite import transposed_to_subpixel
from .keys import strip_prefix
from .models import guess_input, target_convs

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


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one dtype hold the same bit patterns (NaN payloads and signs included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return bool(torch.equal(a.contiguous().view(ints[a.element_size()]), b.contiguous().view(ints[b.element_size()])))


def _finite_parts(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    plan: SubPixelPlan,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None] | None:
    """Non-finite values (NaN, Inf) checked as copies, then zeroed on both sides for the numeric check.

    A rearrangement copies values, so a NaN or Inf in the old weight must reappear, bit for bit,
    exactly where the plan puts that tap; its output error would be NaN and says nothing.

    Returns:
        The four tensors with every non-finite value replaced by zero, or ``None`` when a
        non-finite value is not where (or not what) the copy puts it.
    """
    # which old element each new position copies (0: a zero the rewrite adds)
    source_of = torch.arange(1, weight.numel() + 1, dtype=torch.int64).reshape(weight.shape)
    copied = transposed_to_subpixel(source_of, None, plan, approx=True).weight
    if copied.shape != new_weight.shape:
        return None
    expect = weight.reshape(-1)[(copied - 1).clamp(min=0)]
    bad = ~_finite(new_weight)
    if not torch.equal(bad, ~_finite(expect) & (copied > 0)) or not _same_bits(new_weight[bad], expect[bad]):
        return None
    parts = [_zeroed(weight), None, _zeroed(new_weight), None]
    if bias is not None and new_bias is not None:
        expect_bias = bias.repeat_interleave(plan.phases)
        bad_bias = ~_finite(new_bias)
        if not torch.equal(bad_bias, ~_finite(expect_bias)) or not _same_bits(
            new_bias[bad_bias], expect_bias[bad_bias]
        ):
            return None
        parts[1], parts[3] = _zeroed(bias), _zeroed(new_bias)
    return parts[0], parts[1], parts[2], parts[3]  # type: ignore[return-value]


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t.to(torch.float64)) if t.is_floating_point() else torch.ones_like(t, dtype=torch.bool)


def _zeroed(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 with its non-finite values set to zero."""
    t64 = t.to(torch.float64)
    return torch.where(torch.isfinite(t64), t64, torch.zeros((), dtype=torch.float64))


def _all_finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(_finite(t).all()) for t in tensors)


def verify_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    plan: SubPixelPlan,
    seed: int = 0,
) -> tuple[float, float]:
    """Run the old and the new layer in float64 on one random input and compare.

    Non-finite weights (NaN, Inf, as a diverged run leaves them) cannot be compared through
    outputs; they are checked as bit-for-bit copies in the places the plan puts them, and the
    finite rest is compared as usual.

    Args:
        weight, bias: the ConvTranspose's tensors.
        new_weight, new_bias: the converted conv's tensors.
        plan: the plan they were converted with.
        seed: seed of the random input.

    Returns:
        ``(max abs error, max abs error / max abs output)``; ``inf`` for both when the output
        shapes differ or a non-finite value was not copied where it belongs.
    """
    if not _all_finite(weight, bias, new_weight, new_bias):
        parts = _finite_parts(weight, bias, new_weight, new_bias, plan)
        if parts is None:
            return math.inf, math.inf
        weight, bias, new_weight, new_bias = parts
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


def _listed(items: list[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: never cut inside a name."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Why ``state`` does not load into ``model`` strictly, key by key ("" when the keys and shapes agree)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} {tuple(state[k].shape)} where the model has {tuple(want[k].shape)}"
        for k in want
        if k in state and tuple(state[k].shape) != tuple(want[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} key(s) the model does not have: {_listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ: {_listed(shapes, 3)}")
    return "; ".join(parts)


def _load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, error: type[Exception], what: str
) -> None:
    state = _strip(state, prefix, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        why = _mismatch(model, state) or " ".join(str(e).split())
        raise error(f"{what}: {why}") from None


def _converted_without_shuffle(
    target: nn.Module, old_state: Mapping[str, torch.Tensor], new_state: Mapping[str, torch.Tensor]
) -> str:
    """A hint when a converted weight sits in a target conv that no pixel shuffle follows ("" otherwise)."""
    convs = target_convs(target)
    for name, conv in convs.items():
        key = f"{name}.weight"
        new = next((v for k, v in new_state.items() if k == key or k.endswith("." + key)), None)
        old = old_state.get(key)
        converted = new is not None and (old is None or tuple(old.shape) != tuple(new.shape))
        if converted and conv.factors is None:
            return (
                f"; target conv {name!r} ({conv.describe()}) holds a converted layer, but no PixelShuffle follows "
                f"it in the target model's forward, so its {conv.out_channels} channels are never rearranged into "
                "space: apply nn.PixelShuffle to its output"
            )
    return ""


def _compare(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float, int]:
    """Max abs error over the values finite in both, the output scale, and how many values are
    non-finite in one output only (equal NaN/Inf in both count as equal)."""
    finite = torch.isfinite(want) & torch.isfinite(got)
    same = (torch.isnan(want) & torch.isnan(got)) | (~torch.isfinite(want) & (want == got))
    diff = (want - got)[finite].abs()
    abs_err = float(diff.max()) if diff.numel() else 0.0
    scale = float(want[finite].abs().max()) if finite.any() else 0.0
    return abs_err, scale or 1.0, int((~finite & ~same).sum())


def _flat(output: Any) -> torch.Tensor:
    """Every tensor of a nested output (dict, list, tuple, dataclass, ``ModelOutput``...), as one vector."""
    if isinstance(output, torch.Tensor):
        return output
    tensors = [t.detach().flatten().double() for _, t in flatten_output(output) if not t.is_complex()]
    return torch.cat(tensors) if tensors else torch.zeros(0, dtype=torch.float64)


def _run_both(
    old_model: nn.Module, new_model: nn.Module, inputs: ExampleInputs, seed: int, hint: str, what: str, given: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' flattened outputs on ``inputs`` (float64, same seed); a failing run is explained."""
    try:
        want = _flat(inputs.run(old_model, seed=seed, dtype=torch.float64))
    except Exception as e:  # the user's forward may raise anything
        raise SpecError(
            f"the source model cannot run on {what} ({type(e).__name__}: {first_line(e)}); give the input it takes: "
            "input_shape=(N, C, H, W) for one tensor, or example_inputs=FILE for several (a .pt/.safetensors file "
            "of args.N/kwargs.NAME tensors, or file.py:make_inputs)"
        ) from None
    try:
        got = _flat(inputs.run(new_model, seed=seed, dtype=torch.float64))
    except Exception as e:
        advice = hint or (
            ""
            if given
            else "; that input was guessed from the source model: if the models need another, "
            "pass input_shape=(N, C, H, W) or example_inputs=FILE"
        )
        raise SpecError(
            f"the target model fails on input {inputs.describe()}, which the source model takes "
            f"({type(e).__name__}: {first_line(e)}){advice}"
        ) from None
    return want, got


def end_to_end(
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    source_model: nn.Module | None,
    target_model: nn.Module | None,
    prefix: str,
    input_shape: tuple[int, ...] | None,
    seed: int = 0,
    targets: Mapping[str, TargetGeometry] | None = None,
    inputs: ExampleInputs | None = None,
) -> dict[str, Any] | None:
    """Load both states into their models (strict) and compare outputs on one input, in float64.

    Args:
        old_state: the original state_dict, for ``source_model``.
        new_state: the converted state_dict, for ``target_model`` (or, without one, for
            ``convert_model(source_model)``).
        source_model, target_model: the models (copied; the originals are not touched).
        prefix: a wrapper prefix the states' keys carry and the models' keys do not.
        input_shape: the shape of one random input; ``None`` guesses one from the first layer.
        seed: seed of the random input, and of torch's generator while each model runs (a
            model that samples draws the same numbers in both runs).
        targets: each converted layer's target geometry (``Conversion.targets``): without a
            target model, ``convert_model(source_model, targets=targets)`` is built in the same form.
        inputs: real example inputs (positional and keyword: a timestep, a condition...), used
            instead of a random tensor; floating-point ones are cast to float64.

    Returns:
        ``None`` without a source model; ``{"skipped": reason}`` when no input is known; else
        ``inputs`` (what the models ran on), ``input_shape`` (for one random tensor),
        ``max_abs_error``, ``max_rel_error`` (over every tensor of the output, nested ones too,
        and the values finite in both outputs) and ``dtype``; plus ``non_finite_mismatch``, the
        count of values NaN/Inf in one output only, when there are any (the errors are then NaN
        unless the old weights hold NaN/Inf).

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
        else convert_model(old_model, targets=dict(targets or {}))
    )
    _load_strict(
        new_model, new_state, prefix, VerificationError, "the new checkpoint does not load into the target model"
    )
    given = inputs is not None or input_shape is not None
    shape = None
    if inputs is None:
        shape = input_shape or guess_input(old_model)
        if shape is None:
            return {"skipped": "no input known; pass input_shape=(N, C, H, W), or example_inputs=FILE for several"}
        inputs = random_inputs(shape, seed=seed)
        what = f"input_shape={tuple(shape)}" if input_shape is not None else f"the input {tuple(shape)}"
    else:
        what = f"example_inputs={inputs.source!r} ({inputs.describe()})"
    hint = "" if target_model is None else _converted_without_shuffle(target_model, old_state, new_state)
    want, got = _run_both(old_model, new_model, inputs, seed, hint, what, given)
    if want.shape != got.shape:
        raise VerificationError(
            f"end-to-end: old model output {tuple(want.shape)} vs new {tuple(got.shape)}{hint}; nothing was written"
        )
    abs_err, scale, odd = _compare(want, got)
    result = {
        "inputs": inputs.describe(),
        "inputs_source": inputs.source,
        **({"input_shape": list(shape)} if shape is not None else {}),
        "max_abs_error": abs_err,
        "max_rel_error": abs_err / scale,
        "dtype": "float64",
    }
    if odd:
        # NaN/Inf weights: a padded conv multiplies them by the padding's zeros (NaN), where the
        # transposed conv never touches them; elsewhere the outputs must agree. Without them, never passes.
        weights_non_finite = any(
            t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in old_state.values()
        )
        result["non_finite_mismatch"] = odd
        if not weights_non_finite:
            result["max_abs_error"] = result["max_rel_error"] = math.nan
    return result
