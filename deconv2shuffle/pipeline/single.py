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
from ..errors import Deconv2ShuffleError, SpecError, UsageError, VerificationError
from ..examples import ExampleInputs, load_example_inputs
from ..geometry import Mode
from ..report import MigrationReport
from .files import ReadOptions
from .places import ReportPlace, named_files, ref_file, source_files

NO_MODEL = (
    "ONLY THE PER-LAYER CHECKS RAN: no source model is known, so the whole model was never run and a wrong "
    "stride or padding in the spec would go unseen; give source_model='file.py:Name' (or [models] source in "
    "the spec) to check the whole model"
)


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
    example_inputs: str | Path | ExampleInputs | None = None,
    accept_guesses: bool = False,
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
        input_shape: the shape of the one random input of the end-to-end check (default: the
            spec's, else guessed from the source model).
        allow_missing: accept target keys the checkpoint cannot fill.
        drop_unexpected: leave out keys the target model does not have.
        report_path: also write the report here (``.json`` or Markdown), on failure too; checked
            before any work like an output: never an input or the output of the run, never a
            non-regular file, and an existing file only with ``force``.
        hash_source: record the source's sha256 in safetensors metadata (costs one full read).
        geometry: the exact form of layers no target model or spec fixes: ``"minimal"`` (the
            fewest multiply-adds, what ``convert_model`` builds), ``"tight"`` or ``"symmetric"``.
        example_inputs: real inputs for the end-to-end check, for models that take several (a
            timestep, a condition): a ``.pt``/``.safetensors`` file of ``args.N`` / ``kwargs.NAME``
            tensors, a ``file.py:make_inputs`` reference (its code runs), or an
            :class:`~deconv2shuffle.examples.ExampleInputs` (default: the spec's ``[models]
            example_inputs``). Not with ``input_shape``.
        accept_guesses: convert layers a draft spec still marks ``guessed = true`` although no
            source model checks the result end to end (otherwise refused).

    Returns:
        The :class:`MigrationReport` (``ok`` true).

    Raises:
        Deconv2ShuffleError: any refusal; nothing is written then, and the error's ``report``
            holds the failed run's report as plain data.
    """
    src, out = Path(src), None if dst is None else Path(dst)
    place = ReportPlace(report_path, [src, *named_files(spec, source_model, target_model)], out, force)
    try:
        place.check()  # before any work: the report must not replace an input, the output, or a file
        shape = _input_shape(input_shape)
        KeyRules.make(rename, drop)  # a bad pattern fails before any file is read
        reading = ReadOptions.make(state_dict_key, trust_pickle, allow_globals)
        if sources is None:
            sources = load_sources(spec, source_model, target_model, source_args, target_args)
        elif any(v is not None for v in (spec, source_model, target_model)):
            raise UsageError("give sources=... or spec= / source_model= / target_model=, not both")
        place.add_inputs(source_files(sources))
        inputs = _example_inputs(example_inputs, sources, reading, shape, place)
        how = _Settings(
            approx,
            tuple(rename),
            tuple(drop),
            force,
            tolerance,
            allow_missing,
            drop_unexpected,
            hash_source,
            geometry,
            accept_guesses,
        )
        _refuse_guesses(sources, how, checked=None if sources.source_model is not None else False)
        report = _run(src, out, sources, reading, (shape, inputs), how, place)
    except Deconv2ShuffleError as e:
        failed = MigrationReport(source_file=str(src), output_file=None if out is None else str(out), notes=[str(e)])
        e.report = failed.failure(str(e), e.exit_code)
        with contextlib.suppress(Deconv2ShuffleError, OSError):  # the original error is the one to see
            place.write(failed, str(e), e.exit_code)
        raise
    place.write(report)
    return report


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
    accept_guesses: bool = False


def _example_inputs(
    given: str | Path | ExampleInputs | None,
    sources: Sources,
    reading: ReadOptions,
    shape: tuple[int, ...] | None,
    place: ReportPlace,
) -> ExampleInputs | None:
    """The end-to-end check's example inputs: given, or the spec's ``[models] example_inputs``."""
    if given is None and sources.spec is not None:
        given = sources.spec.model_ref("example_inputs")
    if given is None:
        return None
    if shape is not None:
        raise UsageError(f"input_shape={shape} and example_inputs={str(given)!r} say the same thing; give one")
    if isinstance(given, ExampleInputs):
        return given
    place.add_inputs(ref_file(str(given)) if ":" in str(given) else [Path(given)])
    return load_example_inputs(given, trust_pickle=reading.trust_pickle)


def _refuse_guesses(sources: Sources, how: _Settings, checked: bool | None) -> None:
    """A layer still marked ``guessed = true`` converts only when the whole model is checked, or when accepted.

    ``checked``: whether the end-to-end check ran (``None``: not known yet, it runs later).
    """
    spec = sources.spec
    guessed = [x for x in spec.layers if x.guessed] if spec is not None else []
    if not guessed or how.accept_guesses or checked is not False:
        return
    first = guessed[0]
    where = f"{spec.path if spec is not None and spec.path else '<spec>'}" + (f":{first.line}" if first.line else "")
    more = f" (and {len(guessed) - 1} more)" if len(guessed) > 1 else ""
    raise SpecError(
        f"{where}: layer {first.source!r}{more} is still marked guessed = true: a checkpoint alone cannot tell "
        "stride or padding, and no source model checks the result end to end; check the layer against the "
        "trained model and delete the guessed line, or give source_model='file.py:Name', or pass "
        "accept_guesses=True to convert the guess as it stands"
    )


def _input_shape(value: Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None or (not isinstance(value, str) and len(value) == 0):
        return None
    return check_input_shape(value, f"input_shape={short(value)}", UsageError)


def _run(
    src: Path,
    out: Path | None,
    sources: Sources,
    reading: ReadOptions,
    given: tuple[tuple[int, ...] | None, ExampleInputs | None],
    how: _Settings,
    place: ReportPlace,
) -> MigrationReport:
    """load -> convert -> verify -> save; ``given``: the input shape or the example inputs, if any."""
    shape, inputs = given
    ckpt = reading.load(src)
    place.add_inputs(ckpt.files)  # a sharded input's shards too
    source_hash = _prepare_output(ckpt, out, how)
    conversion = _convert(ckpt, sources, how, str(src))
    report = conversion.report
    report.loads_into = sources.loads_into([(x.source, x.target) for x in report.layers])
    _describe_source(report, ckpt, out)
    if shape is None and inputs is None and sources.spec is not None and sources.spec.models.get("input_shape"):
        shape = tuple(sources.spec.models["input_shape"])
    _verify_model(report, ckpt, conversion, sources, (shape, inputs), how)
    e2e = report.end_to_end
    _refuse_guesses(sources, how, checked=e2e is not None and "skipped" not in e2e)
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
    given: tuple[tuple[int, ...] | None, ExampleInputs | None],
    how: _Settings,
) -> None:
    """Run old and new model end to end when models are known; refuse a result that differs.

    Without a source model, the report says loudly that only the per-layer checks ran.
    """
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
            given[0],
            targets=conversion.targets,
            inputs=given[1],
        )
    except VerificationError as e:
        raise VerificationError(f"{e}{conversion.crop_hint()}") from None
    if e2e is None:
        if sources.source_model is None:
            report.end_to_end = {"skipped": NO_MODEL}
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
