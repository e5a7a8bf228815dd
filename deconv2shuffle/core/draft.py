"""Draft specs: from model classes (exact), or guessed from a checkpoint's state_dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import __version__
from ..errors import SpecError
from .models import model_args
from .shapes import guess_layers
from .sources import load_sources
from .spec import LayerSpec, Spec


def draft_from_models(
    source_model: str, source_args: str | None = None, target_model: str | None = None, target_args: str | None = None
) -> tuple[Spec, list[str]]:
    """Every ConvTranspose of the source model, paired with the target model's convs when given.

    Args:
        source_model: the old model, ``"package.module:Name"`` or ``"path/file.py:Name"``.
        source_args: its constructor arguments as JSON object text.
        target_model, target_args: the new model, likewise (optional).

    Returns:
        The spec (with a ``[models]`` table naming both models) and comment lines for its head.

    Raises:
        SpecError: the model cannot be built, has no ConvTranspose layers, or cannot be paired.
    """
    sources = load_sources(None, source_model, target_model, source_args, target_args)
    layers = sources.layers()
    if not layers:
        raise SpecError(f"source_model={source_model!r}: the model has no ConvTranspose layers; nothing to convert")
    comments = [f"written by deconv2shuffle {__version__} from {source_model}"]
    if target_model:
        comments.append(f"paired with {target_model}")
    if target_model:
        comments.append("target_kernel_size / target_padding omitted: the target model's convs decide")
    else:
        comments.append(
            "target_kernel_size / target_padding omitted: the cheapest exact conv (the form convert_model builds, "
            'cropping both ends) is used; geometry = "symmetric" gives a crop-free Conv + PixelShuffle'
        )
    comments.append("[models]: file paths are read relative to this spec's folder")
    comments += _shared_notes(sources.source_model, [x.source for x in layers])
    models: dict[str, Any] = {"source": source_model}
    if source_args:
        models["source_args"] = model_args(source_args, "source_args")
    if target_model:
        models["target"] = target_model
        if target_args:
            models["target_args"] = model_args(target_args, "target_args")
    return Spec(layers=layers, models=models), comments


def _shared_notes(model: torch.nn.Module | None, names: list[str]) -> list[str]:
    """One comment per module listed under several names (each name's keys are converted)."""
    if model is None:
        return []
    modules = dict(model.named_modules(remove_duplicate=False))
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(id(modules[name]), []).append(name)
    return [
        f"{' = '.join(group)}: one module reachable under {len(group)} names; the checkpoint holds its weights "
        "under each, and each is converted"
        for group in groups.values()
        if len(group) > 1
    ]


def draft_from_state(state: Mapping[str, torch.Tensor], checkpoint: str = "checkpoint") -> tuple[Spec, list[str]]:
    """A spec from the layers ``inspect`` recognises, with the common k = 2s stride/padding assumed.

    A state_dict cannot tell stride or padding: every layer is marked as a guess to confirm.

    Args:
        state: the checkpoint's state_dict.
        checkpoint: the file it came from, named in the comments and messages.

    Returns:
        The spec and comment lines for its head (each layer's reason and assumption).

    Raises:
        SpecError: no layer looks like a ConvTranspose with a guessable geometry.
    """
    guesses = guess_layers(state)
    comments = [
        f"DRAFT written by deconv2shuffle {__version__} from {checkpoint}: every layer below is a GUESS.",
        "A checkpoint cannot tell stride or padding; check each against the model that was trained and",
        "delete its `guessed = true` line, or draft the spec from the model class instead, which knows them.",
        "migrate refuses a layer still marked guessed unless a source model checks the whole model",
        "(--source-model) or --accept-guesses is given.",
    ]
    layers = []
    for g in guesses:
        if not g.get("assumed"):
            comments.append(f"not listed: {g['module']} (kernel {g['weight_shape'][2:]}): its stride cannot be guessed")
            continue
        layers.append(
            LayerSpec(
                source=g["module"],
                stride=tuple(g["stride"]),
                padding=tuple(g["padding"]),
                output_padding=tuple(g["output_padding"]),
                guessed=True,
            )
        )
        comments.append(f"{g['module']}: {g['reason']}; assumed {g['assumed']}")
        if g.get("alternatives"):
            comments.append(f"  other geometries with this kernel: {', '.join(g['alternatives'])}")
    if not layers:
        raise SpecError(
            f"{checkpoint}: no layer looks like a ConvTranspose with a guessable geometry; write the spec by hand"
        )
    return Spec(layers=layers), comments
