"""inspect: a shape report of a loaded checkpoint, with its ConvTranspose layers and their sub-pixel targets.

Plain data from an in-memory checkpoint; reading the file is the pipeline's job.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import Deconv2ShuffleError
from ..geometry import Mode
from ..guess import guess_from_weight
from ..rewrite import WEIGHT_NORM_LAYOUTS, layer_weights
from .keys import find_prefix
from .planning import forward_crop, plan_layer, target_weight_shape
from .spec import LayerSpec

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

_UPSAMPLE_NAME = re.compile(r"(^|[._])(up|ups|upsample|upconv|deconv|convt|conv_?transpose|transpose|tconv)\w*", re.I)


def _module_of(key: str) -> tuple[str, str]:
    for _, v in WEIGHT_NORM_LAYOUTS:
        for g in (v, v.replace("original1", "original0").replace("weight_v", "weight_g")):
            if key.endswith("." + g):
                return key[: -len(g) - 1], g
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, dict):
        return f"dict with {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


ENTRY_KEYS = (
    "module",
    "origin",
    "reason",
    "assumed",
    "alternatives",
    "error",
    "stride",
    "padding",
    "output_padding",
    "geometry",
    "weight_shape",
    "weight_norm",
    "exact",
    "target",
    "target_kernel_size",
    "target_padding",
    "target_weight_shape",
    "crop",
    "crop_start",
    "crop_end",
    "shift",
    "forward_crop",
    "macs_ratio",
)


def _entry(module: str, origin: str, **known: Any) -> dict[str, Any]:
    """One ``conv_transpose`` entry: every key of :data:`ENTRY_KEYS`, ``None`` where unknown."""
    return {key: known.get(key) for key in ENTRY_KEYS} | {"module": module, "origin": origin}


def _planned(layer: LayerSpec, weight: torch.Tensor, geometry: Mode) -> dict[str, Any]:
    """What a plan says about a layer (raises what :func:`plan_layer` raises)."""
    plan = plan_layer(layer, weight, geometry=geometry)
    target = plan.target
    padding: list[int] | list[list[int]] = (
        list(target.pad_before)
        if target.symmetric
        else [[b, a] for b, a in zip(target.pad_before, target.pad_after, strict=True)]
    )
    return {
        "stride": list(plan.source.stride),
        "padding": list(plan.source.padding),
        "output_padding": list(plan.source.output_padding),
        "geometry": plan.source.describe(),
        "exact": plan.exact,
        "target": layer.target_module,
        "target_kernel_size": list(target.kernel_size),
        "target_padding": padding,
        "target_weight_shape": target_weight_shape(weight, plan),
        "crop": list(plan.crop_end),
        "crop_start": list(plan.crop_start),
        "crop_end": list(plan.crop_end),
        "shift": list(plan.shift),
        "forward_crop": forward_crop(plan),
        "macs_ratio": plan.macs_ratio,
    }


def _layer_entry(
    layer: LayerSpec, state: Mapping[str, torch.Tensor], prefix: str, origin: str, geometry: Mode
) -> dict[str, Any]:
    found = layer_weights(state, prefix + layer.source)
    if found is None:
        return _entry(layer.source, origin, error=f"no key {prefix}{layer.source}.weight")
    base = {"weight_shape": list(found.weight.shape), "weight_norm": found.folded}
    reason = "listed in the spec" if origin == "spec" else "a ConvTranspose of the source model"
    try:
        return _entry(layer.source, origin, reason=reason, **base, **_planned(layer, found.weight, geometry))
    except Deconv2ShuffleError as e:
        return _entry(layer.source, origin, reason=reason, error=str(e), **base)


def guess_layers(state: Mapping[str, torch.Tensor], geometry: Mode = "minimal") -> list[dict[str, Any]]:
    """Modules that look like ConvTranspose layers, with the reason; the geometry is an assumption.

    Args:
        state: the state_dict.
        geometry: the exact form to show (``"minimal"``, ``"tight"`` or ``"symmetric"``).

    Returns:
        One entry per likely layer, with the keys of a listed layer (:data:`ENTRY_KEYS`): ``reason``
        says why it looks like one; when the kernel is even, ``assumed`` names the stride and
        padding taken (k = 2s) and the target fields follow from them, else they are ``None``.
    """
    out = []
    seen = set()
    for key in state:
        module, leaf = _module_of(key)
        if module in seen or leaf not in ("weight", "weight_v", "parametrizations.weight.original1"):
            continue
        seen.add(module)
        found = layer_weights(state, module)
        if found is None or found.weight.dim() not in (3, 4, 5):
            continue
        weight, bias = found.weight, found.bias
        reasons = []
        if bias is not None and bias.dim() == 1 and bias.numel() == weight.shape[1] != weight.shape[0]:
            reasons.append(f"bias has {bias.numel()} = weight.shape[1] entries (a Conv's would have weight.shape[0])")
        if _UPSAMPLE_NAME.search(module):
            reasons.append("its name suggests upsampling")
        if not reasons:
            continue
        known: dict[str, Any] = {
            "reason": "; ".join(reasons),
            "weight_shape": list(weight.shape),
            "weight_norm": found.folded,
        }
        guesses = guess_from_weight(weight)
        if guesses:
            best = guesses[0]
            spec = LayerSpec(module, best.stride, padding=best.padding, output_padding=best.output_padding)
            try:
                known.update(_planned(spec, weight, geometry))
                known["assumed"] = (
                    f"{best.describe()} ({'; '.join(best.reasons[:1]) or 'most common'}; confirm with a spec)"
                )
                known["alternatives"] = [g.describe() for g in guesses[1:]]
            except Deconv2ShuffleError as e:
                known["error"] = str(e)
        out.append(_entry(module, "guess", **known))
    return out


def describe_checkpoint(
    ckpt: Checkpoint,
    layers: Sequence[LayerSpec] | None = None,
    *,
    origin: str = "spec",
    file_bytes: int = 0,
    geometry: Mode = "minimal",
) -> dict[str, Any]:
    """Everything ``inspect`` shows about a loaded checkpoint, as plain data.

    Args:
        ckpt: the loaded checkpoint.
        layers: the ConvTranspose layers a spec or source model lists; ``None``: guess them.
        origin: where ``layers`` came from (``"spec"`` or ``"model"``).
        file_bytes: the files' size on disk.
        geometry: the exact form shown for layers a spec does not fix.

    Returns:
        ``file``, ``format``, ``file_bytes``, ``top_level``, ``state_dict_key``, ``metadata``,
        ``modules`` (tensors grouped by module), ``totals`` and ``conv_transpose`` (each layer
        with its target geometry, every entry with the keys :data:`ENTRY_KEYS`),
        ``conv_transpose_source`` (``spec``, ``model`` or ``guess``).
    """
    state = ckpt.state_dict
    modules: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    by_dtype: dict[str, dict[str, int]] = {}
    for key, t in state.items():
        module, leaf = _module_of(key)
        nbytes = t.numel() * t.element_size()
        dtype = str(t.dtype).replace("torch.", "")
        modules.setdefault(module, []).append(
            {"key": key, "name": leaf, "shape": list(t.shape), "dtype": dtype, "numel": t.numel(), "bytes": nbytes}
        )
        d = by_dtype.setdefault(dtype, {"tensors": 0, "numel": 0, "bytes": 0})
        d["tensors"] += 1
        d["numel"] += t.numel()
        d["bytes"] += nbytes
    if layers is not None:
        prefix = find_prefix(list(state), layers[0].source, str(ckpt.path)) if layers else ""
        found = [_layer_entry(layer, state, prefix, origin, geometry) for layer in layers]
    else:
        found, origin = guess_layers(state, geometry), "guess"
    top = {}
    if isinstance(ckpt.container, dict) and ckpt.state_key is not None:
        top = {str(k): _summary(v) for k, v in ckpt.container.items()}
    return {
        "file": str(ckpt.path),
        "format": ckpt.format,
        "file_bytes": file_bytes,
        "top_level": top,
        "state_dict_key": ckpt.state_key,
        "state_dict_candidates": ckpt.candidates,
        "metadata": ckpt.metadata,
        "modules": [{"module": m, "tensors": rows} for m, rows in modules.items()],
        "totals": {
            "tensors": len(state),
            "numel": sum(d["numel"] for d in by_dtype.values()),
            "bytes": sum(d["bytes"] for d in by_dtype.values()),
            "by_dtype": by_dtype,
        },
        "conv_transpose": found,
        "conv_transpose_source": origin,
    }
