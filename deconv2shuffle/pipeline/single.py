"""migrate: one checkpoint file, load -> convert -> verify -> save, with a report.

The work itself is the conversion core's; this module only reads the file, calls the core, checks
the whole model when models are known, and writes the result atomically.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import TORCH_ZIP, Checkpoint, check_output, output_format, save_checkpoint
from ..core.bounds import check_input_shape, short
from ..core.convert import Conversion, convert_state_dict
from ..core.keys import KeyRules
from ..core.optimizer import remap_container
from ..core.sources import Sources, load_sources
from ..core.verify import DEFAULT_TOLERANCE, Tolerance, end_to_end
from ..errors import Deconv2ShuffleError, UsageError, VerificationError
from ..geometry import Mode
from ..report import MigrationReport
from .files import ReadOptions, check_new_file, write_report


def migrate(
    src: str | Path,
    dst: str | Path | None,
    *,
    sources: Sources | None = None,
    spec: str | Path | None = None,
    source_model: str | None = None,
    target_model: str | None = None,
    source_args: str | dict[str, Any] | None = None,
    target_args: str | dict[str, Any] | None = None,
    approx: bool = False,
    rename: Sequence[tuple[str, str]] = (),
    drop: Sequence[str] = (),
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    input_shape: Sequence[int] | None = None,
    allow_missing: bool = False,
    drop_unexpected: bool = False,
    report_path: str | Path | None = None,
    hash_source: bool = True,
    geometry: Mode = "minimal",
) -> MigrationReport:
    """Convert checkpoint ``src`` into ``dst``: match layers, rewrite exactly, verify, write atomically.

    Args:
        src: the checkpoint trained with ConvTranspose layers (torch, safetensors or a sharded index).
        dst: where to write the result (its extension picks the format); ``None`` checks only.
        sources: the layer list and target (:func:`load_sources`); or give ``spec`` /
            ``source_model`` / ``target_model`` (and ``*_args``) to have them loaded here.
        approx: allow an inexact target: keep the taps that fit and report the error.
        rename: ``(regex, replacement)`` rules for the other keys, after the spec's.
        drop: regexes of keys to leave out, besides the spec's.
        state_dict_key: the top-level entry holding the weights (default: found).
        trust_pickle: UNSAFE: let the pickle run any code. Only for files you trust.
        allow_globals: globals (``"module.Name"``) the pickle may use besides tensors and containers.
        force: replace an existing output (atomically), even the input itself, and an existing
            report file.
        tolerance: max relative float64 error of each converted layer.
        input_shape: the model input for the end-to-end check (default: the spec's, else guessed).
        allow_missing: accept target keys the checkpoint cannot fill.
        drop_unexpected: leave out keys the target model does not have.
        report_path: also write the report here (``.json`` or Markdown), on failure too; checked
            before any work like an output: never an input or the output of the run, never a
            non-regular file, and an existing file only with ``force``.
        hash_source: record the source's sha256 in safetensors metadata (costs one full read).
        geometry: the exact form of layers no target model or spec fixes: ``"minimal"`` (the
            fewest multiply-adds, what ``convert_model`` builds), ``"tight"`` or ``"symmetric"``.

    Returns:
        The :class:`MigrationReport` (``ok`` true).

    Raises:
        Deconv2ShuffleError: any refusal; nothing is written then, and the error's ``report``
            holds the failed run's report as plain data.
    """
    src, out = Path(src), None if dst is None else Path(dst)
    place = _ReportPlace(report_path, [src, *_named_files(spec, source_model, target_model)], out, force)
    try:
        place.check()  # before any work: the report must not replace an input, the output, or a file
        shape = _input_shape(input_shape)
        KeyRules.make(rename, drop)  # a bad pattern fails before any file is read
        reading = ReadOptions.make(state_dict_key, trust_pickle, allow_globals)
        if sources is None:
            sources = load_sources(spec, source_model, target_model, source_args, target_args)
        elif any(v is not None for v in (spec, source_model, target_model)):
            raise UsageError("give sources=... or spec= / source_model= / target_model=, not both")
        place.add_inputs(_source_files(sources))
        how = _Settings(
            approx, tuple(rename), tuple(drop), force, tolerance, allow_missing, drop_unexpected, hash_source, geometry
        )
        report = _run(src, out, sources, reading, shape, how, place)
    except Deconv2ShuffleError as e:
        failed = MigrationReport(source_file=str(src), output_file=None if out is None else str(out), notes=[str(e)])
        e.report = failed.failure(str(e), e.exit_code)
        with contextlib.suppress(Deconv2ShuffleError, OSError):  # the original error is the one to see
            place.write(failed, str(e), e.exit_code)
        raise
    place.write(report)
    return report


class _ReportPlace:
    """Where the report goes, checked like an output: never an input or the output of the run,
    never a non-regular file, never an existing file without ``force``."""

    def __init__(self, path: str | Path | None, inputs: list[Path], out: Path | None, force: bool) -> None:
        self.path = None if path is None else Path(path)
        self.inputs, self.outputs, self.force = list(inputs), [] if out is None else [out], force
        self.checked = False

    def add_inputs(self, paths: Sequence[Path]) -> None:
        self.inputs.extend(paths)
        self.check()

    def check(self) -> None:
        self.checked = False
        if self.path is not None:
            check_new_file(self.path, inputs=self.inputs, outputs=self.outputs, force=self.force)
            self.checked = True

    def write(self, report: MigrationReport, error: str | None = None, exit_code: int = 0) -> None:
        """Write the report, unless its place was refused (a refused place is never written to)."""
        if self.path is not None and self.checked:
            outputs = [*self.outputs, *map(Path, report.written)]
            write_report(report, self.path, error, exit_code, inputs=self.inputs, outputs=outputs, force=self.force)


def _ref_file(ref: str | None) -> list[Path]:
    """The Python file a model reference names (``"dir/m.py:Name"`` -> ``dir/m.py``), if it names one."""
    where = (ref or "").rpartition(":")[0]
    return [Path(where)] if where.endswith(".py") else []


def _named_files(spec: str | Path | None, source_model: str | None, target_model: str | None) -> list[Path]:
    return [*([Path(spec)] if spec else []), *_ref_file(source_model), *_ref_file(target_model)]


def _source_files(sources: Sources) -> list[Path]:
    """The files a run's sources came from: the spec, and the model files it names."""
    spec = sources.spec
    if spec is None:
        return []
    return [
        *([spec.path] if spec.path else []),
        *_ref_file(spec.model_ref("source")),
        *_ref_file(spec.model_ref("target")),
    ]


@dataclass(frozen=True)
class _Settings:
    """The conversion and writing choices of one :func:`migrate` call."""

    approx: bool
    rename: tuple[tuple[str, str], ...]
    drop: tuple[str, ...]
    force: bool
    tolerance: float
    allow_missing: bool
    drop_unexpected: bool
    hash_source: bool
    geometry: Mode = "minimal"


def _input_shape(value: Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None or (not isinstance(value, str) and len(value) == 0):
        return None
    return check_input_shape(value, f"input_shape={short(value)}", UsageError)


def _run(
    src: Path,
    out: Path | None,
    sources: Sources,
    reading: ReadOptions,
    shape: tuple[int, ...] | None,
    how: _Settings,
    place: _ReportPlace,
) -> MigrationReport:
    """load -> convert -> verify -> save."""
    ckpt = reading.load(src)
    place.add_inputs(ckpt.files)  # a sharded input's shards too
    source_hash = _prepare_output(ckpt, out, how)
    conversion = _convert(ckpt, sources, how, str(src))
    report = conversion.report
    report.loads_into = sources.loads_into([(x.source, x.target) for x in report.layers])
    _describe_source(report, ckpt, out)
    if shape is None and sources.spec is not None and sources.spec.models.get("input_shape"):
        shape = tuple(sources.spec.models["input_shape"])
    _verify_model(report, ckpt, conversion, sources, shape, how)
    updates = _optimizer_updates(report, ckpt, conversion, sources)
    if out is not None:
        _save(report, out, ckpt, conversion, updates, source_hash, how.force)
    report.ok = True
    return report


def _prepare_output(ckpt: Checkpoint, out: Path | None, how: _Settings) -> Callable[[], str] | None:
    """Refuse an output that exists (without ``force``) before any work; start hashing the source."""
    if out is None:
        return None
    check_output(out, ckpt.files, how.force)
    if how.hash_source and output_format(out) != TORCH_ZIP:
        return ckpt.sha256_later()  # hashed in a thread while the rest of the work runs
    return None


def _convert(ckpt: Checkpoint, sources: Sources, how: _Settings, source_name: str) -> Conversion:
    spec = sources.spec
    return convert_state_dict(
        ckpt.state_dict,
        sources.layers(),
        target=sources.target(),
        rename=[*(spec.rename if spec else []), *how.rename],
        drop=[*(spec.drop if spec else []), *how.drop],
        approx=how.approx,
        tolerance=how.tolerance,
        allow_missing=how.allow_missing,
        drop_unexpected=how.drop_unexpected,
        source_name=source_name,
        geometry=how.geometry,
    )


def _describe_source(report: MigrationReport, ckpt: Checkpoint, out: Path | None) -> None:
    report.source_file, report.source_format = str(ckpt.path), ckpt.format
    report.state_dict_key, report.state_dict_candidates = ckpt.state_key, ckpt.candidates
    if ckpt.passthrough:
        kept = "kept" if out is None or output_format(out) == TORCH_ZIP else "could not write (safetensors)"
        report.notes.append(f"{kept} {len(ckpt.passthrough)} non-tensor entries: {', '.join(ckpt.passthrough)}")


def _verify_model(
    report: MigrationReport,
    ckpt: Checkpoint,
    conversion: Conversion,
    sources: Sources,
    shape: tuple[int, ...] | None,
    how: _Settings,
) -> None:
    """Run old and new model end to end when models are known; refuse a result that differs."""
    source_model, target_model = sources.source_model, sources.target_model
    dropped_source_keys = (
        how.drop_unexpected and target_model is not None and any(k in report.dropped for k in ckpt.state_dict)
    )
    if report.missing or dropped_source_keys:
        report.notes.append("end-to-end check skipped: the target model does not have the same layers as the source")
        source_model = target_model = None
    try:
        e2e = end_to_end(
            ckpt.state_dict,
            conversion.state_dict,
            source_model,
            target_model,
            report.key_prefix,
            shape,
            targets=conversion.targets,
        )
    except VerificationError as e:
        raise VerificationError(f"{e}{conversion.crop_hint()}") from None
    if e2e is None:
        return
    report.end_to_end = e2e
    folded = [x for x in report.layers if x.weight_norm_folded]
    dtypes = [ckpt.state_dict[x.old_keys[0]].dtype for x in folded]
    e2e_tol = Tolerance(how.tolerance).end_to_end(dtypes)
    if folded:
        report.notes.append(
            f"weight norm folded in {dtypes[0]} (as the old model computes it); end-to-end tolerance {e2e_tol:.2g}"
        )
    e2e["tolerance"] = e2e_tol
    if "max_rel_error" in e2e and not e2e["max_rel_error"] <= e2e_tol and not how.approx:
        raise VerificationError(
            f"end-to-end: new model differs from old by {e2e['max_rel_error']:.3g} relative; nothing was written"
            + conversion.crop_hint()
        )


def _optimizer_updates(
    report: MigrationReport, ckpt: Checkpoint, conversion: Conversion, sources: Sources
) -> dict[str, Any]:
    """Optimizer state in the container, rearranged like the weights (or dropped); the report says which."""
    if ckpt.container is None or ckpt.state_key is None or not isinstance(ckpt.container, dict):
        return {}
    model = sources.source_model
    buffers = {n for n, _ in model.named_buffers()} if model is not None else set()
    updates, note = remap_container(ckpt.container, ckpt.state_dict, conversion.state_dict, conversion.key_map, buffers)
    report.optimizer = note
    return updates


def _save(
    report: MigrationReport,
    out: Path,
    ckpt: Checkpoint,
    conversion: Conversion,
    updates: dict[str, Any],
    source_hash: Callable[[], str] | None,
    force: bool,
) -> None:
    report.output_file, report.output_format = str(out), output_format(out)
    report.notes.extend(_lost_in_format(ckpt, report.output_format))
    metadata: dict[str, Any] = {}
    if report.output_format != TORCH_ZIP:
        metadata = {
            "deconv2shuffle.version": __version__,
            **({"deconv2shuffle.source_sha256": source_hash()} if source_hash is not None else {}),
            "deconv2shuffle.converted": json.dumps([f"{x.source}->{x.target}" for x in report.layers]),
        }
    written = save_checkpoint(
        out,
        conversion.state_dict,
        like=ckpt,
        container_updates=updates,
        metadata=metadata,
        force=force,
        check_values=lambda key: key in conversion.converted_keys,
    )
    report.written = [str(p) for p in written]


def _lost_in_format(ckpt: Checkpoint, fmt: str) -> list[str]:
    """What the output format cannot hold, in one note each."""
    notes = []
    if fmt != TORCH_ZIP and ckpt.container is not None and ckpt.state_key is not None:
        others = [k for k in ckpt.container if k != ckpt.state_key]
        if others:
            notes.append(
                f"safetensors holds tensors only: container entries {', '.join(map(str, others))} were not written "
                "(write a .pth/.ckpt output to keep them)"
            )
    if fmt == TORCH_ZIP and ckpt.metadata:
        notes.append(
            f"safetensors metadata ({', '.join(sorted(ckpt.metadata))}) has no place in a torch file and was not "
            "written (write a .safetensors output to keep it)"
        )
    return notes
