"""Weight rearrangement between transposed convolutions and conv + pixel shuffle.

Pure functions: tensors in, new tensors out. The inputs are never mutated, dtypes are kept,
and every converted value is a bit-for-bit copy of a source value (or a zero): the copies run
on an integer view of the same width, so no float arithmetic ever touches a weight.

Layouts. ``ConvTranspose`` weight: ``(C_in, C_out/groups, k...)``. Conv weight:
``(C_out*R, C_in/groups, K...)`` with output channel ``o*R + phase`` and ``phase`` row-major
over the axes: the order ``nn.PixelShuffle`` (and ONNX DepthToSpace in CRD mode) reads.
Groups carry over unchanged because the new channels stay o-major.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import ConversionError
from .geometry import SubPixelPlan

_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Rewritten:
    """A rewritten weight (and bias), plus the relative L2 mass of the taps that did not fit."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    dropped_mass: float = 0.0
    dropped_taps: int = 0


def _bits(t: torch.Tensor) -> torch.Tensor:
    width = t.element_size()
    if width not in _INT_OF_WIDTH or t.is_complex():
        raise ConversionError(f"dtype {t.dtype} is not supported for weights")
    return t.contiguous().view(_INT_OF_WIDTH[width])


def _index_map(plan: SubPixelPlan) -> tuple[list[int], list[int], list[int]]:
    """Flat source taps, their flat target positions ``phase*prod(K) + j``, and dropped source taps."""
    k = plan.source.kernel_size
    K = plan.target.kernel_size
    r = plan.factors
    per_axis = [
        [(tap.phase, tap.source, tap.offset + pb) for tap in ax.taps]
        for ax, pb in zip(plan.axes, plan.target.pad_before, strict=True)
    ]
    src, dst, dropped = [], [], []
    nK = math.prod(K)
    for combo in itertools.product(*per_axis):
        t_flat = 0
        phase = 0
        j_flat = 0
        inside = True
        for (s, t, j), ki, ri, Ki in zip(combo, k, r, K, strict=True):
            t_flat = t_flat * ki + t
            phase = phase * ri + s
            j_flat = j_flat * Ki + j
            inside = inside and 0 <= j < Ki
        if inside:
            src.append(t_flat)
            dst.append(phase * nK + j_flat)
        else:
            dropped.append(t_flat)
    return src, dst, dropped


def _check_transposed(weight: torch.Tensor, bias: torch.Tensor | None, plan: SubPixelPlan) -> tuple[int, int, int]:
    geo = plan.source
    want_dims = 2 + geo.rank
    if weight.dim() != want_dims or tuple(weight.shape[2:]) != geo.kernel_size:
        raise ConversionError(
            f"weight shape {tuple(weight.shape)} does not match a ConvTranspose{geo.rank}d with kernel "
            f"{geo.kernel_size} (expected (C_in, C_out/groups, {', '.join(map(str, geo.kernel_size))}))"
        )
    c_in, c_out_g = weight.shape[0], weight.shape[1]
    if c_in % geo.groups:
        raise ConversionError(f"C_in {c_in} is not divisible by groups {geo.groups}")
    c_out = c_out_g * geo.groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ConversionError(f"bias shape {tuple(bias.shape)} does not match C_out {c_out}")
    return c_in, c_out_g, c_out


