"""Example inputs for running a model end to end: positional ``args`` and keyword ``kwargs``.

Many models take more than one tensor: a diffusion UNet takes ``(sample, timestep)``, a
conditional model a tensor and keyword tensors. Example inputs come from one of:

* a **file** of tensors, ``.pt``/``.pth`` (read with ``weights_only=True``) or ``.safetensors``.
  Keys name where each tensor goes: ``args.0``, ``args.1``, ... are positional arguments in
  order, ``kwargs.NAME`` is the keyword argument ``NAME`` (further dots nest dicts:
  ``kwargs.added_cond_kwargs.text_embeds``). A torch file may instead hold the structure itself:
  ``{"args": [...], "kwargs": {...}}``, a bare tensor (one positional argument), a list or tuple
  (positional arguments) or a dict of keyword tensors. :func:`save_example_inputs` writes the
  convention.
* a **Python reference** ``path/to/file.py:make_inputs`` or ``package.module:make_inputs``: a
  function called with no arguments that returns a tensor (one positional argument), a tuple or
  list (positional arguments), a dict with string keys (keyword arguments), an ``(args, kwargs)``
  pair (a 2-tuple of a tuple/list and a dict), or an :class:`ExampleInputs`. The reference runs
  code: use one you trust. A diffusers UNet with a timestep::

      # inputs.py
      import torch

      def make_inputs():
          return (torch.randn(1, 4, 16), torch.tensor([10])), {}

* a **shape**: :func:`random_inputs` draws normal noise, one tensor per shape.

Models run on these inputs with :meth:`ExampleInputs.run`, which casts floating-point tensors to
the model's dtype and seeds torch's random generator, so two models that sample (a VAE drawing its
latent) draw the same numbers.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import SpecError
from .references import first_line, import_attribute

_ARG_KEY = re.compile(r"^args\.(\d+)$")
_KWARG_KEY = re.compile(r"^kwargs\.([A-Za-z_]\w*(?:\.[A-Za-z_0-9]\w*)*)$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword arguments for one call of a model, and where they came from."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "inputs"

    def cast(self, dtype: torch.dtype) -> ExampleInputs:
        """A copy with every floating-point tensor (nested too) cast to ``dtype``; others unchanged."""
        return ExampleInputs(_cast(self.args, dtype), _cast(self.kwargs, dtype), self.source)

    def run(self, model: torch.nn.Module, *, seed: int | None = 0, dtype: torch.dtype | None = None) -> Any:
        """``model(*args, **kwargs)`` without gradients.

        Floating-point inputs are cast to ``dtype`` (default: the dtype of the model's first
        floating-point parameter). With ``seed``, torch's random generator is seeded for the call
        and restored afterwards, so every model run with the same seed draws the same numbers.
        """
        if dtype is None:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        inputs = self.cast(dtype) if dtype is not None else self
        with torch.no_grad():
            if seed is None:
                return model(*inputs.args, **inputs.kwargs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return model(*inputs.args, **inputs.kwargs)

    def describe(self) -> str:
        """One line: each argument's shape and dtype, e.g. ``(1, 4, 16) float32, timestep=() int64``."""
        parts = [_summary(v) for v in self.args] + [f"{k}={_summary(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) or "no arguments"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a report."""
        return {"source": self.source, "inputs": self.describe()}


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_summary(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_summary(v) for v in value) + "]"
    return repr(value)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cast(v, dtype) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Building from values


def as_example_inputs(value: Any, source: str = "inputs") -> ExampleInputs:
    """Read a returned or loaded value as inputs (see the module doc for the accepted forms)."""
    if isinstance(value, ExampleInputs):
        return value
    if isinstance(value, torch.Tensor):
        return ExampleInputs((value,), {}, source)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise SpecError(f"{source}: keyword inputs need string keys, got {sorted(map(repr, value))[:3]}")
        return ExampleInputs((), dict(value), source)
    if (
        isinstance(value, tuple)
        and not hasattr(value, "_fields")
        and len(value) == 2
        and isinstance(value[0], (list, tuple))
        and isinstance(value[1], Mapping)
    ):
        return ExampleInputs(tuple(value[0]), dict(as_example_inputs(value[1], source).kwargs), source)
    if isinstance(value, (list, tuple)):
        return ExampleInputs(tuple(value), {}, source)
    raise SpecError(
        f"{source}: got a {type(value).__name__}; return a tensor, a tuple of positional inputs, "
        "a dict of keyword inputs, or (args, kwargs)"
    )


def random_inputs(
    *shapes: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0, source: str | None = None
) -> ExampleInputs:
    """One standard-normal tensor per shape, as positional arguments, from a seeded generator."""
    if not shapes:
        raise SpecError("random_inputs: give at least one shape, e.g. random_inputs((1, 3, 32, 32))")
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for shape in shapes:
        dims = tuple(int(n) for n in shape)
        if not dims or any(n < 1 for n in dims):
            raise SpecError(f"random_inputs: shape {tuple(shape)} needs positive sizes, e.g. (1, 3, 32, 32)")
        tensors.append(torch.randn(dims, dtype=dtype, generator=gen))
    shown = ", ".join("x".join(map(str, t.shape)) for t in tensors)
    return ExampleInputs(tuple(tensors), {}, source or f"random normal {shown} (seed {seed})")


# --------------------------------------------------------------------------------------------
# Files


def _unflatten(flat: Mapping[str, Any], path: Path) -> ExampleInputs:
    """``args.N`` / ``kwargs.NAME[.SUB...]`` keys into args and (nested) kwargs."""
    args: dict[int, Any] = {}
    kwargs: dict[str, Any] = {}
    for key, value in flat.items():
        arg = _ARG_KEY.match(key)
        kwarg = _KWARG_KEY.match(key)
        if arg:
            args[int(arg.group(1))] = value
        elif kwarg:
            *parents, leaf = kwarg.group(1).split(".")
            node = kwargs
            for name in parents:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise SpecError(f"{path}: key {key!r} nests under {name!r}, which is already a tensor")
                node = child
            if leaf in node:
                raise SpecError(f"{path}: key {key!r} names a dict that other keys fill")
            node[leaf] = value
        else:
            raise SpecError(
                f"{path}: key {key!r} is neither args.N nor kwargs.NAME; name positional inputs args.0, args.1, ... "
                "and keyword inputs kwargs.NAME"
            )
    gaps = [i for i in range(len(args)) if i not in args]
    if gaps:
        raise SpecError(
            f"{path}: positional inputs must be args.0 .. args.{len(args) - 1} without gaps; args.{gaps[0]} is missing"
        )
    return ExampleInputs(tuple(args[i] for i in range(len(args))), kwargs, str(path))


def _looks_flat(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and (_ARG_KEY.match(k) or _KWARG_KEY.match(k)) for k in obj)
    )


