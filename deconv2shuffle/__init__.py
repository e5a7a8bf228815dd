"""deconv2shuffle: migrate ConvTranspose checkpoints to Conv + PixelShuffle, exactly.

The public API is importable from here. Attributes that need torch are imported on first use,
so ``import deconv2shuffle`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "PixelShuffle": "nn",
    "SubPixelConvTranspose1d": "nn",
    "SubPixelConvTranspose2d": "nn",
    "SubPixelConvTranspose3d": "nn",
    "convert_model": "nn",
    "pixel_shuffle": "nn",
    "plan_for": "nn",
    "transposed_spec": "nn",
    "transposed_to_subpixel": "rewrite",
    "subpixel_to_transposed_weights": "rewrite",
    "fold_weight_norm": "rewrite",
    "fold_weight_norm_state": "rewrite",
    "Rewritten": "rewrite",
    "TransposedConv": "geometry",
    "TargetGeometry": "geometry",
    "SubPixelPlan": "geometry",
    "smallest": "geometry",
    "cheapest": "geometry",
    "fit": "geometry",
    "explain_mismatch": "geometry",
    "subpixel_to_transposed": "geometry",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Checkpoint": "checkpoint",
    "migrate": "migrate",
    "MigrationReport": "report",
    "load_spec": "spec",
    "Spec": "spec",
    "LayerSpec": "spec",
}

__all__ = [
    "__version__",
    "Checkpoint",
    "LayerSpec",
    "MigrationReport",
    "PixelShuffle",
    "Rewritten",
    "Spec",
    "cheapest",
    "SubPixelConvTranspose1d",
    "SubPixelConvTranspose2d",
    "SubPixelConvTranspose3d",
    "SubPixelPlan",
    "TargetGeometry",
    "TransposedConv",
    "convert_model",
    "explain_mismatch",
    "fit",
    "fold_weight_norm",
    "fold_weight_norm_state",
    "load_checkpoint",
    "load_spec",
    "migrate",
    "pixel_shuffle",
    "plan_for",
    "save_checkpoint",
    "smallest",
    "subpixel_to_transposed",
    "subpixel_to_transposed_weights",
    "transposed_spec",
    "transposed_to_subpixel",
]

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .geometry import (
        SubPixelPlan,
        TargetGeometry,
        TransposedConv,
        cheapest,
        explain_mismatch,
        fit,
        smallest,
        subpixel_to_transposed,
    )
    from .migrate import migrate
    from .nn import (
        PixelShuffle,
        SubPixelConvTranspose1d,
        SubPixelConvTranspose2d,
        SubPixelConvTranspose3d,
        convert_model,
        pixel_shuffle,
        plan_for,
        transposed_spec,
    )
    from .report import MigrationReport
    from .rewrite import (
        Rewritten,
        fold_weight_norm,
        fold_weight_norm_state,
        subpixel_to_transposed_weights,
        transposed_to_subpixel,
    )
    from .spec import LayerSpec, Spec, load_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deconv2shuffle' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
