"""migrate: match a checkpoint against a target architecture, rewrite, verify, report, write.

``convert_state_dict`` does the work in memory (no files); ``migrate`` wraps it with checkpoint
I/O, optimizer state, the end-to-end model check and the atomic write.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import Checkpoint, load_checkpoint, output_format, save_checkpoint
from .errors import ConversionError, InexactTargetError, SpecError, VerificationError
from .geometry import SubPixelPlan, TargetGeometry, TransposedConv, explain_mismatch, fit, smallest
from .models import TargetConv, guess_input, load_model, source_layers, target_convs
from .nn import clone_module, convert_model, subpixel_forward
from .optimizer import identity, remap_container
from .report import LayerResult, MigrationReport
from .rewrite import WEIGHT_NORM_LAYOUTS, layer_weights, transposed_to_subpixel
from .spec import LayerSpec, Spec, load_spec

KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "model.module.", "module._orig_mod.", "_orig_mod.module.")
DEFAULT_TOLERANCE = 1e-10
E2E_TOLERANCE = 1e-8
_TRANSPOSED_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass
class Target:
    """What is known of the new architecture: its state_dict shapes and sub-pixel convs."""

    shapes: dict[str, tuple[int, ...]]
    convs: dict[str, TargetConv] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module) -> Target:
        return cls({k: tuple(v.shape) for k, v in model.state_dict().items()}, target_convs(model))


def _weight_suffixes() -> list[str]:
    return ["weight"] + [v for _, v in WEIGHT_NORM_LAYOUTS]


def find_prefix(keys: Sequence[str], module: str, source_file: str = "checkpoint") -> str:
    """The prefix (``""``, ``module.``, ``model.``...) under which ``module``'s weight is stored."""
    wanted = [f"{module}.{s}" for s in _weight_suffixes()]
    keyset = set(keys)
    for prefix in ("", *KNOWN_PREFIXES):
        if any(prefix + w in keyset for w in wanted):
            return prefix
    found = sorted({k[: -len(w)] for k in keys for w in wanted if k.endswith("." + w)})
    if len(found) == 1:
        return found[0]  # an unusual wrapper prefix, e.g. "net_g."
    if found:
        raise SpecError(
            f"{source_file}: layer {module!r} matches under several prefixes ({', '.join(found)}); "
            "name the layer by its full path in the spec"
        )
    close = difflib.get_close_matches(f"{module}.weight", list(keys), 3, 0.5)
    hint = f"; closest keys: {', '.join(close)}" if close else ""
    raise SpecError(f"{source_file}: layer {module!r} has no key '{module}.weight' (nor weight-norm keys){hint}")


def _plan_for_layer(layer: LayerSpec, weight: torch.Tensor, conv: TargetConv | None) -> SubPixelPlan:
    rank = weight.dim() - 2
    if rank not in (1, 2, 3):
        raise ConversionError(
            f"layer {layer.source!r}: weight shape {tuple(weight.shape)} is not a ConvTranspose1d/2d/3d weight"
        )
    geo = TransposedConv.make(
        tuple(weight.shape[2:]),
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.dilation,
        layer.groups,
        rank=rank,
    )
    if weight.shape[0] % geo.groups:
        raise ConversionError(f"layer {layer.source!r}: C_in {weight.shape[0]} is not divisible by groups {geo.groups}")
    if layer.target_kernel_size is not None:
        padding = layer.target_padding if layer.target_padding is not None else 0
        return fit(geo, (layer.target_kernel_size, padding))
    if conv is not None:
        return fit(geo, TargetGeometry(conv.kernel_size, conv.padding, conv.padding))
    return smallest(geo)


def _conv_name(rank: int, c_in: int, c_out: int) -> str:
    return f"Conv{rank}d({c_in}, {c_out})"


