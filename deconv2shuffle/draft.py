"""Draft specs for ``deconv2shuffle spec``: from model classes (exact), or guessed from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import load_checkpoint
from .errors import SpecError
from .migrate import load_sources
from .shapes import guess_layers
from .spec import LayerSpec, Spec


def draft_from_models(
    source_model: str, source_args: str | None = None, target_model: str | None = None, target_args: str | None = None
) -> tuple[Spec, list[str]]:
    """Every ConvTranspose of the source model, paired with the target model's convs when given."""
    sources = load_sources(None, source_model, target_model, source_args, target_args)
    layers = sources.layers()
    if not layers:
        raise SpecError(f"--source-model {source_model}: the model has no ConvTranspose layers; nothing to convert")
    comments = [f"written by deconv2shuffle {__version__} from {source_model}"]
    if target_model:
        comments.append(f"paired with {target_model}")
    comments.append("target_kernel_size / target_padding omitted: the smallest exact conv is used")
    comments.append("[models]: file paths are read relative to this spec's folder")
    models: dict[str, Any] = {"source": source_model}
    if source_args:
        models["source_args"] = json.loads(source_args)
    if target_model:
        models["target"] = target_model
        if target_args:
            models["target_args"] = json.loads(target_args)
    return Spec(layers=layers, models=models), comments


def draft_from_checkpoint(checkpoint: Path, state_dict_key: str | None = None) -> tuple[Spec, list[str]]:
    """A spec from the layers ``inspect`` recognises, with the common k = 2s stride/padding assumed.

    A checkpoint cannot tell stride or padding: every layer is marked as a guess to confirm.
    """
    state = load_checkpoint(checkpoint, state_dict_key=state_dict_key).state_dict
    guesses = guess_layers(state)
    comments = [
        f"DRAFT written by deconv2shuffle {__version__} from {checkpoint}: every layer below is a GUESS.",
        "A checkpoint cannot tell stride or padding; check each against the model that was trained,",
        "or write the spec from the model class: deconv2shuffle spec --source-model file.py:Name",
    ]
    layers = []
    for g in guesses:
        if "assumed" not in g:
            comments.append(f"not listed: {g['module']} (kernel {g['weight_shape'][2:]}): its stride cannot be guessed")
            continue
        layers.append(LayerSpec(source=g["module"], stride=tuple(g["stride"]), padding=tuple(g["padding"])))
        comments.append(f"{g['module']}: {g['reason']}; assumed {g['geometry']}")
    if not layers:
        raise SpecError(
            f"{checkpoint}: no layer looks like a ConvTranspose with a guessable geometry; write the spec by hand"
        )
    return Spec(layers=layers), comments
