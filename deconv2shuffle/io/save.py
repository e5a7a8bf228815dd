"""``save_checkpoint``: a state dict out, in the format the output name asks for, by publication.

Every file is written to a temporary name beside its destination, fsynced, read back, and only then published
(:mod:`.publish`): a torch file is read back with ``torch.load`` and the trust the input was loaded with; a
safetensors file through the ``safetensors`` library itself.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, Deconv2ShuffleError
from .container import Checkpoint
from .formats import SAFETENSORS, SHARDED, TORCH_ZIP, first_line, output_format, show
from .publish import Check, check_destination, publishing
from .safetensors_read import as_bits, verify_safetensors
from .safetensors_write import LateValue, write_safetensors
from .sharded import save_sharded
from .tempfiles import describe_os_error
from .torch_load import resolve_globals

ValueCheck = Callable[[str], bool]


def check_output(out: Path, inputs: Sequence[Path], force: bool, *, protect: Sequence[Path] = ()) -> None:
    """Refuse an output before any work: an existing file without ``force``; an input without ``force`` (with
    it, an input is replaced atomically); a protected file, a folder, FIFO, device or link ever."""
    check_destination(Path(out), force=force, protect=protect, inputs=inputs)


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    like: Checkpoint | None = None,
    container_updates: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str | LateValue] | None = None,
    force: bool = False,
    check_values: ValueCheck = lambda key: False,
    trust_pickle: bool | None = None,
    allow_globals: Sequence[str] | None = None,
    protect: Sequence[Path] = (),
) -> list[Path]:
    """Write ``state_dict`` to ``path`` in the format its name asks for, by publication (see the module doc).

    Args:
        path: ``*.safetensors``, ``*.index.json`` (sharded safetensors) or anything else (a torch zip file).
        state_dict: name -> tensor. Tied tensors stay tied in a torch file; in safetensors each name is
            stored as its own entry.
        like: the checkpoint it came from: its container (epoch, hyper-parameters, optimizer state...) is kept
            around the new state dict, with ``container_updates`` applied; safetensors metadata is kept and
            ``metadata`` added; a sharded source keeps its grouping.
        force: replace an existing file (an input too, atomically).
        check_values: which keys to compare bit for bit on read-back (all keys are checked for shape and dtype).
        trust_pickle, allow_globals: how to read a torch output back (default: as ``like`` was loaded).
        protect: files never to replace (an input, an earlier output of the same run).

    Returns:
        The files written (the index first when sharded).
    """
    out = Path(path)
    inputs = like.files if like is not None else []
    check_output(out, inputs, force, protect=protect)
    fmt = output_format(out)
    if fmt == TORCH_ZIP:
        trust = trust_pickle if trust_pickle is not None else bool(like and like.trust_pickle)
        allowed = allow_globals if allow_globals is not None else (like.allow_globals if like else ())
        return _save_torch(out, state_dict, like, container_updates, force, check_values, trust, allowed, protect)
    meta: dict[str, str | LateValue] = {"format": "pt"}
    meta.update(like.metadata if like is not None and like.format == SAFETENSORS else {})
    meta.update({str(k): (v if callable(v) else str(v)) for k, v in (metadata or {}).items()})
    if fmt == SAFETENSORS:
        written: dict[str, str] = {}

        def check(tmp: Path) -> None:
            verify_safetensors(tmp, out, state_dict, written, check_values)

        with publishing(out, force=force, protect=protect, inputs=inputs, check=check) as f:
            written.update(write_safetensors(f, state_dict, meta, show(out), regions=like.regions if like else None))
        return [out]
    assert fmt == SHARDED
    return save_sharded(out, state_dict, like, meta, force=force, check_values=check_values, protect=protect)


def _save_torch(
    out: Path,
    state_dict: Mapping[str, torch.Tensor],
    like: Checkpoint | None,
    updates: Mapping[str, Any] | None,
    force: bool,
    check_values: ValueCheck,
    trust: bool,
    allowed: Sequence[str],
    protect: Sequence[Path],
) -> list[Path]:
    passthrough = like.passthrough if like is not None else {}
    obj: Any = {**state_dict, **passthrough}
    state_key = None
    if like is not None and isinstance(like.container, dict) and like.state_key is not None:
        state_key = like.state_key
        obj = dict(like.container)
        obj[state_key] = {**state_dict, **passthrough}
        obj.update(updates or {})
    check = _check_torch(out, state_key, state_dict, check_values, trust, allowed)
    inputs = like.files if like is not None else []
    with publishing(out, force=force, protect=protect, inputs=inputs, check=check) as f:
        try:
            torch.save(obj, f.path)  # by name: torch writes a path without a Python-level copy
        except (Deconv2ShuffleError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise _write_failed(out, e) from None
    return [out]


def _write_failed(out: Path, e: BaseException) -> CheckpointError:
    if isinstance(e, OSError):
        why = describe_os_error(e)
    elif isinstance(e, RecursionError):
        why = "the checkpoint nests too deeply to be written"
    elif "unexpected pos" in str(e):  # torch's zip writer when a write came up short
        why = "torch.save could not write the whole file; is the disk full or a file size limit set?"
    else:
        why = f"torch.save: {first_line(str(e), 120)}"
    if out.parent.exists() and shutil.disk_usage(out.parent).free < (1 << 20):
        why += "; the disk is full"
    return CheckpointError(f"{show(out)}: write failed ({why}); nothing was written")


def _check_torch(
    out: Path,
    state_key: str | None,
    expected: Mapping[str, torch.Tensor],
    check_values: ValueCheck,
    trust: bool,
    allowed: Sequence[str],
) -> Check:
    globals_ = list(resolve_globals(allowed).values()) if not trust else []

    def check(tmp: Path) -> None:
        try:
            with warnings.catch_warnings(), torch.serialization.safe_globals(globals_):
                warnings.simplefilter("ignore")
                loaded = torch.load(tmp, map_location="cpu", weights_only=not trust, mmap=True)
        except Exception as e:
            raise CheckpointError(
                f"{show(out)}: read-back of the file just written failed ({first_line(str(e), 120)}); "
                "nothing was written"
            ) from None
        back = loaded[state_key] if state_key is not None else loaded
        for key, t in expected.items():
            got = back.get(key) if isinstance(back, Mapping) else None
            if not isinstance(got, torch.Tensor) or got.shape != t.shape or got.dtype != t.dtype:
                raise CheckpointError(f"{show(out)}: read-back check failed for {key!r}; nothing was written")
            if check_values(key) and not torch.equal(as_bits(got), as_bits(t)):
                raise CheckpointError(f"{show(out)}: read-back values differ for {key!r}; nothing was written")

    return check
