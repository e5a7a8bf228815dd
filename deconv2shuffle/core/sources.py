"""Where the layer list and the target come from: a spec file, model classes, or both.

A spec lists the layers and their hyperparameters; a source model gives them exactly; a target
model gives its keys, shapes and sub-pixel convs, and each source layer is paired with one of
its convs (by name, else by order and channels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SpecError
from ..nn import _TRANSPOSED, transposed_spec
from .models import ModelTrace, TargetConv, load_model, source_layers, target_convs, trace_model
from .spec import LayerSpec, Spec, load_spec

_HYPER = ("stride", "padding", "output_padding", "dilation")


class AmbiguousPairingError(SpecError):
    """Source layers and target convs that fit each other in more than one way.

    ``layers`` is the best guess (the layers paired in execution order) for a spec to edit;
    ``candidates`` maps each ambiguous source layer to the target convs it could take.
    """

    def __init__(self, message: str, layers: list[LayerSpec], candidates: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.layers = layers
        self.candidates = candidates


@dataclass
class Target:
    """What is known of the new architecture: its state_dict shapes and its sub-pixel convs."""

    shapes: dict[str, tuple[int, ...]]
    convs: dict[str, TargetConv] = field(default_factory=dict)
    trace: ModelTrace | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_model(cls, model: nn.Module) -> Target:
        """Trace ``model`` once: its keys and shapes, each conv with the shuffle after it, and their order."""
        trace = trace_model(model)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return cls(shapes, target_convs(model, trace), trace)


@dataclass
class Sources:
    """Where the layer list and the target come from (spec file, models, or both)."""

    spec: Spec | None = None
    source_model: nn.Module | None = None
    target_model: nn.Module | None = None
    _target: Target | None = field(default=None, repr=False, compare=False)
    source_ref: str | None = None  # the references the models were loaded from, for messages
    target_ref: str | None = None

    def loads_into(self, pairs: Sequence[tuple[str, str]]) -> str:
        """Which model the converted keys fit, in words: the target model, or ``convert_model(...)``.

        Args:
            pairs: each converted layer's ``(source, target)`` module paths.

        Returns:
            ``"your target model <ref>"`` when a target model is known (the keys were checked
            against it); ``"convert_model(<Source>())"`` when every layer became ``<source>.conv``,
            the layout of :func:`convert_model`; else the spec's target paths.
        """
        if self.target_model is not None:
            return f"your target model {self.target_ref or type(self.target_model).__name__}"
        if all(target == f"{source}.conv" for source, target in pairs):
            name = f"{type(self.source_model).__name__}()" if self.source_model is not None else "<your source model>"
            return f"convert_model({name})"
        return "a model with the spec's target convs at " + ", ".join(target for _, target in pairs)

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
            SpecError: nothing says which layers are ConvTranspose, a spec that contradicts the
                source model, or a pairing that is ambiguous (:class:`AmbiguousPairingError`).
        """
        if self.spec is not None and self.spec.layers:
            if self.source_model is not None:
                check_spec_against_model(self.spec, self.source_model)
            return list(self.spec.layers)
        if self.source_model is not None:
            found = source_layers(self.source_model)
            target = self.target()
            if target is not None:
                found = pair_layers(found, self.source_model, target)
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


