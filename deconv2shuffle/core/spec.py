"""Spec files: which ConvTranspose layers to convert, their hyperparameters, and key renames.

```toml
version = 1
drop = ["^loss\\."]         # optional: regexes of keys to leave out (before any table)
[[layers]]
source = "decoder.up"       # module path of the ConvTranspose in the old checkpoint (required)
target = "decoder.up.conv"  # module path of the Conv in the new one (default "<source>.conv")
stride = 2                  # int or one per spatial axis (required)
padding = 1                 # also output_padding, dilation, groups
target_kernel_size = 3      # optional; omitted = the cheapest exact conv (see geometry)
target_padding = 1          # optional
geometry = "minimal"        # optional, also top-level: "minimal" (default), "tight" or "symmetric"
[rename]                    # regex -> replacement, in order, for every other key
"^backbone\\." = "encoder."
```
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import SpecError
from .bounds import MAX_GROUPS, MAX_PHASES, MAX_TAPS, IntOrTuple, check_input_shape, check_int, product, short
from .keys import compile_pattern, compile_rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


LAYER_KEYS = (
    "source",
    "target",
    "stride",
    "padding",
    "output_padding",
    "dilation",
    "groups",
    "target_kernel_size",
    "target_padding",
    "geometry",
    "guessed",
)
TOP_KEYS = ("version", "geometry", "layers", "rename", "drop", "models")
GEOMETRIES = ("minimal", "tight", "symmetric")
MODEL_KEYS = ("source", "target", "source_args", "target_args", "input_shape", "example_inputs")
_MINIMUMS = {
    "stride": 1,
    "dilation": 1,
    "target_kernel_size": 1,
    "padding": 0,
    "output_padding": 0,
    "target_padding": 0,
}


@dataclass(frozen=True)
class LayerSpec:
    """One ConvTranspose layer to convert: where it is, its hyperparameters, and its target conv."""

    source: str
    stride: IntOrTuple
    target: str | None = None
    padding: IntOrTuple = 0
    output_padding: IntOrTuple = 0
    dilation: IntOrTuple = 1
    groups: int = 1
    target_kernel_size: IntOrTuple | None = None
    target_padding: IntOrTuple | None = None
    line: int | None = None
    geometry: str | None = None
    guessed: bool = False  # a draft's guess from a checkpoint alone, not yet confirmed by the user

    @property
    def target_module(self) -> str:
        """Module path of the target conv (``"<source>.conv"`` unless the spec names one)."""
        return self.target if self.target is not None else f"{self.source}.conv"


@dataclass
class Spec:
    """A parsed spec file: layers, key rules, and optional model references."""

    layers: list[LayerSpec] = field(default_factory=list)
    rename: list[tuple[str, str]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    path: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)

    def model_ref(self, which: str) -> str | None:
        """``[models] source/target/example_inputs``, with a relative file path taken from the spec's folder."""
        ref = self.models.get(which)
        if not ref:
            return None
        where, _, name = str(ref).rpartition(":")
        if where.endswith(".py") and self.path is not None and not Path(where).is_absolute():
            return f"{self.path.parent / where}:{name}"
        if which == "example_inputs" and not where and self.path is not None and not Path(name).is_absolute():
            return str(self.path.parent / name)  # a file of example tensors
        return str(ref)

    def to_toml(self) -> str:
        """The spec as TOML text (see :func:`dump_spec`)."""
        return dump_spec(self)


