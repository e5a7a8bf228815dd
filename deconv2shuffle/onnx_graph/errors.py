"""Errors of the ONNX route, in the package's one exception family (exit code 2 unless noted)."""

from __future__ import annotations

from ..errors import CheckpointError, Deconv2ShuffleError


class OnnxUnavailableError(Deconv2ShuffleError):
    """The optional ``onnx`` package is not installed."""


class OnnxModelError(CheckpointError):
    """An ONNX file that cannot be read or written safely: corrupt, truncated, missing external
    data, an opset this version cannot handle."""


def missing_onnx(path: object = None) -> OnnxUnavailableError:
    where = f"{path}: " if path is not None else ""
    return OnnxUnavailableError(
        f"{where}reading ONNX models needs the onnx extra; install it with pip install 'deconv2shuffle[onnx]'"
    )
