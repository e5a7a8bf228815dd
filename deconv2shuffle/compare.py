"""Compare two model outputs tensor by tensor, whatever their nesting.

Models return more than one tensor: dicts (torchvision detection), lists of dicts, tuples,
namedtuples, dataclasses, and ``ModelOutput``-like objects (diffusers' ``BaseOutput`` is an
``OrderedDict`` and a dataclass; others have ``to_tuple()`` or plain attributes). Every tensor is
named by its path from the root, e.g. ``output['sample']``, ``output[0]['boxes']``,
``output.last_hidden_state``, and two outputs are compared path by path: the same paths, the same
shapes, then the largest absolute and relative error of each.

Pure: no files, no terminal. Torch is needed only for the tensors themselves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import VerificationError

_NUMBER = (bool, int, float, complex)
_MAX_DEPTH = 32


def _dataclass_items(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]


def _attribute_items(obj: Any) -> list[tuple[str, Any]] | None:
    """Public attributes of a plain object that holds tensors, or None when it holds none."""
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict):
        return None
    items = [(k, v) for k, v in attrs.items() if not k.startswith("_")]
    return items if any(_holds_tensor(v) for _, v in items) else None


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth > 3:
        return False
    if isinstance(value, Mapping):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    return False


def _children(obj: Any) -> list[tuple[str, Any]] | None:
    """The named children of a container as (path suffix, value); None for a leaf."""
    if isinstance(obj, Mapping):  # dict, OrderedDict, diffusers BaseOutput / transformers ModelOutput
        return [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return [(f".{name}", getattr(obj, name)) for name in obj._fields]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f".{k}", v) for k, v in _dataclass_items(obj)]
    to_tuple = getattr(obj, "to_tuple", None)
    if callable(to_tuple):
        return [(f"[{i}]", v) for i, v in enumerate(to_tuple())]
    attrs = _attribute_items(obj)
    if attrs is not None:
        return [(f".{k}", v) for k, v in attrs]
    return None


def _is_leaf(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (*_NUMBER, str, bytes))


def iter_leaves(output: Any, root: str = "output") -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested output with its path: tensors, numbers, strings, None and other objects."""
    for path, leaf, _ in _pairs(output, output, root, 0, set()):
        yield path, leaf


def _pairs(ref: Any, cand: Any, path: str, depth: int, active: set[int]) -> Iterator[tuple[str, Any, Any]]:
    """Walk two outputs in step, yielding (path, reference leaf, candidate leaf); raise where they part."""
    ref_children = None if _is_leaf(ref) else _children(ref)
    cand_children = None if _is_leaf(cand) else _children(cand)
    if ref_children is None and cand_children is None:
        yield path, ref, cand
        return
    if ref_children is None or cand_children is None or type(ref) is not type(cand):
        raise VerificationError(
            f"{path} is {_describe(ref)} in the original model's output and {_describe(cand)} in the converted one"
        )
    if id(ref) in active or depth >= _MAX_DEPTH:
        raise VerificationError(f"{path}: the output nests more than {_MAX_DEPTH} levels deep or refers to itself")
    ref_names = [suffix for suffix, _ in ref_children]
    cand_names = [suffix for suffix, _ in cand_children]
    missing = [n for n in ref_names if n not in cand_names]
    extra = [n for n in cand_names if n not in ref_names]
    if missing:
        raise VerificationError(f"{path}{missing[0]} is in the original model's output but not in the converted one")
    if extra:
        raise VerificationError(f"{path}{extra[0]} is in the converted model's output but not in the original one")
    cand_by_name = dict(cand_children)
    active.add(id(ref))
    try:
        for suffix, child in ref_children:
            yield from _pairs(child, cand_by_name[suffix], path + suffix, depth + 1, active)
    finally:
        active.discard(id(ref))


