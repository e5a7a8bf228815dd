"""ONNX models in, ONNX models out: every ConvTranspose becomes Conv + pixel shuffle + crop.

Behind the optional ``onnx`` extra (``pip install 'deconv2shuffle[onnx]'``). This module imports
without it: :func:`looks_like_onnx` needs nothing, and the other functions raise
:class:`OnnxUnavailableError` (one line, exit code 2) when ``onnx`` is missing.

Modules: ``files`` (sniffing, reading with external data, staging and publishing), ``attrs``
(attribute resolution), ``lower`` (the one adapter to the engine), ``build`` (new nodes), ``qdq``
(quantized weights), ``graph`` (names, constants, shapes), ``convert`` (one node), ``verify``
(float64 node checks, onnx.checker), ``runtime`` (ONNX Runtime check), ``deferred`` (large
weights kept out of the protobuf, and the file layout that writes them), ``output`` (writing
while the rewrite runs), ``report``, ``migration`` (the two entry points below).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    dst: str | Path | None,
    *,
    force: bool = False,
    verify: bool = True,
    end_to_end: bool = True,
    tolerance: float = 1e-5,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    external_data: bool | None = None,
    seed: int = 0,
    on_read: Callable[[tuple[Path, ...]], None] | None = None,
) -> OnnxReport:
    """Rewrite every ConvTranspose of the ONNX model ``src`` into Conv + pixel shuffle + crop; write ``dst``.

    Weights are rearranged bit for bit (quantized ``DequantizeLinear`` weights included); nodes
    whose weight is not a constant are left as they are and reported. Nothing appears at ``dst``
    unless every check passes (the file is written into a staged folder beside it meanwhile, and
    that folder is removed on any failure or interrupt).

    Args:
        src: the model (``.onnx``; external data beside it is read too).
        dst: the output; refused if it exists unless ``force=True``, and always if it is ``src``.
            ``None``: a dry run (every check runs, nothing is written).
        force: replace an existing ``dst``.
        verify: check each rewritten node in float64 against torch's ``conv_transpose``.
        end_to_end: run the original and the rewritten model in ONNX Runtime (when installed) on
            random inputs and compare every output within ``tolerance``.
        tolerance: largest relative difference of an output (to its largest value) in ONNX Runtime.
        input_shapes: shapes of the random inputs by input name (default: the declared shape,
            unknown dimensions 1 for the first axis and 8 for the others).
        external_data: write the weights to ``<dst>.data`` (default: when the input had external
            data or the weights would not fit in one 2 GiB protobuf).
        seed: seed of the random inputs.
        on_read: called with the external-data files (checked, none read yet) before their
            bytes are read; a batch records their identity there.

    Returns:
        The :class:`OnnxReport`: every node's old and new geometry, MACs ratio and error, the
        checks run; ``report.ok`` is true once ``dst`` is written.

    Raises:
        OnnxUnavailableError: the ``onnx`` extra is not installed.
        OnnxModelError: ``src`` is unreadable (corrupt, truncated, missing external data,
            unsupported opset) or ``dst`` cannot be written.
        OutputExistsError: ``dst`` exists without ``force=True``, is ``src`` or a folder.
        VerificationError: a check failed; nothing was written.
    """
    require_onnx(src)
    from .migration import migrate_onnx as run

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
        on_read=on_read,
    )


def inspect_onnx(src: str | Path) -> OnnxReport:
    """What :func:`migrate_onnx` would do with ``src``, without rearranging or writing anything.

    Args:
        src: the model (``.onnx``); its external data is not read.

    Returns:
        An :class:`OnnxReport` with ``output_file`` None: each ConvTranspose with its new geometry,
        new weight shape and MACs ratio (status ``"convertible"``), or why it stays (``"left"``).

    Raises:
        OnnxUnavailableError: the ``onnx`` extra is not installed.
        OnnxModelError: ``src`` is unreadable.
    """
    require_onnx(src)
    from .migration import inspect_onnx as run

    return run(src)


def __getattr__(name: str) -> object:
    if name in ("OnnxReport", "OnnxNodeResult"):
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