def _check_target_conv(
    layer: LayerSpec, weight: torch.Tensor, has_bias: bool, plan: SubPixelPlan, conv: TargetConv
) -> None:
    """The two forum mistakes and other mismatches, in plain words."""
    rank = plan.rank
    c_in, c_out = weight.shape[0], weight.shape[1] * plan.source.groups
    R = plan.phases
    r = plan.factors[0] if len(set(plan.factors)) == 1 else plan.factors
    needs = f"ConvTranspose{rank}d({c_in}, {c_out}) needs {_conv_name(rank, c_in, c_out * R)} + PixelShuffle({r})"
    if conv.factors is not None and tuple(conv.factors) != plan.factors:
        raise ConversionError(
            f"layer {layer.source!r}: target {conv.name!r} is followed by a shuffle of {conv.factors}, "
            f"but the layer's stride is {plan.factors}; {needs}"
        )
    if any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        raise ConversionError(f"layer {layer.source!r}: target {conv.name!r} must have stride 1 and dilation 1")
    if conv.in_channels != c_in or conv.out_channels != c_out * R or conv.groups != plan.source.groups:
        cause = ""
        if conv.in_channels == c_in and conv.out_channels == c_out:
            cause = (
                f": the channels were divided by r^2 = {R} (its shuffle yields {c_out // R} channels where the layer "
                f"has {c_out}); multiply instead"
            )
        elif conv.in_channels == c_in and conv.out_channels % R == 0:
            cause = f": its shuffle yields {conv.out_channels // R} channels where the layer has {c_out}"
        elif conv.in_channels != c_in:
            cause = f": input channels differ ({conv.in_channels} vs {c_in}); this is not the layer's counterpart"
        elif conv.groups != plan.source.groups:
            cause = f": groups differ ({conv.groups} vs {plan.source.groups})"
        raise ConversionError(
            f"layer {layer.source!r}: {needs}; target {conv.name!r} is "
            f"{_conv_name(rank, conv.in_channels, conv.out_channels)}{cause}"
        )
    if has_bias and not conv.bias:
        raise ConversionError(
            f"layer {layer.source!r} has a bias but target {conv.name!r} was built with bias=False; "
            "the bias cannot be dropped exactly: build the target conv with bias=True"
        )


def verify_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    plan: SubPixelPlan,
    seed: int = 0,
) -> tuple[float, float]:
    """Run old and new layer in float64 on random input; max abs and relative error."""
    gen = torch.Generator().manual_seed(seed)
    rank = plan.rank
    lengths = [max(3, min(8, k)) for k in plan.source.kernel_size]
    x = torch.randn(1, weight.shape[0], *lengths, dtype=torch.float64, generator=gen)
    geo = plan.source
    with torch.no_grad():
        old = _TRANSPOSED_FN[rank](
            x,
            weight.double(),
            None if bias is None else bias.double(),
            geo.stride,
            geo.padding,
            geo.output_padding,
            geo.groups,
            geo.dilation,
        )
        new = subpixel_forward(x, new_weight.double(), None if new_bias is None else new_bias.double(), plan)
    if old.shape != new.shape:
        return math.inf, math.inf
    abs_err = float((old - new).abs().max()) if old.numel() else 0.0
    scale = float(old.abs().max()) if old.numel() else 0.0
    return abs_err, (abs_err / scale if scale > 0 else abs_err)


