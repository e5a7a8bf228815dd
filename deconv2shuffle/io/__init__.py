"""Checkpoint I/O, one concern per module (in dependency order):

- :mod:`.formats`: format names, sniffing a file's format from its bytes, output names, resource bounds;
- :mod:`.tempfiles` and :mod:`.publish`: temporary files beside their destination, and publishing them
  (fsync, link or replace, never over inputs or non-regular files; signals; leftovers of dead runs swept);
- :mod:`.safetensors_read` and :mod:`.safetensors_write`: safetensors through the ``safetensors`` library;
- :mod:`.pickle_scan` and :mod:`.torch_load`: torch pickles checked, then loaded with ``weights_only``;
- :mod:`.container`: the :class:`Checkpoint`, and which entry of a training container holds the weights;
- :mod:`.sharded`: sharded safetensors indexes;
- :mod:`.load` and :mod:`.save`: ``load_checkpoint`` and ``save_checkpoint``.

Names are imported lazily: ``publish_bytes`` and friends do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "TORCH_ZIP": "formats",
    "TORCH_LEGACY": "formats",
    "SAFETENSORS": "formats",
    "SHARDED": "formats",
    "sniff": "formats",
    "output_format": "formats",
    "FileSet": "publish",
    "Sink": "publish",
    "check_destination": "publish",
    "publish_bytes": "publish",
    "publishing": "publish",
    "Terminated": "tempfiles",
    "sweep": "tempfiles",
    "Checkpoint": "container",
    "choose_state_dict": "container",
    "load_checkpoint": "load",
    "save_checkpoint": "save",
    "check_output": "save",
}

__all__ = [
    "Checkpoint",
    "FileSet",
    "SAFETENSORS",
    "SHARDED",
    "Sink",
    "TORCH_LEGACY",
    "TORCH_ZIP",
    "Terminated",
    "check_destination",
    "check_output",
    "choose_state_dict",
    "load_checkpoint",
    "output_format",
    "publish_bytes",
    "publishing",
    "save_checkpoint",
    "sniff",
    "sweep",
]

if TYPE_CHECKING:
    from .container import Checkpoint, choose_state_dict
    from .formats import SAFETENSORS, SHARDED, TORCH_LEGACY, TORCH_ZIP, output_format, sniff
    from .load import load_checkpoint
    from .publish import FileSet, Sink, check_destination, publish_bytes, publishing
    from .save import check_output, save_checkpoint
    from .tempfiles import Terminated, sweep


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
