"""Bounds on the numbers a spec or a caller gives, so a typo or a hostile file fails at once.

Real layers sit far below them: WaveGlow's upsampler (ConvTranspose1d with stride 256 and kernel
1024) is among the largest in use. Without bounds, ``stride = [100000000, 100000000]`` loops for
minutes and ``padding = 2**63 - 1`` reaches PyTorch's C++ checks.
"""

from __future__ import annotations

from typing import Any

from ..errors import Deconv2ShuffleError, SpecError

IntOrTuple = int | tuple[int, ...]

MAX_AXIS = 1024  # any per-axis value: stride, padding, output_padding, dilation, target sizes
MAX_PHASES = 4096  # product of the strides: the sub-pixel conv has that many times the channels
MAX_TAPS = 4096  # product of target_kernel_size
MAX_GROUPS = 65536
MAX_INPUT_ELEMENTS = 1 << 26  # input_shape of the end-to-end check: 64 Mi values


def check_int(value: Any, where: str, minimum: int, maximum: int = MAX_AXIS) -> IntOrTuple:
    """An integer, or a list of 1 to 3 (one per axis), each from ``minimum`` to ``maximum``.

    Raises:
        SpecError: anything else; the message starts with ``where`` (file, line and key).
    """
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise SpecError(f"{where} must be an integer or a list of integers, got {short(value)}")
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and (
        not 1 <= len(value) <= 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(f"{where} must be an integer or a list of 1 to 3 integers, got {short(value)}")
    if any(v < minimum for v in values):
        raise SpecError(f"{where} must be >= {minimum}, got {short(value)}")
    if any(v > maximum for v in values):
        raise SpecError(f"{where} must be <= {maximum}, got {short(value)}")
    return tuple(value) if isinstance(value, list) else value


def short(value: Any) -> str:
    """``repr(value)``, cut to a readable length (a hostile spec may hold a huge value)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def product(value: IntOrTuple) -> int:
    """The product over the axes."""
    result = 1
    for v in value if isinstance(value, tuple) else (value,):
        result *= v
    return result


def check_input_shape(value: Any, where: str, error: type[Deconv2ShuffleError] = SpecError) -> tuple[int, ...]:
    """Validate a model input shape like ``(1, 3, 64, 64)``: 1 to 6 positive integers, bounded in total.

    Args:
        value: the shape (a list or tuple of integers).
        where: what to call it in the message (``"spec.toml:9: models.input_shape"``).
        error: the error class to raise.

    Returns:
        The shape as a tuple.

    Raises:
        Deconv2ShuffleError: (``error``) not a list of positive integers, or more than
            ``MAX_INPUT_ELEMENTS`` values in all.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise error(f"{where} must be a list of positive integers like [1, 3, 64, 64], got {short(value)}")
    if not 1 <= len(value) <= 6 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise error(f"{where} must be 1 to 6 positive integers like [1, 3, 64, 64], got {short(value)}")
    total = 1
    for v in value:
        total *= v
        if total > MAX_INPUT_ELEMENTS:
            raise error(f"{where} must hold at most {MAX_INPUT_ELEMENTS} values in all, got {short(value)}")
    return tuple(value)
