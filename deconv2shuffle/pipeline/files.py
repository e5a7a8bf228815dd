"""The pipeline's own file handling: how checkpoints are read, and how reports are written.

Every report, spec or record file the pipeline writes goes through :func:`publish_file`: it never
replaces an input or an output of the run, nor anything but a regular file, nor (without
``force``) any existing file.
"""

from __future__ import annotations

import inspect
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, atomic_file, load_checkpoint
from ..errors import OutputExistsError, UsageError
from ..report import MigrationReport


@dataclass(frozen=True)
class ReadOptions:
    """How to read a checkpoint: which entry holds the weights, and what its pickle may contain.

    ``allow_globals`` names globals (``"module.Name"``) a pickle may use besides tensors and plain
    containers; ``trust_pickle`` allows any (only for files whose maker you trust).
    """

    state_dict_key: str | None = None
    trust_pickle: bool = False
    allow_globals: tuple[str, ...] = ()

    @classmethod
    def make(
        cls, state_dict_key: str | None = None, trust_pickle: bool = False, allow_globals: Sequence[str] = ()
    ) -> ReadOptions:
        """Validate and build (``allow_globals`` entries must look like ``module.Name``)."""
        if isinstance(allow_globals, str):
            allow_globals = [allow_globals]
        for name in allow_globals:
            if not isinstance(name, str) or "." not in name.strip(".") or " " in name:
                raise UsageError(f"allow_globals=[{name!r}]: expected a global's full name like 'argparse.Namespace'")
        return cls(state_dict_key, trust_pickle, tuple(allow_globals))

    def load(self, path: str | Path) -> Checkpoint:
        """Load ``path`` with these options (see :func:`deconv2shuffle.load_checkpoint`)."""
        extra: dict[str, Any] = {}
        if self.allow_globals:
            if "allow_globals" not in inspect.signature(load_checkpoint).parameters:
                raise UsageError(
                    f"allow_globals={list(self.allow_globals)!r}: this checkpoint loader cannot allow single globals; "
                    "pass trust_pickle=True for a file you trust"
                )
            extra["allow_globals"] = list(self.allow_globals)
        return load_checkpoint(path, state_dict_key=self.state_dict_key, trust_pickle=self.trust_pickle, **extra)


def check_new_file(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    outputs: Iterable[str | Path] = (),
    force: bool = False,
    what: str = "report",
) -> Path:
    """Refuse a destination for a report, spec or record file that the run must not replace.

    Args:
        path: where the file would be written.
        inputs: every file the run reads (checkpoints, shards, specs, model files): never replaced.
        outputs: the run's other outputs (the converted checkpoints): never replaced.
        force: allow replacing an existing regular file that is neither.
        what: what the file is, for messages (``"report"``).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        UsageError: ``path`` is an input or output of the run, or exists and is not a regular file.
        OutputExistsError: ``path`` exists and ``force`` is false.
    """
    path = Path(path)
    real = path.resolve()
    for kind, paths in (("an input", inputs), ("an output", outputs)):
        if any(Path(p).resolve() == real for p in paths):
            raise UsageError(f"{path}: the {what} would replace {kind} of this run; write the {what} elsewhere")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise UsageError(f"{path}: cannot write the {what} there ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{path}: is {kind}; the {what} replaces only regular files, write it elsewhere")
    if not force:
        raise OutputExistsError(f"{path}: already exists; pass force=True to replace the {what}")
    return path


def publish_file(
    path: str | Path,
    data: bytes,
    *,
    inputs: Iterable[str | Path] = (),
    outputs: Iterable[str | Path] = (),
    force: bool = False,
    what: str = "report",
) -> None:
    """The one way the pipeline writes a report, spec or record file: checked, then atomic.

    The destination is checked as :func:`check_new_file` says, written to a temporary file beside
    it, synced, checked again, and renamed into place; a failure leaves no file behind.

    Args:
        path: the destination.
        data: the bytes to write.
        inputs, outputs, force, what: as for :func:`check_new_file`.

    Raises:
        UsageError, OutputExistsError: see :func:`check_new_file`.
        CheckpointError: the write failed (nothing was written).
    """
    inputs, outputs = tuple(inputs), tuple(outputs)

    def check(_tmp: Path) -> None:  # again, just before the rename: the file may have appeared meanwhile
        check_new_file(path, inputs=inputs, outputs=outputs, force=force, what=what)

    dest = check_new_file(path, inputs=inputs, outputs=outputs, force=force, what=what)
    with atomic_file(dest, check) as f:
        f.write(data)


def write_json(path: str | Path, data: Any, **checks: Any) -> None:
    """Write ``data`` as indented JSON through :func:`publish_file` (``checks``: its keyword arguments)."""
    publish_file(path, json.dumps(data, indent=2, default=str).encode(), **checks)


def write_report(
    report: MigrationReport,
    path: str | Path,
    error: str | None = None,
    exit_code: int = 0,
    *,
    inputs: Iterable[str | Path] = (),
    outputs: Iterable[str | Path] = (),
    force: bool = False,
) -> None:
    """Write a migration report: JSON for ``.json``, Markdown otherwise; a failed run's with its error.

    Args:
        report: the report.
        path: where to write it (checked as :func:`check_new_file` says).
        error: the message of the error that stopped the run, if one did.
        exit_code: that error's exit code.
        inputs, outputs, force: as for :func:`check_new_file`.
    """
    text = report.render(Path(path).suffix, error, exit_code)
    publish_file(path, text.encode(), inputs=inputs, outputs=outputs, force=force)
