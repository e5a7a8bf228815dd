"""Where a migration's report may go, and which files a run reads (the report never replaces one)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.sources import Sources
from ..report import MigrationReport
from .files import check_new_file, write_report


class ReportPlace:
    """Where the report goes, checked like an output: never an input or the output of the run,
    never a non-regular file, never an existing file without ``force``."""

    def __init__(self, path: str | Path | None, inputs: list[Path], out: Path | None, force: bool) -> None:
        self.path = None if path is None else Path(path)
        self.inputs, self.outputs, self.force = list(inputs), [] if out is None else [out], force
        self.checked = False

    def add_inputs(self, paths: Sequence[Path]) -> None:
        """More files the report must never replace (checked again)."""
        self.inputs.extend(paths)
        self.check()

    def check(self) -> None:
        """Refuse a report path that is an input, the output, a non-regular file, or exists without ``force``."""
        self.checked = False
        if self.path is not None:
            check_new_file(self.path, inputs=self.inputs, outputs=self.outputs, force=self.force)
            self.checked = True

    def write(self, report: MigrationReport, error: str | None = None, exit_code: int = 0) -> None:
        """Write the report, unless its place was refused (a refused place is never written to)."""
        if self.path is not None and self.checked:
            outputs = [*self.outputs, *map(Path, report.written)]
            write_report(report, self.path, error, exit_code, inputs=self.inputs, outputs=outputs, force=self.force)


def ref_file(ref: str | None) -> list[Path]:
    """The Python file a model reference names (``"dir/m.py:Name"`` -> ``dir/m.py``), if it names one."""
    where = (ref or "").rpartition(":")[0]
    return [Path(where)] if where.endswith(".py") else []


def named_files(spec: str | Path | None, source_model: str | None, target_model: str | None) -> list[Path]:
    """The files a run names before anything is loaded: the spec, and the models' Python files."""
    return [*([Path(spec)] if spec else []), *ref_file(source_model), *ref_file(target_model)]


def source_files(sources: Sources) -> list[Path]:
    """The files a run's sources came from: the spec, and the model files it names."""
    spec = sources.spec
    if spec is None:
        return []
    return [
        *([spec.path] if spec.path else []),
        *ref_file(spec.model_ref("source")),
        *ref_file(spec.model_ref("target")),
    ]