def _where(path: Path | str, line: int | None, key: str) -> str:
    return f"{path}:{line}: {key}" if line else f"{path}: {key}"


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(key, list(known), 1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


class _Lines:
    """Where things are in the spec text, so messages can name the line of the key at fault."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.layers = [i + 1 for i, ln in enumerate(self.lines) if re.match(r"\s*\[\[\s*layers\s*\]\]", ln)]

    def header(self, name: str) -> int | None:
        """The line of ``[name]``, if the text has one."""
        pattern = re.compile(rf"\s*\[\s*{re.escape(name)}\s*\]")
        return next((i + 1 for i, ln in enumerate(self.lines) if pattern.match(ln)), None)

    def key(self, start: int | None, key: str) -> int | None:
        """The line of ``key = ...`` in the table whose header is on line ``start`` (``None``:
        before the first table); else ``start``."""
        pattern = re.compile(rf"\s*(\"?|'?){re.escape(key)}\1\s*=")
        for i in range(start or 0, len(self.lines)):
            line = self.lines[i]
            if line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return i + 1
        return start


def parse_spec(text: str, path: Path | str = "<spec>") -> Spec:
    """Parse and validate spec text; every message names the file, the line and the key at fault.

    Args:
        text: the TOML text.
        path: the file it came from (messages name it; a relative ``[models]`` file path is read
            from its folder).

    Returns:
        The validated :class:`Spec`.

    Raises:
        SpecError: invalid TOML, an unknown or mistyped key, a bad value or regular expression.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from None
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(f"{path}: unknown top-level key {key!r}{_did_you_mean(key, TOP_KEYS)}")
    version = data.get("version", 1)
    if version != 1:
        raise SpecError(f"{path}: version = {version!r} is not supported (this tool reads version = 1)")
    geometry = _check_geometry(data.get("geometry"), f"{path}: geometry")
    lines = _Lines(text)
    layers = _parse_layers(data.get("layers", []), lines, path)
    return Spec(
        layers=[replace(x, geometry=x.geometry or geometry) for x in layers],
        rename=_parse_rename(data.get("rename", {}), lines, path),
        drop=_parse_drop(data.get("drop", []), lines, path),
        path=Path(path) if path != "<spec>" else None,
        models=_parse_models(data.get("models", {}), lines, path),
    )


def _parse_layers(layers_raw: Any, lines: _Lines, path: Path | str) -> list[LayerSpec]:
    if not isinstance(layers_raw, list):
        raise SpecError(f"{path}: 'layers' must be an array of tables ([[layers]])")
    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(layers_raw):
        layer = _parse_layer(raw, i, lines, path)
        if layer.source in seen:
            where = _where(path, layer.line, f"layers[{i}].source")
            raise SpecError(f"{where}: {layer.source!r} is listed twice (also layers[{seen[layer.source]}])")
        seen[layer.source] = i
        layers.append(layer)
    return layers


def _parse_layer(raw: Any, i: int, lines: _Lines, path: Path | str) -> LayerSpec:
    name = f"layers[{i}]"
    line = lines.layers[i] if i < len(lines.layers) else None

    def where(key: str) -> str:
        return _where(path, lines.key(line, key) if line else None, f"{name}.{key}")

    if not isinstance(raw, dict):
        raise SpecError(f"{_where(path, line, name)} must be a table")
    for key in raw:
        if key not in LAYER_KEYS:
            raise SpecError(f"{where(key)}: unknown key{_did_you_mean(key, LAYER_KEYS)}")
    if "source" not in raw:
        raise SpecError(f"{where('source')} is required (module path of the ConvTranspose)")
    if "stride" not in raw:
        raise SpecError(
            f"{where('stride')} is required: a checkpoint cannot tell the stride of layer {raw['source']!r}"
        )
    for key in ("source", "target"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise SpecError(f"{where(key)} must be a non-empty string")
    kwargs: dict[str, Any] = {"source": raw["source"], "target": raw.get("target"), "line": line}
    for key, minimum in _MINIMUMS.items():
        if key in raw:
            kwargs[key] = check_int(raw[key], where(key), minimum)
    for key, limit in (("stride", MAX_PHASES), ("target_kernel_size", MAX_TAPS)):
        if key in kwargs and product(kwargs[key]) > limit:
            raise SpecError(f"{where(key)}: the product over the axes must be <= {limit}, got {short(raw[key])}")
    _check_output_padding(kwargs, where("output_padding"))
    if "groups" in raw:
        g = raw["groups"]
        if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= MAX_GROUPS:
            raise SpecError(f"{where('groups')} must be an integer from 1 to {MAX_GROUPS}, got {short(g)}")
        kwargs["groups"] = g
    if "target_padding" in raw and "target_kernel_size" not in raw:
        raise SpecError(f"{where('target_padding')} needs target_kernel_size too")
    if "geometry" in raw and "target_kernel_size" in raw:
        raise SpecError(f"{where('geometry')}: give geometry or target_kernel_size, not both")
    kwargs["geometry"] = _check_geometry(raw.get("geometry"), where("geometry"))
    if not isinstance(raw.get("guessed", False), bool):
        raise SpecError(f"{where('guessed')} must be true or false (delete it once the layer is checked)")
    kwargs["guessed"] = raw.get("guessed", False)
    return LayerSpec(**kwargs)


def _check_geometry(value: Any, where: str) -> str | None:
    if value is not None and value not in GEOMETRIES:
        raise SpecError(f"{where} must be one of {', '.join(map(repr, GEOMETRIES))}, got {value!r}")
    return value  # type: ignore[no-any-return]


def _check_output_padding(kwargs: dict[str, Any], where: str) -> None:
    """output_padding must be smaller than the stride or the dilation, on every axis (as in PyTorch)."""
    if "output_padding" not in kwargs:
        return
    axes = (kwargs["output_padding"], kwargs["stride"], kwargs.get("dilation", 1))
    n = max(len(v) if isinstance(v, tuple) else 1 for v in axes)
    per_axis = [v if isinstance(v, tuple) else (v,) * n for v in axes]
    if any(len(v) != n for v in per_axis):
        return  # differing axis counts are reported where the layer meets its weight
    for op, stride, dilation in zip(*per_axis, strict=True):
        if op >= stride and op >= dilation:
            raise SpecError(
                f"{where} = {short(kwargs['output_padding'])} must be smaller than the stride or the dilation"
            )


def _parse_rename(rename_raw: Any, lines: _Lines, path: Path | str) -> list[tuple[str, str]]:
    start = lines.header("rename")
    if not isinstance(rename_raw, dict):
        raise SpecError(f'{_where(path, start, "rename")} must be a table of "regex" = "replacement"')
    rename: list[tuple[str, str]] = []
    for pattern, repl in rename_raw.items():
        at = _where(path, lines.key(start, pattern) if start else None, f"rename[{pattern!r}]")
        if not isinstance(repl, str):
            raise SpecError(f"{at} must be a string replacement")
        compile_rule(pattern, repl, at, SpecError)
        rename.append((pattern, repl))
    return rename


def _parse_drop(drop: Any, lines: _Lines, path: Path | str) -> list[str]:
    at = _where(path, lines.key(None, "drop"), "drop")
    if not isinstance(drop, list) or not all(isinstance(d, str) for d in drop):
        raise SpecError(f"{at} must be a list of regex strings")
    for pattern in drop:
        compile_pattern(pattern, f"{at} pattern", SpecError)
    return list(drop)


def _parse_models(models: Any, lines: _Lines, path: Path | str) -> dict[str, Any]:
    start = lines.header("models")
    if not isinstance(models, dict):
        raise SpecError(f"{_where(path, start, 'models')} must be a table with source / target model references")
    for key, value in models.items():
        at = _where(path, lines.key(start, key) if start else None, f"models.{key}")
        if key not in MODEL_KEYS:
            raise SpecError(f"{at}: unknown key{_did_you_mean(key, MODEL_KEYS)}")
        if key in ("source", "target") and (not isinstance(value, str) or ":" not in value):
            raise SpecError(f"{at} must be 'package.module:Name' or 'file.py:Name', got {short(value)}")
        if key.endswith("_args") and not isinstance(value, dict):
            raise SpecError(f"{at} must be a table of constructor arguments")
        if key == "input_shape":
            check_input_shape(value, at)
        if key == "example_inputs" and (not isinstance(value, str) or not value):
            raise SpecError(f"{at} must be a file of tensors or 'file.py:make_inputs', got {short(value)}")
    return models


def load_spec(path: str | Path) -> Spec:
    """Read and parse a spec file.

    Args:
        path: the ``.toml`` file.

    Returns:
        The validated :class:`Spec` (its ``path`` set, so ``[models]`` file paths resolve).

    Raises:
        SpecError: the file is missing, unreadable, or invalid (see :func:`parse_spec`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec ({e})") from None
    return parse_spec(text, path)


def _compact(value: IntOrTuple) -> int | list[int]:
    """One value for every axis when they agree, else a list (TOML has no tuples)."""
    if isinstance(value, tuple):
        return value[0] if len(set(value)) == 1 else list(value)
    return value


def _layer_table(layer: LayerSpec) -> dict[str, Any]:
    table: dict[str, Any] = {"source": layer.source, "target": layer.target_module, "stride": _compact(layer.stride)}
    for key, default in (("padding", 0), ("output_padding", 0), ("dilation", 1), ("groups", 1)):
        value = _compact(getattr(layer, key))
        if value != default:
            table[key] = value
    if layer.target_kernel_size is not None:
        table["target_kernel_size"] = _compact(layer.target_kernel_size)
    if layer.target_padding is not None:
        table["target_padding"] = _compact(layer.target_padding)
    if layer.geometry is not None:
        table["geometry"] = layer.geometry
    if layer.guessed:
        table["guessed"] = True
    return table


def _dumps(data: dict[str, Any]) -> str:
    try:
        return tomli_w.dumps(data)
    except TypeError as e:
        raise SpecError(f"cannot write this spec as TOML ({e})") from None


def dump_spec(spec: Spec, comments: Sequence[str] = ()) -> str:
    """TOML text for ``spec`` (what ``deconv2shuffle spec`` prints); :func:`parse_spec` reads it back.

    Args:
        spec: the spec to write.
        comments: lines written first, each as a ``#`` comment.

    Returns:
        The TOML text, written by ``tomli-w`` (any Unicode in keys and rules round-trips).

    Raises:
        SpecError: a ``[models]`` value TOML cannot hold.
    """
    # every key and value is written by tomli-w; the [[layers]] headers are spelled out because
    # tomli-w would inline short tables, and parse_spec names each layer by its header's line
    top: dict[str, Any] = {"version": 1}
    if spec.drop:
        top["drop"] = list(spec.drop)
    parts = [_dumps(top)]
    parts += [f"[[layers]]\n{_dumps(_layer_table(layer))}" for layer in spec.layers]
    if spec.models:
        parts.append(_dumps({"models": dict(spec.models)}))
    if spec.rename:
        parts.append(_dumps({"rename": dict(spec.rename)}))
    text = "\n".join(parts)
    head = "".join(f"# {line}\n" for c in comments for line in (c.splitlines() or [""]))
    return head + text
