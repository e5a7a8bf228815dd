"""The pipeline: read checkpoint files, run the conversion core, verify, write; one file or a folder.

``migrate`` reads as load -> convert -> verify -> save; ``run_batch`` runs it over a folder;
``inspect_checkpoint``, ``explain_checkpoint_layer``, ``draft_from_checkpoint`` and ``run_bench``
are what the other commands do with a file.
"""

from __future__ import annotations

from .batch import BatchResult, FileResult, run_batch
from .bench import BenchRow, run_bench
from .files import ReadOptions, write_report
from .single import migrate
from .tasks import draft_from_checkpoint, draft_spec, explain_checkpoint_layer, explain_conversion, inspect_checkpoint

__all__ = [
    "BatchResult",
    "BenchRow",
    "FileResult",
    "ReadOptions",
    "draft_from_checkpoint",
    "draft_spec",
    "explain_checkpoint_layer",
    "explain_conversion",
    "inspect_checkpoint",
    "migrate",
    "run_batch",
    "run_bench",
    "write_report",
]