def _per_axis(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _spoken(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(values)


def check_spec_against_model(spec: Spec, model: nn.Module) -> None:
    """Refuse a spec whose layers are not the source model's ConvTransposes, or whose hyperparameters differ.

    The source model is what the checkpoint was trained with; a spec that says otherwise would
    convert the weights for a layer that never existed.

    Args:
        spec: the parsed spec.
        model: the source model.

    Raises:
        SpecError: naming the spec file and line, the layer, and both values.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    for i, layer in enumerate(spec.layers):
        where = (
            f"{spec.path or '<spec>'}" + (f":{layer.line}" if layer.line else "") + f": layers[{i}] {layer.source!r}"
        )
        module = modules.get(layer.source)
        if module is None:
            continue  # a prefix or renamed module: the checkpoint lookup reports it
        if not isinstance(module, _TRANSPOSED):
            raise SpecError(
                f"{where}: the source model's {layer.source!r} is a {type(module).__name__}, not a ConvTranspose; "
                "list only ConvTranspose layers in the spec"
            )
        geo = transposed_spec(module)
        rank = len(geo.kernel_size)
        for name in _HYPER:
            said, real = _per_axis(getattr(layer, name), rank), tuple(getattr(geo, name))
            if said != real:
                raise SpecError(
                    f"{where}: the spec says {name} {_spoken(said)} but the source model's layer has {name} "
                    f"{_spoken(real)} ({type(module).__name__}); correct the spec, or leave the layer out of it "
                    "so the model's values are used"
                )
        if layer.groups != geo.groups:
            raise SpecError(
                f"{where}: the spec says groups {layer.groups} but the source model's layer has groups {geo.groups}; "
                "correct the spec"
            )


def _paired_by_name(layers: list[LayerSpec], convs: dict[str, TargetConv]) -> dict[int, str]:
    """``<source>.conv``, ``<source>``, or the one sub-pixel conv inside module ``<source>``."""
    paired: dict[int, str] = {}
    for i, layer in enumerate(layers):
        for name in (f"{layer.source}.conv", layer.source):
            if name in convs:
                paired[i] = name
                break
        else:
            inside = [n for n, c in convs.items() if c.factors and n.startswith(f"{layer.source}.")]
            if len(inside) == 1:
                paired[i] = inside[0]
    return paired


@dataclass
class _Pairing:
    """The layers left to pair by order, and what each model's trace says about them."""

    layers: list[LayerSpec]
    rest: list[int]  # indices into layers, in registration order
    free: list[TargetConv]  # in registration order
    source_trace: ModelTrace | None
    target_trace: ModelTrace | None
    fits: Callable[[int, TargetConv], bool]
    named: dict[int, str]  # the layers already paired by name
    all_convs: list[TargetConv]
    in_channels: Callable[[int], int]

    def executed(self) -> tuple[list[int], list[TargetConv]]:
        """Both lists in execution order (registration order where a model could not be traced)."""
        s_order = self.source_trace.order if self.source_trace else {}
        t_order = self.target_trace.order if self.target_trace else {}
        rest = sorted(self.rest, key=lambda i: s_order.get(self.layers[i].source, len(s_order) + i))
        free = sorted(self.free, key=lambda c: t_order.get(c.name, len(t_order) + self.free.index(c)))
        return rest, free

    def zipped(self, rest: list[int], free: list[TargetConv]) -> dict[int, str] | None:
        if len(rest) != len(free) or not all(self.fits(i, c) for i, c in zip(rest, free, strict=True)):
            return None
        return {i: c.name for i, c in zip(rest, free, strict=True)}

    def decided_by_data(self, by_exec: dict[int, str], differ: list[int]) -> bool:
        """Whether the data flow of both models orders every layer whose partner the orders disagree on."""
        if self.source_trace is None or self.target_trace is None:
            return False
        s, t = self.source_trace, self.target_trace
        rest, _ = self.executed()
        ordered = [i for i in rest if i in differ]
        for a, b in zip(ordered, ordered[1:], strict=False):
            if not s.runs_before(self.layers[a].source, self.layers[b].source):
                return False
            if not t.runs_before(by_exec[a], by_exec[b]):
                return False
        return True


def pair_layers(
    layers: list[LayerSpec], source: nn.Module, target: nn.Module | Target | dict[str, TargetConv]
) -> list[LayerSpec]:
    """Pair each source ConvTranspose with its target conv: by name, else in execution order and by channels.

    Execution order is the order ``torch.fx`` sees the modules called (registration order for a
    model that cannot be traced). When layers of equal channels could pair either way and the
    registration and execution orders disagree on it, the data flow of both models must decide
    (each layer reads the previous one's output); otherwise the pairing is ambiguous.

    Args:
        layers: the source model's layers (:func:`source_layers`).
        source: the source model.
        target: the target model, its :class:`Target`, or its :func:`target_convs` when already traced.

    Returns:
        The layers, each with its ``target`` set.

    Raises:
        AmbiguousPairingError: layers that pair either way (it names them and carries a draft).
        SpecError: a layer with no or several candidate convs.
    """
    if isinstance(target, Target):
        convs, target_trace = target.convs, target.trace
    elif isinstance(target, dict):
        convs, target_trace = target, None
    else:
        target_trace = trace_model(target)
        convs = target_convs(target, target_trace)
    paired = _paired_by_name(layers, convs)
    src_mods = dict(source.named_modules(remove_duplicate=False))

    def fits(i: int, c: TargetConv) -> bool:
        m = src_mods[layers[i].source]
        return bool(c.in_channels == m.in_channels and c.factors and len(c.factors) == len(m.kernel_size))

    job = _Pairing(
        layers,
        [i for i in range(len(layers)) if i not in paired],
        [c for n, c in convs.items() if c.factors and n not in paired.values()],
        trace_model(source),
        target_trace,
        fits,
        dict(paired),
        list(convs.values()),
        lambda i: int(src_mods[layers[i].source].in_channels),
    )
    if job.rest:
        paired.update(_pair_by_order(job))
    return [replace(layer, target=paired[i]) for i, layer in enumerate(layers)]


def _pair_by_order(job: _Pairing) -> dict[int, str]:
    rest, free = job.executed()
    by_exec = job.zipped(rest, free)
    if by_exec is not None:
        by_reg = job.zipped(job.rest, job.free)
        differ = [i for i in job.rest if by_reg is not None and by_reg[i] != by_exec[i]]
        if differ and not job.decided_by_data(by_exec, differ):
            raise _ambiguous(job, by_exec, by_reg or {}, differ)
        return by_exec
    paired: dict[int, str] = {}
    free = list(free)
    for i in rest:
        options = [c for c in free if job.fits(i, c)]
        if len(options) != 1:
            names = ", ".join(c.name for c in options) or "none"
            raise SpecError(
                f"cannot pair source layer {job.layers[i].source!r} with a target conv (candidates: {names})"
                f"{_unshuffled(job, i)}; write a spec that names each layer's target (the `spec` command drafts "
                "one from both models)"
            )
        paired[i] = options[0].name
        free.remove(options[0])
    return paired


def _unshuffled(job: _Pairing, i: int) -> str:
    """Target convs that would fit but for the missing shuffle after them, in words ("" when none)."""
    layer = job.layers[i]
    near = [c.name for c in job.all_convs if c.factors is None and c.in_channels == job.in_channels(i)]
    if not near:
        return ""
    return (
        f"; {', '.join(map(repr, near))} take its {job.in_channels(i)} input channels, but no PixelShuffle follows "
        f"them in the target model's forward, and {layer.source!r} upsamples by {layer.stride}"
    )


def _ambiguous(job: _Pairing, by_exec: dict[int, str], by_reg: dict[int, str], differ: list[int]) -> SpecError:
    names = [job.layers[i].source for i in differ]
    convs = sorted({by_exec[i] for i in differ})
    candidates = {job.layers[i].source: [c.name for c in job.free if job.fits(i, c)] for i in differ}
    registered = ", ".join(f"{job.layers[i].source} -> {by_reg[i]}" for i in differ)
    executed = ", ".join(f"{job.layers[i].source} -> {by_exec[i]}" for i in differ)
    chosen = {**job.named, **by_exec}
    guess = [replace(layer, target=chosen.get(i, layer.target)) for i, layer in enumerate(job.layers)]
    message = (
        f"ambiguous pairing: source layers {', '.join(map(repr, names))} and target convs "
        f"{', '.join(map(repr, convs))} have equal channels and geometry, and the models' orders disagree "
        f"(in registration order {registered}; in execution order {executed}), and neither model's data "
        "flow decides it; give spec='spec.toml' naming each layer's target"
    )
    return AmbiguousPairingError(message, guess, candidates)


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
        source_ref=source_model,
        target_ref=target_model,
    )