@dataclass
class Conversion:
    """The in-memory result: the new state_dict, the report, and how each old key maps."""

    state_dict: dict[str, torch.Tensor]
    report: MigrationReport
    key_map: dict[str, tuple[str | None, Any]]
    converted_keys: set[str]


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
    """Convert the listed layers of ``state`` and carry every other key over (copied/renamed/dropped).

    Raises :class:`InexactTargetError` for an inexact target without ``approx`` and
    :class:`VerificationError` when a converted layer's float64 error exceeds ``tolerance``.
    """
    report = MigrationReport(tolerance=tolerance)
    keys = list(state)
    if not layers:
        raise SpecError(f"{source_name}: no ConvTranspose layers to convert (the spec or source model lists none)")
    prefix = find_prefix(keys, layers[0].source, source_name)
    report.key_prefix = prefix
    consumed: dict[str, list[tuple[str, torch.Tensor]]] = {}  # first old key of a layer -> new entries
    used: set[str] = set()
    key_map: dict[str, tuple[str | None, Any]] = {}
    converted: set[int] = set()  # ids of the new tensors
    for layer in layers:
        p = find_prefix(keys, layer.source, source_name)
        base = f"{p}{layer.source}."
        found = layer_weights(state, p + layer.source)
        if found is None:
            raise SpecError(f"{source_name}: layer {layer.source!r} has no key {base}weight")
        weight, bias, old_keys, weight_norm = found.weight, found.bias, list(found.keys), found.folded
        if any(k in used for k in old_keys):
            raise SpecError(f"layer {layer.source!r} is listed twice")
        conv = None
        target_module = layer.target_module
        if target is not None and target.convs:
            conv = target.convs.get(target_module)
            if conv is None:
                raise SpecError(
                    f"layer {layer.source!r}: the target model has no conv {target_module!r}; "
                    f"its sub-pixel convs are {', '.join(n for n, c in target.convs.items() if c.factors) or 'none'}"
                )
        plan = _plan_for_layer(layer, weight, conv)
        if conv is not None:
            _check_target_conv(layer, weight, bias is not None, plan, conv)
        if plan.short_axes or (plan.outside and not approx):
            raise InexactTargetError(
                f"layer {layer.source!r} ({plan.source.describe()}): "
                f"target conv {plan.target.describe()} is not exact: {explain_mismatch(plan)}"
                + ("" if plan.short_axes else "; or pass --approx to truncate")
            )
        new = transposed_to_subpixel(weight, bias, plan, approx=approx)
        abs_err, rel_err = verify_layer(weight, bias, new.weight, new.bias, plan)
        if plan.exact and not rel_err <= tolerance:
            raise VerificationError(
                f"layer {layer.source!r}: converted output differs by {rel_err:.3g} relative "
                f"(tolerance {tolerance:g}); nothing was written"
            )
        new_base = f"{p}{target_module}."
        entries = [(new_base + "weight", new.weight)]
        if new.bias is not None:
            entries.append((new_base + "bias", new.bias))
        consumed[old_keys[0]] = entries
        used.update(old_keys)
        converted.update(id(t) for _, t in entries)
        w_key = old_keys[0]
        if weight_norm:
            key_map[old_keys[0]] = (new_base + "weight", None)
            key_map[old_keys[1]] = (None, None)
        else:
            key_map[w_key] = (new_base + "weight", _make_transform(plan, "weight"))
        if bias is not None:
            key_map[base + "bias"] = (new_base + "bias", _make_transform(plan, "bias"))
        target_pad: Any = (
            list(plan.target.pad_before)
            if plan.target.symmetric
            else [[b, a] for b, a in zip(plan.target.pad_before, plan.target.pad_after, strict=True)]
        )
        report.layers.append(
            LayerResult(
                source=layer.source,
                target=target_module,
                source_geometry=plan.source.describe(),
                old_keys=old_keys,
                new_keys=[k for k, _ in entries],
                old_shape=list(weight.shape),
                new_shape=list(new.weight.shape),
                exact=plan.exact,
                max_abs_error=abs_err,
                max_rel_error=rel_err,
                target_kernel_size=list(plan.target.kernel_size),
                target_padding=target_pad,
                crop=list(plan.crop),
                macs_ratio=plan.macs_ratio,
                dropped_mass=new.dropped_mass,
                weight_norm_folded=bool(weight_norm),
            )
        )
        if not plan.exact:
            report.notes.append(
                f"{layer.source}: approximated ({new.dropped_taps} source taps dropped, relative weight mass "
                f"{new.dropped_mass:.3g}, output error {rel_err:.3g} relative)"
            )

    rename_re = [(re.compile(pat), repl) for pat, repl in rename]
    drop_re = [re.compile(pat) for pat in drop]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def put(new_key: str, value: torch.Tensor, old_key: str) -> None:
        if new_key in out:
            raise SpecError(
                f"keys {origin[new_key]!r} and {old_key!r} would both become {new_key!r}; fix the rename rules"
            )
        out[new_key] = value
        origin[new_key] = old_key

    for key in keys:
        if key in consumed:
            for new_key, value in consumed[key]:
                put(new_key, value, key)
            continue
        if key in used:
            continue
        if any(r.search(key) for r in drop_re):
            report.dropped.append(key)
            key_map[key] = (None, None)
            continue
        new_key = key
        for pattern, repl in rename_re:
            new_key = pattern.sub(repl, new_key)
        put(new_key, state[key], key)
        if new_key != key:
            report.renamed[key] = new_key
            key_map[key] = (new_key, identity)
        else:
            report.copied.append(key)

    if target is not None:
        out = _match_target(out, target, report, prefix, key_map, allow_missing, drop_unexpected, source_name)
    report.ok = True
    # the converted tensors under whatever names they ended with (a prefix may have been removed)
    converted_keys = {k for k, v in out.items() if id(v) in converted}
    return Conversion(out, report, key_map, converted_keys)