def flatten_output(output: Any, root: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``output`` with its path, in the output's own order.

    ``{"sample": a, "aux": [b]}`` gives ``[("output['sample']", a), ("output['aux'][0]", b)]``.
    """
    return [(path, leaf) for path, leaf in iter_leaves(output, root) if isinstance(leaf, torch.Tensor)]


@dataclass(frozen=True)
class TensorDiff:
    """How far one tensor of the candidate output is from the reference's tensor at the same path.

    ``max_rel_error`` divides by the largest magnitude in the reference tensor (1 when it is all
    zeros), so it reads as a fraction of the tensor's scale. Positions where both hold the same
    NaN or infinity count as equal; anywhere else a NaN or infinity makes the error infinite.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    max_abs_error: float
    max_rel_error: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclass(frozen=True)
class OutputComparison:
    """Per-tensor errors of a candidate output against a reference output of the same structure."""

    tensors: tuple[TensorDiff, ...]

    @property
    def worst(self) -> TensorDiff | None:
        """The tensor with the largest relative error (None when the outputs hold no tensor)."""
        return max(self.tensors, key=lambda d: d.max_rel_error, default=None)

    @property
    def max_abs_error(self) -> float:
        return max((d.max_abs_error for d in self.tensors), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((d.max_rel_error for d in self.tensors), default=0.0)

    def within(self, tolerance: float) -> bool:
        """Whether every tensor's relative error is at most ``tolerance``."""
        return all(d.max_rel_error <= tolerance for d in self.tensors)

    def as_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "tensors": len(self.tensors),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "worst_path": None if worst is None else worst.path,
            "per_tensor": [d.as_dict() for d in self.tensors],
        }


def tensor_errors(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """Largest absolute error, and that error over the reference's largest magnitude.

    Same shapes expected. Compared in float64 (complex128 for complex tensors).
    """
    if reference.numel() == 0:
        return 0.0, 0.0
    wide = torch.complex128 if reference.is_complex() or candidate.is_complex() else torch.float64
    ref = reference.detach().to("cpu", wide)
    cand = candidate.detach().to("cpu", wide)
    same = (ref == cand) | (torch.isnan(ref) & torch.isnan(cand))
    diff = (ref - cand).abs().masked_fill(same, 0.0).nan_to_num(nan=math.inf)
    abs_err = float(diff.max())
    finite = ref.abs()[torch.isfinite(ref.abs())]
    scale = float(finite.max()) if finite.numel() else 0.0
    return abs_err, abs_err / (scale or 1.0)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _same_leaf(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # objects whose == is elementwise or undefined: only identity counts
        return False


def compare_outputs(reference: Any, candidate: Any, *, root: str = "output") -> OutputComparison:
    """Compare ``candidate`` (the converted model's output) with ``reference`` (the original's).

    Both must have the same structure: the same tensor paths, each with the same shape, and the
    same non-tensor leaves (numbers compare numerically, other leaves by ``==``). Anything else
    raises :class:`VerificationError` naming the first path that differs.
    """
    pairs = _pairs(reference, candidate, root, 0, set())
    diffs = [_compare_leaf(path, ref, cand) for path, ref, cand in pairs]
    return OutputComparison(tuple(d for d in diffs if d is not None))


def _compare_leaf(path: str, ref: Any, cand: Any) -> TensorDiff | None:
    if isinstance(ref, torch.Tensor) and isinstance(cand, torch.Tensor):
        if ref.shape != cand.shape:
            raise VerificationError(
                f"{path} has shape {tuple(ref.shape)} in the original model's output and {tuple(cand.shape)} "
                "in the converted one"
            )
        return TensorDiff(path, tuple(ref.shape), _dtype_name(ref), *tensor_errors(ref, cand))
    if isinstance(ref, torch.Tensor) or isinstance(cand, torch.Tensor):
        raise VerificationError(
            f"{path} is {_describe(ref)} in the original model's output and {_describe(cand)} in the converted one"
        )
    if isinstance(ref, _NUMBER) and isinstance(cand, _NUMBER):
        return TensorDiff(path, (), type(ref).__name__, *tensor_errors(torch.tensor(ref), torch.tensor(cand)))
    if not _same_leaf(ref, cand):
        raise VerificationError(
            f"{path} is {ref!r} in the original model's output and {cand!r} in the converted one"[:300]
        )
    return None


__all__ = ["OutputComparison", "TensorDiff", "compare_outputs", "flatten_output", "iter_leaves", "tensor_errors"]
