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
from ..geometry import TransposedConv, smallest
from ..rewrite import WEIGHT_NORM_LAYOUTS, layer_weights
from .keys import find_prefix
from .planning import plan_layer, target_weight_shape
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


def _layer_entry(layer: LayerSpec, state: Mapping[str, torch.Tensor], prefix: str, origin: str) -> dict[str, Any]:
    found = layer_weights(state, prefix + layer.source)
    if found is None:
        return {"module": layer.source, "origin": origin, "error": f"no key {prefix}{layer.source}.weight"}
    weight, wn = found.weight, found.folded
    try:
        plan = plan_layer(layer, weight)
    except Deconv2ShuffleError as e:
        return {"module": layer.source, "origin": origin, "error": str(e)}
    return {
        "module": layer.source,
        "origin": origin,
        "geometry": plan.source.describe(),
        "weight_shape": list(weight.shape),
        "weight_norm": wn,
        "exact": plan.exact,
        "target": layer.target_module,
        "target_kernel_size": list(plan.target.kernel_size),
        "target_padding": list(plan.target.pad_before),
        "target_weight_shape": target_weight_shape(weight, plan),
        "crop": list(plan.crop),
        "macs_ratio": plan.macs_ratio,
    }


def guess_layers(state: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Modules that look like ConvTranspose layers, with the reason; the geometry is an assumption.

    Args:
        state: the state_dict.

    Returns:
        One entry per likely layer: ``module``, ``reason``, ``weight_shape``, ``weight_norm``,
        and, when the kernel is even, the assumed ``stride`` / ``padding`` (k = 2s) and the plan
        that gives.
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
        weight, bias, wn = found.weight, found.bias, found.folded
        reasons = []
        if bias is not None and bias.dim() == 1 and bias.numel() == weight.shape[1] != weight.shape[0]:
            reasons.append(f"bias has {bias.numel()} = weight.shape[1] entries (a Conv's would have weight.shape[0])")
        if _UPSAMPLE_NAME.search(module):
            reasons.append("its name suggests upsampling")
        if not reasons:
            continue
        k = tuple(weight.shape[2:])
        entry: dict[str, Any] = {
            "module": module,
            "origin": "guess",
            "reason": "; ".join(reasons),
            "weight_shape": list(weight.shape),
            "weight_norm": wn,
        }
        if all(n % 2 == 0 for n in k):
            stride = tuple(max(n // 2, 1) for n in k)
            padding = tuple((n - s) // 2 for n, s in zip(k, stride, strict=True))
            plan = smallest(TransposedConv.make(k, stride, padding, rank=len(k)))
            entry.update(
                stride=list(stride),
                padding=list(padding),
                assumed=f"stride {stride[0]}, padding {padding[0]} (the common k=2s choice; confirm with a spec)",
                geometry=plan.source.describe(),
                target_kernel_size=list(plan.target.kernel_size),
                target_padding=list(plan.target.pad_before),
                crop=list(plan.crop),
                macs_ratio=plan.macs_ratio,
            )
        out.append(entry)
    return out


def describe_checkpoint(
    ckpt: Checkpoint,
    layers: Sequence[LayerSpec] | None = None,
    *,
    origin: str = "spec",
    file_bytes: int = 0,
) -> dict[str, Any]:
    """Everything ``inspect`` shows about a loaded checkpoint, as plain data.

    Args:
        ckpt: the loaded checkpoint.
        layers: the ConvTranspose layers a spec or source model lists; ``None``: guess them.
        origin: where ``layers`` came from (``"spec"`` or ``"model"``).
        file_bytes: the files' size on disk.

    Returns:
        ``file``, ``format``, ``file_bytes``, ``top_level``, ``state_dict_key``, ``metadata``,
        ``modules`` (tensors grouped by module), ``totals`` and ``conv_transpose`` (each layer
        with its target geometry), ``conv_transpose_source`` (``spec``, ``model`` or ``guess``).
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
        found = [_layer_entry(layer, state, prefix, origin) for layer in layers]
    else:
        found, origin = guess_layers(state), "guess"
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