def _make_transform(plan: SubPixelPlan, which: str) -> Any:
    def weight(t: torch.Tensor) -> torch.Tensor:
        return transposed_to_subpixel(t, None, plan, approx=True).weight

    def bias(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(plan.phases)

    return weight if which == "weight" else bias


def _match_target(
    out: dict[str, torch.Tensor],
    target: Target,
    report: MigrationReport,
    prefix: str,
    key_map: dict[str, tuple[str | None, Any]],
    allow_missing: bool,
    drop_unexpected: bool,
    source_name: str,
) -> dict[str, torch.Tensor]:
    want = target.shapes

    def strip(key: str) -> str:
        return key[len(prefix) :] if key.startswith(prefix) else key

    if prefix and not (set(out) & set(want)) and {strip(k) for k in out} & set(want):
        # the checkpoint's keys carry a wrapper's prefix (module., model.) that the target model's do not
        for old, (new, transform) in list(key_map.items()):
            key_map[old] = (None if new is None else strip(new), transform)
        for old in report.copied:
            key_map[old] = (strip(old), identity)
        report.renamed = {
            **{old: strip(old) for old in report.copied if strip(old) != old},
            **{old: strip(new) for old, new in report.renamed.items()},
        }
        report.copied = [old for old in report.copied if strip(old) == old]
        report.notes.append(f"prefix {prefix!r} removed: the target model's keys do not carry it")
        out = {strip(k): v for k, v in out.items()}
    for key, value in out.items():
        if key in want and tuple(value.shape) != want[key]:
            raise ConversionError(
                f"{source_name}: {key!r} has shape {tuple(value.shape)} but the target model expects {want[key]}; "
                f"{_shape_cause(key, tuple(value.shape), want[key])}"
            )
    report.missing = [k for k in want if k not in out]
    report.unexpected = [k for k in out if k not in want]
    if report.unexpected and drop_unexpected:
        for k in report.unexpected:
            report.dropped.append(k)
            del out[k]
        report.unexpected = []
    if report.missing and not allow_missing or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} target key(s) missing (first: {report.missing[0]!r})")
        if report.unexpected:
            parts.append(
                f"{len(report.unexpected)} key(s) the target model does not have (first: {report.unexpected[0]!r})"
            )
        raise SpecError(
            f"{source_name}: the result would not load into the target model with strict=True: {'; '.join(parts)}. "
            "Add [rename] rules, or --allow-missing / --drop-unexpected"
        )
    return out