def _from_torch_object(obj: Any, path: Path) -> ExampleInputs:
    if _looks_flat(obj):
        return _unflatten(obj, path)
    if isinstance(obj, Mapping) and {"args", "kwargs"} & set(obj) and not set(obj) <= {"args", "kwargs"}:
        others = sorted(str(k) for k in obj if k not in ("args", "kwargs"))
        raise SpecError(f"{path}: 'args' and 'kwargs' take no other entries beside them; found {others[:3]}")
    if isinstance(obj, Mapping) and obj and set(obj) <= {"args", "kwargs"}:
        args, kwargs = obj.get("args", ()), obj.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
            raise SpecError(f"{path}: 'args' must be a list or tuple and 'kwargs' a dict")
        return ExampleInputs(tuple(args), dict(as_example_inputs(dict(kwargs), str(path)).kwargs), str(path))
    return as_example_inputs(obj, str(path))


def load_example_file(path: str | Path, *, trust_pickle: bool = False) -> ExampleInputs:
    """Example inputs from a ``.safetensors`` or torch file (see the module doc for the keys)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: example inputs file not found")
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SpecError(f"{path}: cannot read example inputs as safetensors ({first_line(e)})") from None
        if not tensors:
            raise SpecError(f"{path}: the file holds no tensors; save inputs as args.0, args.1, ..., kwargs.NAME")
        return _unflatten(tensors, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"global {found.group(1)!r}" if found else "more than tensors, lists and dicts"
        raise SpecError(
            f"{path}: refused to load example inputs: the pickle asks for {what}; save plain tensors, lists and "
            "dicts, or pass trust_pickle=True only if you trust who made this file"
        ) from None
    except Exception as e:  # damaged or foreign bytes: one line, not torch's traceback
        raise SpecError(f"{path}: cannot read example inputs ({first_line(e)})") from None
    return _from_torch_object(obj, path)


def save_example_inputs(path: str | Path, *args: torch.Tensor, **kwargs: torch.Tensor) -> Path:
    """Write tensors as example inputs (``args.N`` / ``kwargs.NAME`` keys) to ``.safetensors`` or a torch file.

    Args:
        path: the file; ``.safetensors``, else a torch file.
        args: the positional inputs, in order.
        kwargs: the keyword inputs; dicts of tensors are written as nested ``kwargs.NAME.SUB`` keys.

    Returns:
        The path written, for ``--example-inputs``.
    """
    path = Path(path)
    flat: dict[str, torch.Tensor] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{key}.{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[key] = value.detach().contiguous()
        else:
            raise SpecError(f"{path}: {key} is a {type(value).__name__}; example input files hold tensors only")

    for i, value in enumerate(args):
        put(f"args.{i}", value)
    for name, value in kwargs.items():
        put(f"kwargs.{name}", value)
    if path.name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(flat, str(path))
    elif path.suffix in _TORCH_SUFFIXES:
        torch.save(flat, path)
    else:
        raise SpecError(f"{path}: example inputs are written as .safetensors or .pt")
    return path


# --------------------------------------------------------------------------------------------
# Python references


def inputs_from_reference(ref: str) -> ExampleInputs:
    """Call ``file.py:make_inputs`` / ``pkg.mod:make_inputs`` (no arguments) and read what it returns."""
    factory = import_attribute(ref, repr(ref), kind="function")
    if not callable(factory):
        raise SpecError(f"{ref!r}: {ref.rpartition(':')[0]} has no function {ref.rpartition(':')[2]!r}")
    try:
        value = factory()
    except Exception as e:
        raise SpecError(f"{ref!r}: calling it failed: {type(e).__name__}: {first_line(e)}") from None
    return as_example_inputs(value, ref)


def _is_reference(text: str) -> bool:
    where, colon, name = text.rpartition(":")
    return bool(colon and where and re.fullmatch(r"[A-Za-z_]\w*", name)) and not Path(text).is_file()


def load_example_inputs(source: str | Path, *, trust_pickle: bool = False) -> ExampleInputs:
    """Example inputs from a file path or a ``file.py:function`` / ``pkg.mod:function`` reference.

    Args:
        source: a ``.pt``/``.pth``/``.safetensors`` file of ``args.N`` / ``kwargs.NAME`` tensors (or
            a torch file of ``{"args": [...], "kwargs": {...}}``), or a function reference; the
            function is imported and called with no arguments (its code runs).
        trust_pickle: UNSAFE: read a torch file with full pickle; only for files you trust.

    Returns:
        The :class:`ExampleInputs`.

    Raises:
        SpecError: the file or function is missing, cannot be read, or gives something else.
    """
    text = str(source)
    if isinstance(source, str) and _is_reference(text):
        return inputs_from_reference(text)
    return load_example_file(source, trust_pickle=trust_pickle)


__all__ = [
    "ExampleInputs",
    "as_example_inputs",
    "inputs_from_reference",
    "load_example_file",
    "load_example_inputs",
    "random_inputs",
    "save_example_inputs",
]