def transposed_to_subpixel(
    weight: torch.Tensor, bias: torch.Tensor | None, plan: SubPixelPlan, *, approx: bool = False
) -> Rewritten:
    """Rewrite a ConvTranspose weight (and bias) into the conv of ``plan``.

    An inexact plan raises unless ``approx`` is true; then the taps that fit are kept and the
    relative L2 mass of the dropped ones is reported. A target conv that yields too few cells
    cannot be approximated by dropping taps and always raises.
    """
    c_in, c_out_g, c_out = _check_transposed(weight, bias, plan)
    if plan.short_axes:
        raise ConversionError("; ".join(r for r in plan.reasons if "yields" in r))
    if plan.outside and not approx:
        raise ConversionError("; ".join(plan.reasons))
    G = plan.source.groups
    R = plan.phases
    k, K = plan.source.kernel_size, plan.target.kernel_size
    nk, nK = math.prod(k), math.prod(K)
    src_idx, dst_idx, dropped = _index_map(plan)

    layout = (G, c_out_g, R, c_in // G, nK)  # the Conv's weight: (C_out*R, C_in/G, K...) with channel o*R + phase
    bits = _bits(weight)
    out = bits.new_empty(layout)
    # One gather builds that layout straight from the source seen as (G, C_out/G, R, C_in/G, taps),
    # its phase axis a broadcast: out[..., phase, :, j] takes source tap table[phase, j], so every
    # value is read and written once. Positions no source tap reaches (table -1) are zeroed after.
    table = torch.full((R, nK), -1, dtype=torch.long)
    table.view(-1)[torch.tensor(dst_idx, dtype=torch.long)] = torch.tensor(src_idx, dtype=torch.long)
    source = bits.reshape(G, c_in // G, 1, c_out_g, nk).permute(0, 3, 2, 1, 4).expand(*layout[:-1], nk)
    torch.gather(source, 4, table.clamp(min=0).view(1, 1, R, 1, nK).expand(layout), out=out)
    for phase, j in (table < 0).nonzero().tolist():
        out[:, :, phase, :, j] = 0
    new_weight = out.reshape(c_out * R, c_in // G, *K).view(weight.dtype)

    mass = 0.0
    if dropped:
        w64 = weight.detach().to(torch.float64).reshape(c_in, c_out_g, nk)
        total = float(w64.square().sum())
        lost = float(w64[..., torch.tensor(dropped)].square().sum())
        mass = math.sqrt(lost / total) if total > 0 else 0.0
    new_bias = None if bias is None else _bits(bias).repeat_interleave(R).view(bias.dtype)
    return Rewritten(new_weight, new_bias, mass, len(dropped))


def subpixel_to_transposed_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, plan: SubPixelPlan, *, allow_loss: bool = False
) -> Rewritten:
    """The reverse of :func:`transposed_to_subpixel` for the same plan.

    Target taps that no source tap maps to must be zero and the ``R`` bias copies of each
    channel equal; otherwise the conv holds something no ConvTranspose of the plan's geometry can
    express, and this raises unless ``allow_loss`` (then the mass left behind is reported).
    Use :func:`deconv2shuffle.geometry.subpixel_to_transposed` to get a plan whose kernel covers
    every tap of an arbitrary trained conv.
    """
    if not plan.exact:
        raise ConversionError("; ".join(plan.reasons))
    G, R = plan.source.groups, plan.phases
    k, K = plan.source.kernel_size, plan.target.kernel_size
    nk, nK = math.prod(k), math.prod(K)
    if weight.dim() != 2 + plan.rank or tuple(weight.shape[2:]) != K or weight.shape[0] % (R * G):
        raise ConversionError(
            f"conv weight shape {tuple(weight.shape)} does not match kernel {K} with {R} phases and {G} groups"
        )
    c_out = weight.shape[0] // R
    c_out_g, c_in_g = c_out // G, weight.shape[1]
    src_idx, dst_idx, _ = _index_map(plan)

    bits = _bits(weight).reshape(G, c_out_g, R, c_in_g, *K).movedim(2, 3).reshape(G, c_out_g, c_in_g, R * nK)
    back = bits.new_zeros(G, c_out_g, c_in_g, nk)
    back[..., torch.tensor(src_idx)] = bits[..., torch.tensor(dst_idx)]
    new_weight = back.transpose(1, 2).reshape(G * c_in_g, c_out_g, *k).view(weight.dtype)

    mass = 0.0
    unmapped = sorted(set(range(R * nK)) - set(dst_idx))
    if unmapped:
        w64 = weight.detach().to(torch.float64).reshape(G, c_out_g, R, c_in_g, nK).movedim(2, 3)
        w64 = w64.reshape(G, c_out_g, c_in_g, R * nK)
        lost = float(w64[..., torch.tensor(unmapped)].square().sum())
        total = float(w64.square().sum())
        mass = math.sqrt(lost / total) if total > 0 else 0.0
        if lost > 0 and not allow_loss:
            raise ConversionError(
                f"{len(unmapped)} conv tap position(s) hold non-zero weights (relative mass {mass:.3g}) that a "
                f"ConvTranspose with kernel {k} cannot express; use geometry.subpixel_to_transposed for a larger kernel"
            )
    new_bias = None
    if bias is not None:
        per_phase = _bits(bias).reshape(c_out, R)
        if not bool((per_phase == per_phase[:, :1]).all()) and not allow_loss:
            raise ConversionError(
                "the R bias copies of some output channel differ; a ConvTranspose has one bias per channel"
            )
        new_bias = per_phase[:, 0].contiguous().view(bias.dtype)
    return Rewritten(new_weight, new_bias, mass, len(unmapped))


def weight_norm_dim(g: torch.Tensor, v: torch.Tensor) -> int:
    """The ``dim`` a weight-norm magnitude ``g`` was taken over (``-1``: the whole tensor)."""
    if g.dim() == 0 or (g.numel() == 1 and v.shape[0] != 1):
        return -1
    if g.dim() != v.dim():
        raise ConversionError(f"weight_g shape {tuple(g.shape)} does not fit weight_v shape {tuple(v.shape)}")
    dims = [i for i, n in enumerate(g.shape) if n != 1]
    if not dims:
        return 0
    if len(dims) != 1 or g.shape[dims[0]] != v.shape[dims[0]]:
        raise ConversionError(f"weight_g shape {tuple(g.shape)} does not fit weight_v shape {tuple(v.shape)}")
    return dims[0]


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The plain weight ``g * v / ||v||`` exactly as torch's weight norm computes it in forward."""
    return torch._weight_norm(v, g, weight_norm_dim(g, v)).detach()


WEIGHT_NORM_LAYOUTS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class LayerWeights:
    """The weight a layer's forward uses (weight norm folded), its bias, and the keys they came from."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    keys: list[str]
    folded: bool


def layer_weights(state: Mapping[str, torch.Tensor], module: str) -> LayerWeights | None:
    """``module``'s weights in ``state`` (plain or weight-normed, either layout); None if absent."""
    base = f"{module}." if module else ""
    bias = state.get(base + "bias")
    bias_keys = [base + "bias"] if bias is not None else []
    for g, v in WEIGHT_NORM_LAYOUTS:
        if base + g in state and base + v in state:
            weight = fold_weight_norm(state[base + g], state[base + v])
            return LayerWeights(weight, bias, [base + g, base + v, *bias_keys], True)
    if base + "weight" in state:
        return LayerWeights(state[base + "weight"], bias, [base + "weight", *bias_keys], False)
    return None


def fold_weight_norm_state(state: dict[str, torch.Tensor], module: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return a new state_dict where ``module``'s weight-norm pair is replaced by ``<module>.weight``.

    Returns the new dict and the keys that were folded away (empty when ``module`` has none).
    """
    prefix = f"{module}." if module else ""
    for g_name, v_name in WEIGHT_NORM_LAYOUTS:
        g_key, v_key = prefix + g_name, prefix + v_name
        if g_key in state and v_key in state:
            folded = fold_weight_norm(state[g_key], state[v_key])
            out: dict[str, torch.Tensor] = {}
            for key, value in state.items():
                if key == g_key:
                    out[prefix + "weight"] = folded
                elif key != v_key:
                    out[key] = value
            return out, [g_key, v_key]
    return state, []