def _shape_cause(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str:
    if len(have) != len(want):
        return "the ranks differ, so this is probably a different layer type under the same name"
    if have[1:] == want[1:] and want[0] and have[0] % want[0] == 0:
        return f"the first axis is {have[0] // want[0]}x larger: is a pixel shuffle factor missing from the target?"
    return "a rename rule may point this key at the wrong layer, or the target model was built with other arguments"


# --------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Where the layer list and the target come from (spec file, models, or both)."""

    spec: Spec | None = None
    source_model: nn.Module | None = None
    target_model: nn.Module | None = None
    _target: Target | None = field(default=None, repr=False, compare=False)

    def target(self) -> Target | None:
        """The target model's shapes and convs, traced once."""
        if self.target_model is None:
            return None
        if self._target is None:
            self._target = Target.from_model(self.target_model)
        return self._target

    def layers(self) -> list[LayerSpec]:
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
                "add --source-model or --spec (write one with `deconv2shuffle spec`)"
            )
        raise SpecError(
            "nothing says which layers are ConvTranspose or their stride and padding (a checkpoint alone cannot); "
            "give --spec SPEC.toml, or --source-model REF (and --target-model REF); "
            "`deconv2shuffle spec CKPT` drafts a spec from guesses to check"
        )


def pair_layers(
    layers: list[LayerSpec], source: nn.Module, target: nn.Module | dict[str, TargetConv]
) -> list[LayerSpec]:
    """Pair each source ConvTranspose with its target conv: by name, else by order and channels.

    ``target`` is the target model, or its :func:`target_convs` when already traced."""
    convs = target if isinstance(target, dict) else target_convs(target)
    paired: dict[int, str] = {}
    for i, layer in enumerate(layers):
        for name in (f"{layer.source}.conv", layer.source):
            if name in convs:
                paired[i] = name
                break
    free_convs = [c for n, c in convs.items() if c.factors and n not in paired.values()]
    rest = [i for i in range(len(layers)) if i not in paired]
    if rest:
        src_mods = dict(source.named_modules())

        def fits(i: int, c: TargetConv) -> bool:
            m = src_mods[layers[i].source]
            return bool(c.in_channels == m.in_channels and c.factors and len(c.factors) == len(m.kernel_size))

        if len(rest) == len(free_convs) and all(fits(i, c) for i, c in zip(rest, free_convs, strict=True)):
            for i, c in zip(rest, free_convs, strict=True):
                paired[i] = c.name
        else:
            for i in rest:
                options = [c for c in free_convs if fits(i, c)]
                if len(options) != 1:
                    names = ", ".join(c.name for c in options) or "none"
                    raise SpecError(
                        f"cannot pair source layer {layers[i].source!r} with a target conv (candidates: {names}); "
                        "write a spec: deconv2shuffle spec --source-model ... --target-model ... > spec.toml"
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
    loaded = load_spec(spec) if spec else None
    if loaded is not None and loaded.models:
        # models named in the spec ([models]) apply unless given on the command line
        if source_model is None and loaded.model_ref("source"):
            source_model, source_args = loaded.model_ref("source"), loaded.models.get("source_args")
        if target_model is None and loaded.model_ref("target"):
            target_model, target_args = loaded.model_ref("target"), loaded.models.get("target_args")
    return Sources(
        spec=loaded,
        source_model=load_model(source_model, source_args, what="source-model") if source_model else None,
        target_model=load_model(target_model, target_args, what="target-model") if target_model else None,
    )


def _strip(state: Mapping[str, torch.Tensor], prefix: str, model: nn.Module) -> dict[str, torch.Tensor]:
    keys = set(model.state_dict())
    if prefix and not (set(state) & keys):
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
    return dict(state)


def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    try:
        shape = tuple(int(v) for v in re.split(r"[,x ]+", text.strip()) if v)
    except ValueError:
        raise SpecError(f"--input-shape {text!r}: expected integers like 1,64,32,32") from None
    if not shape or any(v < 1 for v in shape):
        raise SpecError(f"--input-shape {text!r}: expected positive integers like 1,64,32,32")
    return shape


def _load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, error: type[Exception], what: str
) -> None:
    try:
        model.load_state_dict(_strip(state, prefix, model), strict=True)
    except RuntimeError as e:
        raise error(f"{what}: {' '.join(str(e).split())[:300]}") from None


