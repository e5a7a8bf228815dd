"""ONNX models in, ONNX models out: every ConvTranspose becomes Conv + pixel shuffle + crop.

Behind the optional ``onnx`` extra (``pip install 'deconv2shuffle[onnx]'``). This module imports
without it: :func:`looks_like_onnx` needs nothing, and the other functions raise
:class:`OnnxUnavailableError` (one line, exit code 2) when ``onnx`` is missing.

Modules: ``files`` (sniffing, reading with external data, atomic writing), ``attrs`` (attribute
resolution), ``lower`` (the one adapter to the engine), ``build`` (new nodes), ``qdq``
(quantized weights), ``convert`` (one node), ``verify`` (checks), ``report``, ``pipeline``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OnnxModelError, OnnxUnavailableError
from .files import looks_like_onnx, require_onnx

if TYPE_CHECKING:
    from .report import OnnxNodeResult, OnnxReport

__all__ = [
    "OnnxModelError",
    "OnnxNodeResult",
    "OnnxReport",
    "OnnxUnavailableError",
    "inspect_onnx",
    "looks_like_onnx",
    "migrate_onnx",
    "require_onnx",
]


def migrate_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    force: bool = False,
    verify: bool = True,
    end_to_end: bool = True,
    tolerance: float = 1e-5,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    external_data: bool | None = None,
    seed: int = 0,
) -> OnnxReport:
    """Rewrite the ONNX model ``src`` into ``dst``; see :func:`.pipeline.migrate_onnx`."""
    require_onnx(src)
    from .pipeline import migrate_onnx as run

    return run(
        src,
        dst,
        force=force,
        verify=verify,
        end_to_end=end_to_end,
        tolerance=tolerance,
        input_shapes=input_shapes,
        external_data=external_data,
        seed=seed,
    )


def inspect_onnx(src: str | Path) -> OnnxReport:
    """Every ConvTranspose of ``src`` and what it would become; see :func:`.pipeline.inspect_onnx`."""
    require_onnx(src)
    from .pipeline import inspect_onnx as run

    return run(src)


def __getattr__(name: str) -> object:
    if name in ("OnnxReport", "OnnxNodeResult"):
        require_onnx()
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
