"""Checkpoint I/O, kept under its old name: everything lives in :mod:`deconv2shuffle.io`.

Reading never executes code from a file unless the caller passes ``trust_pickle=True`` (or allows named
globals with ``allow_globals=[...]``); writing goes through a temporary file that is fsynced, read back and
then published, so a killed run leaves the old file or none, never a part.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch  # noqa: F401  (tests patch checkpoint.torch.save)

from .io.container import EMA_KEYS, STATE_DICT_KEYS, Checkpoint, choose_state_dict
from .io.formats import SAFETENSORS, SHARDED, TORCH_LEGACY, TORCH_ZIP, output_format, sniff
from .io.load import load_checkpoint
from .io.publish import Check, Sink, publish_bytes, publishing
from .io.safetensors_read import ST_DTYPES, ST_NAMES
from .io.safetensors_write import LateValue, write_safetensors
from .io.save import ValueCheck, check_output, save_checkpoint


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    check: Check | None = None,
    *,
    force: bool = True,
    protect: Sequence[Path] = (),
) -> Iterator[Sink]:
    """Yield a temporary file beside ``path``; on success fsync it, run ``check`` on it and publish it.

    Kept for callers of the old name; it replaces an existing regular file unless ``force=False``. New code
    uses :func:`deconv2shuffle.io.publish.publishing` or :func:`publish_bytes` with ``protect=[inputs...]``.
    """
    with publishing(Path(path), force=force, protect=protect, check=check, what="file") as sink:
        yield sink


__all__ = [
    "EMA_KEYS",
    "SAFETENSORS",
    "SHARDED",
    "STATE_DICT_KEYS",
    "ST_DTYPES",
    "ST_NAMES",
    "TORCH_LEGACY",
    "TORCH_ZIP",
    "Checkpoint",
    "LateValue",
    "Sink",
    "ValueCheck",
    "atomic_file",
    "check_output",
    "choose_state_dict",
    "load_checkpoint",
    "output_format",
    "publish_bytes",
    "save_checkpoint",
    "sniff",
    "write_safetensors",
]
