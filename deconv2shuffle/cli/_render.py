"""The one place that owns the terminal: results to stdout, errors and progress to stderr.

rich honours ``NO_COLOR`` and drops colour and box-drawing control codes when the output is piped.
Every string that came from a file or a user (keys, file names, messages) is passed through
:func:`visible` first: a terminal shows control characters as escapes and never obeys them, and
rich markup in a key (``[bold]``) is printed, not applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from ._errors import to_flags
from ._tables import (
    Grid,
    batch_table,
    bench_table,
    failure_detail,
    fmt_bytes,
    fmt_err,
    keys_table,
    layers_table,
    layout,
    migration_table,
    taps_table,
    tensors_table,
    visible,
)

if TYPE_CHECKING:
    from ..pipeline import BatchResult, BenchRow, FileResult
    from ..report import MigrationReport

PIPE_WIDTH = 200  # a pipe has no width: wide enough for one line per row, for grep


def _width() -> int | None:
    """``COLUMNS`` when set, else the terminal's width, else (piped) :data:`PIPE_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPE_WIDTH


out = Console(soft_wrap=False, width=_width())
err = Console(stderr=True)


def set_width_for_pipes() -> None:
    """Measure the output again: ``COLUMNS``, the terminal, or a wide line when piped."""
    global out
    out = Console(width=_width(), soft_wrap=False)


