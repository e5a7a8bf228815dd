"""``load_checkpoint``: any supported format in, one :class:`Checkpoint` out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import CheckpointError
from .container import Checkpoint, as_state_dict, check_tensors, choose_state_dict, split_state_dict
from .formats import SAFETENSORS, SHARDED, show, sniff
from .safetensors_read import read_safetensors
from .sharded import load_sharded
from .torch_load import load_torch


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> Checkpoint:
    """Load a checkpoint of any supported format; tensors stay memory-mapped where the format allows.

    Args:
        path: a torch file (zip or legacy), a ``.safetensors`` file, or a ``*.safetensors.index.json``;
            the format is read from the bytes, not the name.
        state_dict_key: the top-level entry of a torch container that holds the weights (default: guessed
            from common names, an error when ambiguous).
        trust_pickle: load torch pickles with ``weights_only=False`` (runs code from the file).
        allow_globals: ``"module.Name"`` globals a torch pickle may use beyond tensors and plain containers.

    Returns:
        The :class:`Checkpoint`: its state dict, container, metadata and layout.

    Raises:
        CheckpointError: one line naming the file, for anything unreadable, unsafe or out of bounds
            (``UnsafeCheckpointError`` for a pickle that asks for code).
    """
    path = Path(path)
    fmt = sniff(path)
    if fmt == SAFETENSORS:
        data = read_safetensors(path)
        ckpt = Checkpoint(path, fmt, data.tensors, metadata=data.metadata, regions=data.regions)
    elif fmt == SHARDED:
        ckpt = load_sharded(path)
    else:
        container = load_torch(path, fmt, trust_pickle=trust_pickle, allow_globals=allow_globals)
        chosen, looks = choose_state_dict(container, state_dict_key, path)
        raw = as_state_dict(container if chosen is None else container[chosen])
        state, passthrough = split_state_dict(raw, chosen, path)
        ckpt = Checkpoint(
            path, fmt, state, container=container, state_key=chosen, candidates=looks, passthrough=passthrough
        )
    ckpt.trust_pickle, ckpt.allow_globals = trust_pickle, tuple(allow_globals)
    try:
        size = sum(os.path.getsize(p) for p in ckpt.files)
    except OSError as e:
        raise CheckpointError(f"{show(path)}: cannot read ({e.strerror})") from None
    check_tensors(ckpt.state_dict, path, size)
    return ckpt
