"""Converting a state_dict in memory: rewrite the listed layers, carry every other key over.

No files and no terminal: a state_dict and a layer list in, a new state_dict and a report out.
Every old key ends up converted, copied, renamed or dropped, and the report says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConversionError, SpecError, VerificationError
from ..geometry import SubPixelPlan
from ..report import LayerResult, MigrationReport
from ..rewrite import Rewritten, transposed_to_subpixel
from .keys import KeyRules, find_prefix, strip_prefix
from .models import TargetConv
from .optimizer import identity
from .planning import LocatedLayer, check_exact, check_target_conv, locate_layer, plan_layer
from .sources import Target
from .spec import LayerSpec
from .verify import DEFAULT_TOLERANCE, Tolerance, verify_layer

Transform = Callable[[torch.Tensor], torch.Tensor]
KeyMap = dict[str, tuple[str | None, Transform | None]]


@dataclass
class Conversion:
    """The in-memory result of :func:`convert_state_dict`.

    ``key_map`` maps each old key to its new key (``None``: gone) and the transform a tensor of
    that parameter's shape needs (for optimizer moments); ``converted_keys`` are the new keys that
    hold converted tensors.
    """

    state_dict: dict[str, torch.Tensor]
    report: MigrationReport
    key_map: KeyMap
    converted_keys: set[str]


@dataclass
class _Work:
    """What the layer loop has produced so far."""

    report: MigrationReport
    consumed: dict[str, list[tuple[str, torch.Tensor]]] = field(default_factory=dict)  # first old key -> new entries
    used: set[str] = field(default_factory=set)
    key_map: KeyMap = field(default_factory=dict)
    converted: set[int] = field(default_factory=set)  # ids of the new tensors


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    layers: Sequence[LayerSpec],
    *,
    target: Target | None = None,
    rename: Sequence[tuple[str, str]] = (),
    drop: Sequence[str] = (),
    approx: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_missing: bool = False,
    drop_unexpected: bool = False,
    source_name: str = "checkpoint",
) -> Conversion:
    """Convert the listed layers of ``state`` and carry every other key over (copied, renamed or dropped).

    Args:
        state: the old state_dict (not modified).
        layers: the ConvTranspose layers to convert.
        target: the target model's keys, shapes and convs; the result must then load into it
            with ``strict=True``.
        rename: ``(regex, replacement)`` rules for the keys that are carried over, in order.
        drop: regexes of keys to leave out.
        approx: allow an inexact target (taps outside its kernel are dropped and reported).
        tolerance: max relative float64 error of a converted layer.
        allow_missing: accept target keys the result does not fill.
        drop_unexpected: leave out keys the target model does not have.
        source_name: the file the state comes from, for messages.

    Returns:
        The :class:`Conversion`.

    Raises:
        SpecError: no layers, a missing layer, a rename collision, or keys that do not match the target.
        UsageError: a rename or drop pattern that is not a valid regular expression.
        InexactTargetError: an inexact target without ``approx``.
        ConversionError: a target conv or key shape that does not fit.
        VerificationError: a converted layer's error above ``tolerance``.
    """
    rules = KeyRules.make(rename, drop)
    if not layers:
        raise SpecError(f"{source_name}: no ConvTranspose layers to convert (the spec or source model lists none)")
    report = MigrationReport(tolerance=tolerance)
    report.key_prefix = find_prefix(list(state), layers[0].source, source_name)
    work = _Work(report)
    for layer in layers:
        _convert_layer(state, layer, work, target, approx, Tolerance(tolerance), source_name)
    out = _carry_keys(state, work, rules)
    if target is not None:
        out = _match_target(out, target, work, allow_missing, drop_unexpected, source_name)
    report.ok = True
    # the converted tensors under whatever names they ended with (a prefix may have been removed)
    converted_keys = {k for k, v in out.items() if id(v) in work.converted}
    return Conversion(out, report, work.key_map, converted_keys)


def _target_conv(layer: LayerSpec, target: Target | None) -> TargetConv | None:
    if target is None or not target.convs:
        return None
    conv = target.convs.get(layer.target_module)
    if conv is None:
        names = ", ".join(n for n, c in target.convs.items() if c.factors) or "none"
        raise SpecError(
            f"layer {layer.source!r}: the target model has no conv {layer.target_module!r}; "
            f"its sub-pixel convs are {names}"
        )
    return conv


def _convert_layer(
    state: Mapping[str, torch.Tensor],
    layer: LayerSpec,
    work: _Work,
    target: Target | None,
    approx: bool,
    tolerance: Tolerance,
    source_name: str,
) -> None:
    located = locate_layer(state, layer.source, source_name)
    found = located.weights
    if any(k in work.used for k in found.keys):
        raise SpecError(f"layer {layer.source!r} is listed twice")
    conv = _target_conv(layer, target)
    plan = plan_layer(layer, found.weight, conv)
    if conv is not None:
        check_target_conv(layer, found.weight, found.bias is not None, plan, conv)
    check_exact(layer, plan, approx)
    new = transposed_to_subpixel(found.weight, found.bias, plan, approx=approx)
    abs_err, rel_err = verify_layer(found.weight, found.bias, new.weight, new.bias, plan)
    if plan.exact and not tolerance.layer_ok(rel_err):
        raise VerificationError(
            f"layer {layer.source!r}: converted output differs by {rel_err:.3g} relative "
            f"(tolerance {tolerance.layer:g}); nothing was written"
        )
    new_base = f"{located.prefix}{layer.target_module}."
    entries = [(new_base + "weight", new.weight)]
    if new.bias is not None:
        entries.append((new_base + "bias", new.bias))
    work.consumed[found.keys[0]] = entries
    work.used.update(found.keys)
    work.converted.update(id(t) for _, t in entries)
    _map_layer_keys(work.key_map, located, plan, new_base)
    work.report.layers.append(_layer_result(layer, located, plan, new, [k for k, _ in entries], abs_err, rel_err))
    if not plan.exact:
        work.report.notes.append(
            f"{layer.source}: approximated ({new.dropped_taps} source taps dropped, relative weight mass "
            f"{new.dropped_mass:.3g}, output error {rel_err:.3g} relative)"
        )


def _map_layer_keys(key_map: KeyMap, located: LocatedLayer, plan: SubPixelPlan, new_base: str) -> None:
    """Old keys of a converted layer -> new keys, with the transform optimizer moments need."""
    keys = located.weights.keys
    if located.weights.folded:
        key_map[keys[0]] = (new_base + "weight", None)  # a folded weight's moments restart
        key_map[keys[1]] = (None, None)
    else:
        key_map[keys[0]] = (new_base + "weight", _weight_transform(plan))
    if located.weights.bias is not None:
        key_map[located.base + "bias"] = (new_base + "bias", _bias_transform(plan))


def _weight_transform(plan: SubPixelPlan) -> Transform:
    def weight(t: torch.Tensor) -> torch.Tensor:
        return transposed_to_subpixel(t, None, plan, approx=True).weight

    return weight


def _bias_transform(plan: SubPixelPlan) -> Transform:
    def bias(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(plan.phases)

    return bias


def _layer_result(
    layer: LayerSpec,
    located: LocatedLayer,
    plan: SubPixelPlan,
    new: Rewritten,
    new_keys: list[str],
    abs_err: float,
    rel_err: float,
) -> LayerResult:
    target = plan.target
    target_pad: list[int] | list[list[int]] = (
        list(target.pad_before)
        if target.symmetric
        else [[b, a] for b, a in zip(target.pad_before, target.pad_after, strict=True)]
    )
    return LayerResult(
        source=layer.source,
        target=layer.target_module,
        source_geometry=plan.source.describe(),
        old_keys=list(located.weights.keys),
        new_keys=new_keys,
        old_shape=list(located.weights.weight.shape),
        new_shape=list(new.weight.shape),
        exact=plan.exact,
        max_abs_error=abs_err,
        max_rel_error=rel_err,
        target_kernel_size=list(target.kernel_size),
        target_padding=target_pad,
        crop=list(plan.crop),
        macs_ratio=plan.macs_ratio,
        dropped_mass=new.dropped_mass,
        weight_norm_folded=located.weights.folded,
    )


def _carry_keys(state: Mapping[str, torch.Tensor], work: _Work, rules: KeyRules) -> dict[str, torch.Tensor]:
    """Every key in order: a converted layer's new entries, else dropped, renamed or copied."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    report = work.report

    def put(new_key: str, value: torch.Tensor, old_key: str) -> None:
        if new_key in out:
            raise SpecError(
                f"keys {origin[new_key]!r} and {old_key!r} would both become {new_key!r}; fix the rename rules"
            )
        out[new_key] = value
        origin[new_key] = old_key

    for key in state:
        if key in work.consumed:
            for new_key, value in work.consumed[key]:
                put(new_key, value, key)
        elif key in work.used:
            continue
        elif rules.dropped(key):
            report.dropped.append(key)
            work.key_map[key] = (None, None)
        else:
            new_key = rules.renamed(key)
            put(new_key, state[key], key)
            if new_key != key:
                report.renamed[key] = new_key
                work.key_map[key] = (new_key, identity)
            else:
                report.copied.append(key)
    return out


