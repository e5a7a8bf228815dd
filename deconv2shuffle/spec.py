"""Spec files: which ConvTranspose layers to convert, their hyperparameters, and key renames.

```toml
version = 1
drop = ["^loss\\."]         # optional: regexes of keys to leave out (before any table)
[[layers]]
source = "decoder.up"       # module path of the ConvTranspose in the old checkpoint (required)
target = "decoder.up.conv"  # module path of the Conv in the new one (default "<source>.conv")
stride = 2                  # int or one per spatial axis (required)
padding = 1                 # also output_padding, dilation, groups
target_kernel_size = 3      # optional; omitted = the smallest exact kernel
target_padding = 1          # optional
[rename]                    # regex -> replacement, in order, for every other key
"^backbone\\." = "encoder."
```
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IntOrTuple = int | tuple[int, ...]

LAYER_KEYS = {
    "source": str,
    "target": str,
    "stride": "int",
    "padding": "int",
    "output_padding": "int",
    "dilation": "int",
    "groups": int,
    "target_kernel_size": "int",
    "target_padding": "int",
}
TOP_KEYS = {"version", "layers", "rename", "drop", "models"}
MODEL_KEYS = {"source", "target", "source_args", "target_args", "input_shape"}


@dataclass(frozen=True)
class LayerSpec:
    """One ConvTranspose layer to convert."""

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

    @property
    def target_module(self) -> str:
        return self.target if self.target is not None else f"{self.source}.conv"


@dataclass
class Spec:
    layers: list[LayerSpec] = field(default_factory=list)
    rename: list[tuple[str, str]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    path: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)

    def model_ref(self, which: str) -> str | None:
        """``[models] source/target``, with a relative file path taken from the spec's folder."""
        ref = self.models.get(which)
        if not ref:
            return None
        where, _, name = str(ref).rpartition(":")
        if where.endswith(".py") and self.path is not None and not Path(where).is_absolute():
            return f"{self.path.parent / where}:{name}"
        return str(ref)

    def to_toml(self) -> str:
        return dump_spec(self)


def _where(path: Path | str, line: int | None, key: str) -> str:
    return f"{path}:{line}: {key}" if line else f"{path}: {key}"


def _layer_lines(text: str) -> list[int]:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*layers\s*\]\]", ln)]


def _check_int(value: Any, where: str, minimum: int) -> IntOrTuple:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise SpecError(f"{where} must be an integer or a list of integers, got {value!r}")
    if isinstance(value, list):
        if not 1 <= len(value) <= 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError(f"{where} must be an integer or a list of 1 to 3 integers, got {value!r}")
        if any(v < minimum for v in value):
            raise SpecError(f"{where} must be >= {minimum}, got {value!r}")
        return tuple(value)
    if value < minimum:
        raise SpecError(f"{where} must be >= {minimum}, got {value!r}")
    return value