def print_json(data: Any) -> None:
    """Plain JSON on stdout, nothing else (no markup, no wrapping) for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """``error: MESSAGE`` on stderr, one line (control characters shown as escapes)."""
    err.print(Text("error: ", style="bold red") + Text(visible(message)), highlight=False, soft_wrap=True)


def say(message: str, style: str = "") -> None:
    """A line of plain text on stdout: no markup (keys and formulas contain brackets), no control codes.

    ``style`` colours the whole line where the terminal shows colour (a warning), never in a pipe.
    """
    out.print(Text(visible(message), style=style), highlight=False, soft_wrap=True)


def show(grid: Grid) -> None:
    """A table, fitted to the terminal (see :func:`layout`), its title on a line of its own."""
    if grid.title:
        say(grid.title)
    fitted = layout(grid, out.width)
    if isinstance(fitted, list):
        for line in fitted:
            say(line)
    else:
        out.print(fitted)


def render_migration(report: MigrationReport) -> None:
    """The terminal table for a MigrationReport."""
    show(migration_table(report))
    say(
        f"{len(report.layers)} converted, {len(report.copied)} copied, {len(report.renamed)} renamed, "
        f"{len(report.dropped)} dropped, {len(report.missing)} missing, {len(report.unexpected)} unexpected"
    )
    if report.source_file:
        used = f"[{report.state_dict_key!r}]" if report.state_dict_key else "the whole file"
        say(f"read {report.source_file} ({report.source_format}), state_dict from {used}")
    for old, new in list(report.renamed.items())[:20]:
        say(f"  renamed {old} -> {new}")
    if len(report.renamed) > 20:
        say(f"  ... and {len(report.renamed) - 20} more renamed")
    for key in report.dropped:
        say(f"  dropped {key}")
    if report.optimizer:
        say(f"optimizer state: {report.optimizer}")
    if report.end_to_end:
        e = report.end_to_end
        if "skipped" in e:
            say(f"warning: end-to-end check skipped: {to_flags(e['skipped'])}", style="bold yellow")
        else:
            on = f"input {tuple(e['input_shape'])}" if "input_shape" in e else f"inputs {e['inputs']}"
            say(
                f"end-to-end ({e['dtype']}, {on}): "
                f"max abs error {fmt_err(e['max_abs_error'])}, "
                f"relative {fmt_err(e['max_rel_error'])}"
                + (
                    f" ({e['non_finite_mismatch']} values NaN/Inf in one model only: the NaN/Inf weights meet "
                    "the padding's zeros)"
                    if e.get("non_finite_mismatch")
                    else ""
                )
            )
    for n in report.notes:
        say(f"note: {to_flags(n)}")
    loads_into = getattr(report, "loads_into", None)
    if loads_into:
        advice = (
            "; to fit your own Conv + PixelShuffle class, give --target-model" if "convert_model" in loads_into else ""
        )
        say(f"loads into {loads_into}{advice}")
    if report.written:
        say(f"wrote {', '.join(report.written)}")
    elif report.output_file is None:
        say("check only: nothing written")


def render_inspect(data: dict[str, Any]) -> None:
    """The container, every tensor by module, totals, and the ConvTranspose layers."""
    say(f"{data['file']}: {data['format']}, {fmt_bytes(data['file_bytes'])}")
    if data["top_level"]:
        say("top-level entries:")
        for key, summary in data["top_level"].items():
            mark = "  <- state_dict used" if key == data["state_dict_key"] else ""
            say(f"  {key}: {summary}{mark}")
    else:
        say("the file is a bare state_dict")
    if data["metadata"]:
        text = json.dumps(data["metadata"])
        keys = list(data["metadata"])
        shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
        say(f"metadata: {text}" if len(text) <= 300 else f"metadata ({len(keys)} entries, see --json): {shown}")
    show(tensors_table(data))
    t = data["totals"]
    dtypes = ", ".join(f"{k}: {v['tensors']} tensors, {fmt_bytes(v['bytes'])}" for k, v in t["by_dtype"].items())
    say(f"total: {t['tensors']} tensors, {t['numel']:,} elements, {fmt_bytes(t['bytes'])} ({dtypes})")
    layers = data["conv_transpose"]
    origin = data["conv_transpose_source"]
    if not layers:
        say(
            "no ConvTranspose layers "
            + ("listed" if origin != "guess" else "recognised; give --spec or --source-model")
        )
        return
    show(layers_table(data))


def render_explain(data: dict[str, Any]) -> None:
    """The tap table per axis, the example lengths, why it is exact, and the cost."""
    verdict = "exact" if data["exact"] else "NOT exact"
    say(f"ConvTranspose {data['source']}  ->  conv {data['target']} + PixelShuffle + crop: {verdict}")
    seen: dict[str, int] = {}
    for ax in data["axes"]:
        sig = json.dumps({k: v for k, v in ax.items() if k != "axis"})
        if sig in seen:
            say(f"axis {ax['axis']}: same as axis {seen[sig]}")
            continue
        seen[sig] = ax["axis"]
        show(taps_table(ax))
        e = ax["example"]
        say(
            f"  input length {e['input']}: ConvTranspose gives {e['transposed_output']}; "
            f"the conv gives {e['conv_cells']} "
            f"cells, x{ax['stride']} after the shuffle = {e['after_shuffle']}, "
            f"crop {e['crop_start']} at the start and {e['crop_end']} at the end"
        )
    say("")
    say(
        "Why: write each output index as Y = q*r + s. Source tap t reaches phase s exactly when (s + p - t*d) is a "
        "multiple of r, and then reads x[q + (s + p - t*d)/r]. So each phase is an ordinary stride-1 convolution "
        "of x, and the padded conv puts that tap at j = offset + padding (the table). Every tap lands inside the "
        "kernel and the conv yields enough cells, so conv -> PixelShuffle (channel o*R + phase) -> crop equals the "
        "ConvTranspose; the weights are copies and zeros, never new numbers."
        if data["exact"]
        else "Not exact: " + "; ".join(data["reasons"])
    )
    if any(data.get("crop_start", ())):
        say(
            "Start crop: the conv computes Y' = Y + c (c cells cropped at the start after the shuffle), so its phase s "
            "holds the ConvTranspose's phase (s - c) mod r; the shift lines every phase's taps up in one narrow window."
        )
    if data.get("forward_crop"):
        say(f"a hand-written forward crops the shuffled output y to {data['forward_crop']}")
    say(
        f"cost: {data['phases']} phases x target kernel / source kernel = {data['macs_ratio']:.2f}x the multiply-adds "
        f"(zero taps are real work). exact forms: minimal {data['minimal']}, {data['minimal_macs_ratio']:.2f}x; "
        f"symmetric {data['symmetric']}, {data['symmetric_macs_ratio']:.2f}x; "
        f"tight (asymmetric padding) {data['tight']}, {data['tight_macs_ratio']:.2f}x"
    )


def render_bench(rows: list[BenchRow]) -> None:
    """Median forward times per layer, old and both new forms, and the verdict."""
    show(bench_table(rows))


def batch_progress() -> Any:
    """A progress bar on stderr for a batch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def render_batch(result: BatchResult) -> None:
    """One row per file, and the counts."""
    show(batch_table(result))
    say(
        f"{result.count('converted')} converted, {result.count('skipped')} up to date, {result.count('failed')} failed "
        f"in {result.seconds:.1f} s"
    )
    unchecked = [f for f in result.files if f.status in ("converted", "checked") and f.end_to_end_error is None]
    if unchecked:
        say(
            f"warning: {len(unchecked)} file(s) had ONLY THE PER-LAYER CHECKS: no end-to-end check ran for "
            f"{', '.join(Path(f.input).name for f in unchecked[:3])}{' ...' if len(unchecked) > 3 else ''} "
            "(give --source-model, or [models] in their specs, to check the whole model)",
            style="bold yellow",
        )


