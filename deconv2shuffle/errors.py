"""One exception family. Messages name the file, the key, both shapes and what to do next.

Messages speak the API's words: when they advise an option they name the parameter as
``name=value`` (``trust_pickle=True``, ``state_dict_key='ema'``); the command line rewrites
those into its flags. The command line turns any :class:`Deconv2ShuffleError` into one line on
stderr and exit code ``exit_code``; anything else is a bug and keeps its traceback behind
``--debug``.
"""

from __future__ import annotations

from typing import Any


class Deconv2ShuffleError(Exception):
    """Base class of every error this package raises on purpose.

    ``report`` optionally carries plain data describing the failed run (a migration's report with
    ``ok`` false), so callers that print machine-readable output can print it on failure too.
    """

    exit_code = 2
    report: dict[str, Any] | None = None


class UsageError(Deconv2ShuffleError, ValueError):
    """A parameter value that cannot be used (a malformed pattern, shape, shard or option)."""


class GeometryError(Deconv2ShuffleError, ValueError):
    """A layer or target geometry that is invalid or unsupported."""


class ConversionError(Deconv2ShuffleError, ValueError):
    """A weight that cannot be rewritten (wrong shape, inexact target without approximation)."""


class CheckpointError(Deconv2ShuffleError):
    """A checkpoint that cannot be read or written safely."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs more than tensors and plain containers to load."""


class OutputExistsError(CheckpointError):
    """An output that exists, or is the input, without ``force=True``."""


class SpecError(Deconv2ShuffleError):
    """A spec file or model reference that is invalid, or a match that is ambiguous."""


class InexactTargetError(Deconv2ShuffleError):
    """A target geometry that cannot hold the layer exactly, and ``approx=True`` was not given."""

    exit_code = 1


class VerificationError(Deconv2ShuffleError):
    """A converted layer or model whose output differs from the original beyond tolerance."""

    exit_code = 1
