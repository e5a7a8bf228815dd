"""The pipeline's own file handling: how checkpoints are read, and how reports are written."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, atomic_file, load_checkpoint
from ..errors import UsageError
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


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (no half-written file, ever)."""
    with atomic_file(Path(path)) as f:
        f.write(text.encode())


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))


def write_report(report: MigrationReport, path: str | Path, error: str | None = None, exit_code: int = 0) -> None:
    """Write a migration report: JSON for ``.json``, Markdown otherwise; a failed run's with its error.

    Args:
        report: the report.
        path: where to write it.
        error: the message of the error that stopped the run, if one did.
        exit_code: that error's exit code.
    """
    write_text(path, report.render(Path(path).suffix, error, exit_code))