def end_to_end(
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    source_model: nn.Module | None,
    target_model: nn.Module | None,
    prefix: str,
    input_shape: tuple[int, ...] | None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Load both states into their models (strict) and compare outputs on one random input, float64."""
    if source_model is None:
        return None
    old_model = clone_module(source_model).double().eval()
    _load_strict(old_model, old_state, prefix, SpecError, "the old checkpoint does not load into --source-model")
    new_model = (
        clone_module(target_model).double().eval()
        if target_model is not None
        else convert_model(old_model, geometry="symmetric")  # the form _plan_for_layer writes
    )
    _load_strict(
        new_model, new_state, prefix, VerificationError, "the new checkpoint does not load into the target model"
    )
    shape = input_shape or guess_input(old_model)
    if shape is None:
        return {"skipped": "no input shape; pass --input-shape"}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        try:
            want, got = old_model(x), new_model(x)
        except Exception as e:
            raise SpecError(
                f"running the models on input {shape} failed ({type(e).__name__}: {e}); pass --input-shape"
            ) from None
    want_t = want if isinstance(want, torch.Tensor) else torch.cat([w.flatten() for w in want])
    got_t = got if isinstance(got, torch.Tensor) else torch.cat([g.flatten() for g in got])
    if want_t.shape != got_t.shape:
        raise VerificationError(f"end-to-end: old model output {tuple(want_t.shape)} vs new {tuple(got_t.shape)}")
    abs_err = float((want_t - got_t).abs().max())
    scale = float(want_t.abs().max()) or 1.0
    return {"input_shape": list(shape), "max_abs_error": abs_err, "max_rel_error": abs_err / scale, "dtype": "float64"}


def migrate(
    src: str | Path,
    dst: str | Path | None,
    *,
    sources: Sources,
    approx: bool = False,
    rename: Sequence[tuple[str, str]] = (),
    drop: Sequence[str] = (),
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    input_shape: str | Sequence[int] | None = None,
    allow_missing: bool = False,
    drop_unexpected: bool = False,
    report_path: str | Path | None = None,
    hash_source: bool = True,
) -> MigrationReport:
    """Convert checkpoint ``src`` into ``dst`` (``None``: check only, write nothing). See the module doc."""
    src = Path(src)
    ckpt = load_checkpoint(src, state_dict_key=state_dict_key, trust_pickle=trust_pickle)
    source_hash = None
    if dst is not None:
        from .checkpoint import check_output

        check_output(Path(dst), ckpt.files, force)
        if hash_source and output_format(Path(dst)) != "torch-zip":
            source_hash = ckpt.sha256_later()  # hashed in a thread while the rest of the work runs
    spec = sources.spec
    target = sources.target()
    conversion = convert_state_dict(
        ckpt.state_dict,
        sources.layers(),
        target=target,
        rename=[*(spec.rename if spec else []), *rename],
        drop=[*(spec.drop if spec else []), *drop],
        approx=approx,
        tolerance=tolerance,
        allow_missing=allow_missing,
        drop_unexpected=drop_unexpected,
        source_name=str(src),
    )
    report = conversion.report
    report.source_file, report.source_format = str(src), ckpt.format
    report.state_dict_key, report.state_dict_candidates = ckpt.state_key, ckpt.candidates
    if ckpt.passthrough:
        kept = "kept" if dst is None or output_format(Path(dst)) == "torch-zip" else "could not write (safetensors)"
        report.notes.append(f"{kept} {len(ckpt.passthrough)} non-tensor entries: {', '.join(ckpt.passthrough)}")
    shape = parse_shape(input_shape)
    if shape is None and spec is not None and spec.models.get("input_shape"):
        shape = parse_shape(spec.models["input_shape"])
    if report.missing or (drop_unexpected and target is not None and any(k in report.dropped for k in ckpt.state_dict)):
        report.notes.append("end-to-end check skipped: the target model does not have the same layers as the source")
        sources = Sources(sources.spec, None, None)
    e2e = end_to_end(
        ckpt.state_dict, conversion.state_dict, sources.source_model, sources.target_model, report.key_prefix, shape
    )
    if e2e is not None:
        report.end_to_end = e2e
        e2e_tol = max(E2E_TOLERANCE, tolerance)
        folded = [x for x in report.layers if x.weight_norm_folded]
        if folded:
            # the fold g * v / ||v|| is computed in the stored dtype, exactly as the old model's own forward
            # computes it; against a float64 run of the old model that rounding shows at the dtype's epsilon
            eps = max(torch.finfo(ckpt.state_dict[k].dtype).eps for x in folded for k in x.old_keys[:1])
            e2e_tol = max(e2e_tol, 16 * eps)
            report.notes.append(
                f"weight norm folded in {ckpt.state_dict[folded[0].old_keys[0]].dtype} (as the old model computes it); "
                f"end-to-end tolerance {e2e_tol:.2g}"
            )
        e2e["tolerance"] = e2e_tol
        if "max_rel_error" in e2e and not e2e["max_rel_error"] <= e2e_tol and not approx:
            report.ok = False
            raise VerificationError(
                f"end-to-end: new model differs from old by {e2e['max_rel_error']:.3g} relative; nothing was written"
            )
    updates: dict[str, Any] = {}
    if ckpt.container is not None and ckpt.state_key is not None and isinstance(ckpt.container, dict):
        buffers = {n for n, _ in sources.source_model.named_buffers()} if sources.source_model is not None else set()
        updates, note = remap_container(
            ckpt.container, ckpt.state_dict, conversion.state_dict, conversion.key_map, buffers
        )
        report.optimizer = note
    if dst is not None:
        dst = Path(dst)
        report.output_file, report.output_format = str(dst), output_format(dst)
        if report.output_format != "torch-zip" and ckpt.container is not None and ckpt.state_key is not None:
            others = [k for k in ckpt.container if k != ckpt.state_key]
            if others:
                report.notes.append(
                    f"safetensors holds tensors only: container entries {', '.join(map(str, others))} were not written "
                    "(write a .pth/.ckpt output to keep them)"
                )
        if report.output_format == "torch-zip" and ckpt.metadata:
            report.notes.append(
                f"safetensors metadata ({', '.join(sorted(ckpt.metadata))}) has no place in a torch file and was not "
                "written (write a .safetensors output to keep it)"
            )
        metadata: dict[str, Any] = {}
        if report.output_format != "torch-zip":
            metadata = {
                "deconv2shuffle.version": __version__,
                **({"deconv2shuffle.source_sha256": source_hash} if source_hash is not None else {}),
                "deconv2shuffle.converted": json.dumps([f"{x.source}->{x.target}" for x in report.layers]),
            }
        written = save_checkpoint(
            dst,
            conversion.state_dict,
            like=ckpt,
            container_updates=updates,
            metadata=metadata,
            force=force,
            check_values=lambda key: key in conversion.converted_keys,
        )
        report.written = [str(p) for p in written]
    report.ok = True
    if report_path is not None:
        report.write(report_path)
    return report


def plan_layer(layer: LayerSpec, weight: torch.Tensor) -> SubPixelPlan:
    """The plan a spec layer gets for a weight (for inspect / explain)."""
    return _plan_for_layer(layer, weight, None)


__all__ = ["Checkpoint", "Conversion", "Sources", "Target", "convert_state_dict", "load_sources", "migrate"]