def status(message: str, enabled: bool = True) -> Any:
    """A spinner on stderr while long work runs; nothing when stderr is not a terminal."""
    if not enabled or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(Text(visible(message)), spinner="dots")


def render_keys(report: MigrationReport) -> None:
    """Every key of the old checkpoint (and every missing target key) with its action."""
    show(keys_table(report))


# --------------------------------------------------------------------------------------------
# One entry per command: JSON for scripts, tables for people


def migration(report: MigrationReport, *, json_out: bool, verbose: bool, report_path: Path | None) -> None:
    """What ``migrate`` prints."""
    if json_out:
        print_json(report.to_dict())
        return
    render_migration(report)
    if verbose:
        render_keys(report)
    if report_path is not None:
        say(f"report: {report_path}")


def inspection(data: dict[str, Any], *, json_out: bool) -> None:
    """What ``inspect`` prints."""
    if json_out:
        print_json(data)
    else:
        set_width_for_pipes()
        render_inspect(data)


def explanation(data: dict[str, Any], *, json_out: bool) -> None:
    """What ``explain`` prints."""
    if json_out:
        print_json(data)
    else:
        set_width_for_pipes()
        render_explain(data)


def timings(rows: list[BenchRow], *, json_out: bool) -> None:
    """What ``bench`` prints."""
    if json_out:
        print_json([r.to_dict() for r in rows])
    else:
        set_width_for_pipes()
        render_bench(rows)


def batch_summary(result: BatchResult, *, json_out: bool) -> None:
    """What ``batch`` prints when it is done."""
    if json_out:
        print_json(result.to_dict())
    else:
        render_batch(result)


def spec_text(text: str) -> None:
    """A spec on stdout; control characters (only a comment could hold one) written as escapes."""
    sys.stdout.write("\n".join(visible(line) for line in text.split("\n")))


@contextlib.contextmanager
def batch_progress_hooks() -> Iterator[tuple[Callable[[int], None], Callable[[FileResult], None]]]:
    """A progress bar for a batch, and the ``on_start`` / ``on_file`` hooks that drive it.

    The bar appears only once the batch starts: an error before that is one line, with no
    empty bar line above it.
    """
    progress = batch_progress()
    task: list[Any] = []

    def on_start(total: int) -> None:
        if not task:
            progress.start()
        task.append(progress.add_task("converting", total=total))

    def on_file(result: FileResult) -> None:
        mark = {"converted": "ok", "skipped": "up to date", "failed": "FAILED"}.get(result.status, result.status)
        detail = f": {failure_detail(result.input, result.error)}" if result.error else ""
        progress.console.print(Text(visible(f"{mark:>10}  {result.input}{detail}")), highlight=False, soft_wrap=True)
        if task:
            progress.advance(task[-1])

    try:
        yield on_start, on_file
    finally:
        if task:
            progress.stop()