def _strip_wrapper_prefix(out: dict[str, torch.Tensor], work: _Work, prefix: str) -> dict[str, torch.Tensor]:
    """Remove a wrapper's prefix (``module.``, ``model.``) that the target model's keys do not carry."""
    report = work.report
    for old, (new, transform) in list(work.key_map.items()):
        work.key_map[old] = (None if new is None else strip_prefix(new, prefix), transform)
    for old in report.copied:
        work.key_map[old] = (strip_prefix(old, prefix), identity)
    report.renamed = {
        **{old: strip_prefix(old, prefix) for old in report.copied if strip_prefix(old, prefix) != old},
        **{old: strip_prefix(new, prefix) for old, new in report.renamed.items()},
    }
    report.copied = [old for old in report.copied if strip_prefix(old, prefix) == old]
    report.notes.append(f"prefix {prefix!r} removed: the target model's keys do not carry it")
    return {strip_prefix(k, prefix): v for k, v in out.items()}


def _match_target(
    out: dict[str, torch.Tensor],
    target: Target,
    work: _Work,
    allow_missing: bool,
    drop_unexpected: bool,
    source_name: str,
) -> dict[str, torch.Tensor]:
    """Check the result against the target model's keys and shapes (a strict load must succeed)."""
    want, report, prefix = target.shapes, work.report, work.report.key_prefix
    if prefix and not (set(out) & set(want)) and {strip_prefix(k, prefix) for k in out} & set(want):
        out = _strip_wrapper_prefix(out, work, prefix)
    for key, value in out.items():
        if key in want and tuple(value.shape) != want[key]:
            raise ConversionError(
                f"{source_name}: {key!r} has shape {tuple(value.shape)} but the target model expects {want[key]}; "
                f"{_shape_cause(tuple(value.shape), want[key])}"
            )
    report.missing = [k for k in want if k not in out]
    report.unexpected = [k for k in out if k not in want]
    if report.unexpected and drop_unexpected:
        for k in report.unexpected:
            report.dropped.append(k)
            del out[k]
        report.unexpected = []
    if (report.missing and not allow_missing) or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} target key(s) missing (first: {report.missing[0]!r})")
        if report.unexpected:
            parts.append(
                f"{len(report.unexpected)} key(s) the target model does not have (first: {report.unexpected[0]!r})"
            )
        raise SpecError(
            f"{source_name}: the result would not load into the target model with strict=True: {'; '.join(parts)}. "
            "Add [rename] rules, or pass allow_missing=True / drop_unexpected=True"
        )
    return out


def _shape_cause(have: tuple[int, ...], want: tuple[int, ...]) -> str:
    if len(have) != len(want):
        return "the ranks differ, so this is probably a different layer type under the same name"
    if have[1:] == want[1:] and want[0] and have[0] % want[0] == 0:
        return f"the first axis is {have[0] // want[0]}x larger: is a pixel shuffle factor missing from the target?"
    return "a rename rule may point this key at the wrong layer, or the target model was built with other arguments"
