"""Where the layer list and the target come from: a spec file, model classes, or both.

A spec lists the layers and their hyperparameters; a source model gives them exactly; a target
model gives its keys, shapes and sub-pixel convs, and each source layer is paired with one of
its convs (by name, else by order and channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SpecError
from .models import TargetConv, load_model, source_layers, target_convs
from .spec import LayerSpec, Spec, load_spec


@dataclass
class Target:
    """What is known of the new architecture: its state_dict shapes and its sub-pixel convs."""

    shapes: dict[str, tuple[int, ...]]
    convs: dict[str, TargetConv] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module) -> Target:
        """Trace ``model`` once: its keys and shapes, and each conv with the shuffle after it."""
        return cls({k: tuple(v.shape) for k, v in model.state_dict().items()}, target_convs(model))


@dataclass
class Sources:
    """Where the layer list and the target come from (spec file, models, or both)."""

    spec: Spec | None = None
    source_model: nn.Module | None = None
    target_model: nn.Module | None = None
    _target: Target | None = field(default=None, repr=False, compare=False)

    def target(self) -> Target | None:
        """The target model's shapes and convs, traced once; ``None`` without a target model."""
        if self.target_model is None:
            return None
        if self._target is None:
            self._target = Target.from_model(self.target_model)
        return self._target

    def layers(self) -> list[LayerSpec]:
        """The layers to convert: the spec's, else the source model's (paired with the target's convs).

        Raises:
            SpecError: nothing says which layers are ConvTranspose, or the pairing is ambiguous.
        """
        if self.spec is not None and self.spec.layers:
            return list(self.spec.layers)
        if self.source_model is not None:
            found = source_layers(self.source_model)
            target = self.target()
            if target is not None:
                found = pair_layers(found, self.source_model, target.convs)
            return found
        if self.target_model is not None:
            raise SpecError(
                "a target model alone tells the shuffle factor but not the ConvTranspose padding; "
                "add source_model='file.py:Name' or spec='spec.toml' (the `spec` command writes one)"
            )
        raise SpecError(
            "nothing says which layers are ConvTranspose or their stride and padding (a checkpoint alone cannot); "
            "give spec='spec.toml', or source_model='file.py:Name' (and target_model='file.py:Name'); "
            "the `spec` command drafts a spec from a checkpoint's guesses to check"
        )


def _paired_by_name(layers: list[LayerSpec], convs: dict[str, TargetConv]) -> dict[int, str]:
    paired: dict[int, str] = {}
    for i, layer in enumerate(layers):
        for name in (f"{layer.source}.conv", layer.source):
            if name in convs:
                paired[i] = name
                break
    return paired


def pair_layers(
    layers: list[LayerSpec], source: nn.Module, target: nn.Module | dict[str, TargetConv]
) -> list[LayerSpec]:
    """Pair each source ConvTranspose with its target conv: by name, else by order and channels.

    Args:
        layers: the source model's layers (:func:`source_layers`).
        source: the source model.
        target: the target model, or its :func:`target_convs` when already traced.

    Returns:
        The layers, each with its ``target`` set.

    Raises:
        SpecError: a layer with no or several candidate convs.
    """
    convs = target if isinstance(target, dict) else target_convs(target)
    paired = _paired_by_name(layers, convs)
    free_convs = [c for n, c in convs.items() if c.factors and n not in paired.values()]
    rest = [i for i in range(len(layers)) if i not in paired]
    src_mods = dict(source.named_modules())

    def fits(i: int, c: TargetConv) -> bool:
        m = src_mods[layers[i].source]
        return bool(c.in_channels == m.in_channels and c.factors and len(c.factors) == len(m.kernel_size))

    if rest and len(rest) == len(free_convs) and all(fits(i, c) for i, c in zip(rest, free_convs, strict=True)):
        paired.update((i, c.name) for i, c in zip(rest, free_convs, strict=True))
    else:
        for i in rest:
            options = [c for c in free_convs if fits(i, c)]
            if len(options) != 1:
                names = ", ".join(c.name for c in options) or "none"
                raise SpecError(
                    f"cannot pair source layer {layers[i].source!r} with a target conv (candidates: {names}); "
                    "write a spec that names each layer's target (the `spec` command drafts one from both models)"
                )
            paired[i] = options[0].name
            free_convs.remove(options[0])
    return [
        LayerSpec(
            source=layer.source,
            stride=layer.stride,
            target=paired[i],
            padding=layer.padding,
            output_padding=layer.output_padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )
        for i, layer in enumerate(layers)
    ]


def load_sources(
    spec: str | Path | None = None,
    source_model: str | None = None,
    target_model: str | None = None,
    source_args: str | dict[str, Any] | None = None,
    target_args: str | dict[str, Any] | None = None,
) -> Sources:
    """Load a spec and/or import model classes.

    Args:
        spec: a spec file (TOML). Its ``[models]`` table names models unless given here.
        source_model: the old model, ``"package.module:Name"`` or ``"path/file.py:Name"``.
        target_model: the new model, likewise.
        source_args, target_args: constructor keyword arguments (a dict or JSON object text).

    Returns:
        The :class:`Sources`.

    Raises:
        SpecError: an invalid spec, or a model reference that cannot be imported or built.
    """
    loaded = load_spec(spec) if spec else None
    if loaded is not None and loaded.models:
        # models named in the spec ([models]) apply unless given by the caller
        if source_model is None and loaded.model_ref("source"):
            source_model, source_args = loaded.model_ref("source"), loaded.models.get("source_args")
        if target_model is None and loaded.model_ref("target"):
            target_model, target_args = loaded.model_ref("target"), loaded.models.get("target_args")
    return Sources(
        spec=loaded,
        source_model=load_model(source_model, source_args, what="source_model") if source_model else None,
        target_model=load_model(target_model, target_args, what="target_model") if target_model else None,
    )
