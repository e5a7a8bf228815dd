"""Loading torch files without running code from them.

Three levels of trust, from the caller:

- default: the pickle is dry-run first (:mod:`.pickle_scan`: tensors backed by the file, plain containers and
  numbers, bounded), then loaded with ``torch.load(weights_only=True)``;
- ``allow_globals=["module.Name", ...]``: the same, with those globals imported and allowed, both in the dry
  run and in torch (``torch.serialization.safe_globals``); use it for a class you trust, such as a config
  object saved beside the weights;
- ``trust_pickle=True``: plain ``torch.load(weights_only=False)``, which runs whatever the file says. Only for
  files whose maker you trust.

A refusal names every global that was not allowed: the unsafe ones as ``torch.serialization
.get_unsafe_globals_in_checkpoint`` lists them, and those that are safe but are not part of a state dict.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .formats import TORCH_ZIP, first_line, show
from .pickle_scan import ScanResult, scan_legacy, scan_zip, zip_pickle

# What some refused globals are, for the message.
_KINDS = {
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor (no data)",
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
    "torch._tensor._rebuild_from_type_v2": "a tensor subclass or a tensor with attributes",
    "torch._utils._rebuild_device_tensor_from_numpy": "a NumPy-backed tensor",
}


def describe_refused(names: list[str]) -> str:
    """``'torch.Size'``, or ``'torch._utils._rebuild_sparse_tensor' (a sparse tensor)``, comma-separated."""
    return ", ".join(f"{n!r} ({_KINDS[n]})" if n in _KINDS else repr(n) for n in names)


def resolve_globals(names: Sequence[str]) -> dict[str, Any]:
    """Import each ``module.Name`` (a class or function; nested names like ``module.Outer.Inner`` too).

    Returns name -> object. One name that cannot be imported is one clear :class:`CheckpointError`.
    """
    out: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str) or "." not in name.strip("."):
            raise CheckpointError(f"allow_globals: {name!r} is not a 'module.Name'; name a class or function")
        out[name] = _import(name)
    return out


def _import(name: str) -> Any:
    parts = name.split(".")
    problem = "no such module"
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError as e:
            problem = str(e)
            continue
        except Exception as e:  # a module that fails while importing
            raise CheckpointError(f"allow_globals: importing {name!r} failed ({first_line(str(e))})") from None
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            problem = f"module {'.'.join(parts[:cut])!r} has no {'.'.join(parts[cut:])!r}"
            break
        return obj
    raise CheckpointError(f"allow_globals: cannot import {name!r} ({problem}); give it as 'module.Name'")


def _pickle_name(obj: Any) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else None


def load_torch(path: Path, fmt: str, *, trust_pickle: bool = False, allow_globals: Sequence[str] = ()) -> Any:
    """The object a torch file holds, loaded on the CPU (memory-mapped for zip files); see the module doc."""
    if trust_pickle:
        if fmt == TORCH_ZIP:
            zip_pickle(path)  # a TorchScript archive is refused even when trusted
        return _torch_load(path, fmt, weights_only=False)
    allowed = resolve_globals(allow_globals)
    names = set(allowed) | {n for n in map(_pickle_name, allowed.values()) if n}
    scan = scan_zip(path, names) if fmt == TORCH_ZIP else scan_legacy(path, names)
    if scan.refused:
        raise _refusal(path, fmt, scan)
    with torch.serialization.safe_globals(list(allowed.values())):
        return _torch_load(path, fmt, weights_only=True)


def _refusal(path: Path, fmt: str, scan: ScanResult) -> CheckpointError:
    """One line naming every refused global: unsafe ones (can run code) first, then merely unexpected ones."""
    unsafe = set(_unsafe_globals(path, fmt, scan))
    risky = [n for n in scan.refused if n in unsafe]
    odd = [n for n in scan.refused if n not in unsafe]
    both = ", ".join(repr(n) for n in scan.refused)
    if risky:
        return UnsafeCheckpointError(
            f"{show(path)}: refused to load: the pickle asks for {', '.join(map(repr, risky))}"
            f"{' and ' + describe_refused(odd) if odd else ''}, which can run code. If you trust the class, "
            f"allow it with allow_globals=[{both}]; pass trust_pickle=True only if you trust who made this file"
        )
    return CheckpointError(
        f"{show(path)}: refused to load: the pickle asks for {describe_refused(odd)}, which a state dict does "
        f"not need (tensors, plain containers and numbers only); allow it with allow_globals=[{both}]"
    )


def _unsafe_globals(path: Path, fmt: str, scan: ScanResult) -> list[str]:
    """Globals ``weights_only`` would refuse: torch's own list for zip files, ours checked against its
    allow-list for legacy files (torch's function reads zip files only)."""
    from torch import _weights_only_unpickler as wo

    safe = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())  # type: ignore[no-untyped-call]
    ours = [n for n in scan.refused if n not in safe]
    if fmt == TORCH_ZIP:
        try:
            return [*torch.serialization.get_unsafe_globals_in_checkpoint(path), *ours]
        except Exception:
            pass
    return ours


def _torch_load(path: Path, fmt: str, *, weights_only: bool) -> Any:
    # torch.load sends a path ending in .safetensors to safetensors whatever its bytes are, and mmap needs a
    # path: a torch file with that name is read through a file object, without mmap.
    by_name = not path.name.endswith(".safetensors")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if by_name:
                return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=fmt == TORCH_ZIP)
            with path.open("rb") as f:
                return torch.load(f, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only:
            raise UnsafeCheckpointError(
                f"{show(path)}: refused to load: {first_line(str(e))}; pass trust_pickle=True only if you trust "
                "who made this file"
            ) from None
        raise CheckpointError(f"{show(path)}: corrupt pickle data ({first_line(str(e))})") from None
    except (MemoryError, RecursionError) as e:
        raise CheckpointError(f"{show(path)}: cannot load this checkpoint ({type(e).__name__})") from None
    except ModuleNotFoundError as e:  # a trusted pickle naming code this Python cannot import: not damage
        raise CheckpointError(
            f"{show(path)}: the pickle needs module {e.name!r}, which cannot be imported here; run from the folder "
            "that holds it, or add that folder to PYTHONPATH"
        ) from None
    except Exception as e:  # whatever torch raises underneath on damaged bytes, the user gets one line
        raise CheckpointError(
            f"{show(path)}: cannot read this {fmt} checkpoint, it is truncated or corrupt ({first_line(str(e))})"
        ) from None
