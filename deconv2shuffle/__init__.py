"""deconv2shuffle: migrate ConvTranspose checkpoints to Conv + PixelShuffle, exactly.

The public API is importable from here. Attributes that need torch are imported on first use,
so ``import deconv2shuffle`` (and the command line's ``--help``) stays fast. ``__all__`` and the
lazy imports come from one table, :data:`_PUBLIC`; no public name is also a submodule's name, so
``from deconv2shuffle import migrate`` is always the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package)
_PUBLIC: dict[str, str] = {
    # engine: geometry, tensor rewrites, modules
    "TransposedConv": "geometry",
    "TargetGeometry": "geometry",
    "SubPixelPlan": "geometry",
    "smallest": "geometry",
    "cheapest": "geometry",
    "fit": "geometry",
    "explain_mismatch": "geometry",
    "subpixel_to_transposed": "geometry",
    "Rewritten": "rewrite",
    "transposed_to_subpixel": "rewrite",
    "subpixel_to_transposed_weights": "rewrite",
    "fold_weight_norm": "rewrite",
    "fold_weight_norm_state": "rewrite",
    "PixelShuffle": "nn",
    "SubPixelConvTranspose1d": "nn",
    "SubPixelConvTranspose2d": "nn",
    "SubPixelConvTranspose3d": "nn",
    "convert_model": "nn",
    "pixel_shuffle": "nn",
    "plan_for": "nn",
    "transposed_spec": "nn",
    # checkpoint files
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    # conversion core
    "LayerSpec": "core.spec",
    "Spec": "core.spec",
    "load_spec": "core.spec",
    "parse_spec": "core.spec",
    "dump_spec": "core.spec",
    "Sources": "core.sources",
    "Target": "core.sources",
    "load_sources": "core.sources",
    "pair_layers": "core.sources",
    "plan_layer": "core.planning",
    "Conversion": "core.convert",
    "convert_state_dict": "core.convert",
    "Tolerance": "core.verify",
    "verify_layer": "core.verify",
    "end_to_end": "core.verify",
    "explain_plan": "core.explain",
    "explain_geometry": "core.explain",
    # pipeline and its results
    "MigrationReport": "report",
    "LayerResult": "report",
    "migrate": "pipeline",
    "run_batch": "pipeline",
    "BatchResult": "pipeline",
    "inspect_checkpoint": "pipeline",
    "draft_spec": "pipeline",
    "run_bench": "pipeline",
    # ready converted models, and example inputs for the end-to-end check
    "load_converted": "loading",
    "save_converted_pretrained": "loading",
    "load_converted_pretrained": "loading",
    "ExampleInputs": "examples",
    "load_example_inputs": "examples",
    "save_example_inputs": "examples",
}

__all__ = ["__version__", *sorted(_PUBLIC)]

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .core.convert import Conversion, convert_state_dict
    from .core.explain import explain_geometry, explain_plan
    from .core.planning import plan_layer
    from .core.sources import Sources, Target, load_sources, pair_layers
    from .core.spec import LayerSpec, Spec, dump_spec, load_spec, parse_spec
    from .core.verify import Tolerance, end_to_end, verify_layer
    from .examples import ExampleInputs, load_example_inputs, save_example_inputs
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
    from .loading import load_converted, load_converted_pretrained, save_converted_pretrained
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
    from .pipeline import BatchResult, draft_spec, inspect_checkpoint, migrate, run_batch, run_bench
    from .report import LayerResult, MigrationReport
    from .rewrite import (
        Rewritten,
        fold_weight_norm,
        fold_weight_norm_state,
        subpixel_to_transposed_weights,
        transposed_to_subpixel,
    )


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'deconv2shuffle' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
