"""One exception family. Messages name the file, the key, both shapes and what to do next.

The command line turns any :class:`Deconv2ShuffleError` into one line on stderr and exit code
``exit_code``; anything else is a bug and keeps its traceback behind ``--debug``.
"""

from __future__ import annotations


class Deconv2ShuffleError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 2


class GeometryError(Deconv2ShuffleError, ValueError):
    """A layer or target geometry that is invalid or unsupported."""


class ConversionError(Deconv2ShuffleError, ValueError):
    """A weight that cannot be rewritten (wrong shape, inexact target without approximation)."""


class CheckpointError(Deconv2ShuffleError):
    """A checkpoint that cannot be read or written safely."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs more than tensors and plain containers to load."""


class OutputExistsError(CheckpointError):
    """An output that exists, or is the input, without ``--force``."""


class SpecError(Deconv2ShuffleError):
    """A spec file or model reference that is invalid, or a match that is ambiguous."""


class InexactTargetError(Deconv2ShuffleError):
    """A target geometry that cannot hold the layer exactly, and ``--approx`` was not given."""

    exit_code = 1


class VerificationError(Deconv2ShuffleError):
    """A converted layer or model whose output differs from the original beyond tolerance."""

    exit_code = 1