def parse_spec(text: str, path: Path | str = "<spec>") -> Spec:
    """Parse and validate spec text; every message names the file, the line and the key at fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        hint = difflib.get_close_matches(key, TOP_KEYS, 1)
        raise SpecError(f"{path}: unknown top-level key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    version = data.get("version", 1)
    if version != 1:
        raise SpecError(f"{path}: version = {version!r} is not supported (this tool reads version = 1)")
    layers_raw = data.get("layers", [])
    if not isinstance(layers_raw, list):
        raise SpecError(f"{path}: 'layers' must be an array of tables ([[layers]])")
    lines = _layer_lines(text)
    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(layers_raw):
        line = lines[i] if i < len(lines) else None
        name = f"layers[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{_where(path, line, name)} must be a table")
        for key in raw:
            if key not in LAYER_KEYS:
                hint = difflib.get_close_matches(key, LAYER_KEYS, 1)
                raise SpecError(
                    f"{_where(path, line, f'{name}.{key}')}: unknown key"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
        if "source" not in raw:
            raise SpecError(f"{_where(path, line, f'{name}.source')} is required (module path of the ConvTranspose)")
        if "stride" not in raw:
            raise SpecError(
                f"{_where(path, line, f'{name}.stride')} is required: "
                f"a checkpoint cannot tell the stride of layer {raw['source']!r}"
            )
        for key in ("source", "target"):
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                raise SpecError(f"{_where(path, line, f'{name}.{key}')} must be a non-empty string")
        src = raw["source"]
        if src in seen:
            raise SpecError(
                f"{_where(path, line, f'{name}.source')}: {src!r} is listed twice (also layers[{seen[src]}])"
            )
        seen[src] = i
        kwargs: dict[str, Any] = {"source": src, "target": raw.get("target"), "line": line}
        minimums = {
            "stride": 1,
            "dilation": 1,
            "target_kernel_size": 1,
            "padding": 0,
            "output_padding": 0,
            "target_padding": 0,
        }
        for key, minimum in minimums.items():
            if key in raw:
                kwargs[key] = _check_int(raw[key], _where(path, line, f"{name}.{key}"), minimum)
        if "groups" in raw:
            g = raw["groups"]
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise SpecError(f"{_where(path, line, f'{name}.groups')} must be an integer >= 1, got {g!r}")
            kwargs["groups"] = g
        if ("target_padding" in raw) and ("target_kernel_size" not in raw):
            raise SpecError(f"{_where(path, line, f'{name}.target_padding')} needs target_kernel_size too")
        layers.append(LayerSpec(**kwargs))
    rename_raw = data.get("rename", {})
    if not isinstance(rename_raw, dict):
        raise SpecError(f'{path}: [rename] must be a table of "regex" = "replacement"')
    rename: list[tuple[str, str]] = []
    for pattern, repl in rename_raw.items():
        if not isinstance(repl, str):
            raise SpecError(f"{path}: rename[{pattern!r}] must be a string replacement")
        _compile(pattern, f"{path}: rename key {pattern!r}")
        rename.append((pattern, repl))
    drop = data.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(d, str) for d in drop):
        raise SpecError(f"{path}: drop must be a list of regex strings")
    for pattern in drop:
        _compile(pattern, f"{path}: drop pattern {pattern!r}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise SpecError(f"{path}: [models] must be a table with source / target model references")
    for key, value in models.items():
        if key not in MODEL_KEYS:
            hint = difflib.get_close_matches(key, MODEL_KEYS, 1)
            raise SpecError(f"{path}: models.{key}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if key in ("source", "target") and (not isinstance(value, str) or ":" not in value):
            raise SpecError(f"{path}: models.{key} must be 'package.module:Name' or 'file.py:Name', got {value!r}")
        if key.endswith("_args") and not isinstance(value, dict):
            raise SpecError(f"{path}: models.{key} must be a table of constructor arguments")
        if key == "input_shape" and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            raise SpecError(f"{path}: models.input_shape must be a list of integers")
    return Spec(
        layers=layers, rename=rename, drop=list(drop), path=Path(path) if path != "<spec>" else None, models=models
    )


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SpecError(f"{where} is not a valid regular expression ({e})") from None


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec ({e})") from None
    return parse_spec(text, path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (int, float)):
        return repr(value)
    raise SpecError(f"cannot write {value!r} ({type(value).__name__}) into a spec")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _compact(value: IntOrTuple) -> IntOrTuple:
    if isinstance(value, tuple) and len(set(value)) == 1:
        return value[0]
    return value


def dump_spec(spec: Spec, comments: Sequence[str] = ()) -> str:
    """TOML text for ``spec`` (what ``deconv2shuffle spec`` prints); parse_spec reads it back."""
    out = [f"# {c}" for c in comments]
    out.append("version = 1")
    if spec.drop:
        out.append(f"drop = [{', '.join(_toml_value(d) for d in spec.drop)}]")
    for layer in spec.layers:
        out += [
            "",
            "[[layers]]",
            f"source = {_toml_value(layer.source)}",
            f"target = {_toml_value(layer.target_module)}",
        ]
        out.append(f"stride = {_toml_value(_compact(layer.stride))}")
        for key, default in (("padding", 0), ("output_padding", 0), ("dilation", 1), ("groups", 1)):
            value = _compact(getattr(layer, key))
            if value != default:
                out.append(f"{key} = {_toml_value(value)}")
        if layer.target_kernel_size is not None:
            out.append(f"target_kernel_size = {_toml_value(_compact(layer.target_kernel_size))}")
        if layer.target_padding is not None:
            out.append(f"target_padding = {_toml_value(_compact(layer.target_padding))}")
    if spec.models:
        out += ["", "[models]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.models.items()]
    if spec.rename:
        out += ["", "[rename]"] + [f"{_toml_value(p)} = {_toml_value(r)}" for p, r in spec.rename]
    return "\n".join(out) + "\n"
