"""Tables for the terminal, built from results (plain data); the console module prints them.

A table is a :class:`Grid` of plain strings. :func:`layout` fits it to the terminal's width:
identifier columns (keys, modules, files) are never narrower than their longest name, the
others wrap at spaces, and free text folds only as a last resort; when that would not fit, or
only with rows many lines tall, each row becomes a block: its first cell on a line of its own,
then ``header: value`` items. Nothing is ever dropped or cut with an ellipsis.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from ..report import format_axes as _axes
from ._errors import to_flags

if TYPE_CHECKING:
    from ..pipeline import BatchResult, BenchRow
    from ..report import MigrationReport

Justify = Literal["left", "center", "right"]
_FOLD_MIN = 12  # free-text columns may fold words down to this width before rows become blocks
_MAX_ROW_LINES = 4  # a table whose rows would wrap taller than this is shown as blocks instead
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\x00-\x7f]")


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ord(ch) >= 0xA0 and unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"):
        return ch  # printable non-ASCII (names in any script) stays as it is
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with control characters and invisible format characters written as escapes.

    Keys, file names and messages come from files that anyone may have written; a terminal must
    show them, not obey them (``\\x1b[2J`` clears a screen, ``\\x1b]0;...\\x07`` retitles the window).

    Args:
        text: any string.

    Returns:
        The string with each control or format character (C0, DEL, C1, bidirectional overrides,
        zero-width characters) written as ``\\xNN`` / ``\\uNNNN``; everything else unchanged.
    """
    return _INVISIBLE.sub(_escape_char, text)


@dataclass(frozen=True)
class Col:
    """A column: its header, alignment, and whether its words are identifiers to keep whole."""

    header: str
    justify: Justify = "left"
    whole: bool = False  # keys, modules, files: never broken inside a word
    free: bool = False  # free text (notes, errors): may fold long words before rows become blocks


@dataclass
class Grid:
    """A table as plain strings; :func:`layout` turns it into what fits the terminal."""

    title: str | None
    columns: list[Col]
    rows: list[list[str]] = field(default_factory=list)
    grouped: bool = False  # an empty first cell means "the same as the row above"

    def add(self, *cells: str) -> None:
        """Append a row (escaped: cells come from files and are never markup or control codes)."""
        self.rows.append([visible(c) for c in cells])


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def _widest_line(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _lines(text: str, width: int) -> int:
    """How many lines ``text`` takes wrapped at spaces into ``width`` (longer words fold)."""
    count = 0
    for paragraph in text.splitlines() or [""]:
        used, count = 0, count + 1
        for word in paragraph.split():
            n = cell_len(word)
            if used and used + 1 + n <= width:
                used += 1 + n
                continue
            if used:
                count += 1
            count += (n - 1) // width if n > width else 0
            used = n % width or width if n > width else n
    return count


def _widths(grid: Grid, width: int) -> list[int] | None:
    """Content width of each column so the table fits ``width`` with short rows; ``None``: it cannot."""
    cells = [{c.header, *(row[i] for row in grid.rows)} for i, c in enumerate(grid.columns)]
    natural = [max(1, *(_widest_line(t) for t in col)) for col in cells]
    minimum = [max(1, *(_longest_word(t) for t in col)) for col in cells]
    for i, c in enumerate(grid.columns):
        if c.free:
            minimum[i] = min(minimum[i], _FOLD_MIN)
    available = width - (3 * len(grid.columns) + 1)  # one space either side of each cell, and the borders
    if sum(natural) <= available:
        return natural
    if sum(minimum) > available:
        return None
    widths = list(minimum)
    spare = available - sum(widths)
    step = max(1, spare // 32)
    while spare > 0:  # widen whichever column makes the tallest row
        heights = [max(_lines(t, widths[i]) for t in col) for i, col in enumerate(cells)]
        growable = [i for i in range(len(widths)) if widths[i] < natural[i]]
        if not growable:
            break
        i = max(growable, key=lambda j: (heights[j], natural[j] - widths[j]))
        grow = min(step, spare, natural[i] - widths[i])
        widths[i] += grow
        spare -= grow
    tallest = max((_lines(t, widths[i]) for i, col in enumerate(cells) for t in col), default=1)
    return widths if tallest <= _MAX_ROW_LINES else None


def _blocks(grid: Grid, width: int) -> list[str]:
    """Each row as its first cell on a line (empty: same as above), then its other cells as
    ``header: value`` items, packed into lines of ``width`` where they fit."""
    lines: list[str] = []
    for row in grid.rows:
        if row[0] or not grid.grouped:
            lines.append(row[0] or "-")
        line = ""
        for c, v in zip(grid.columns[1:], row[1:], strict=True):
            if not v:
                continue
            item = f"{c.header}: {v}"
            if line and cell_len(line) + 2 + cell_len(item) <= width:
                line += ", " + item
                continue
            if line:
                lines.append(line)
            line = "  " + item
        if line:
            lines.append(line)
    return lines


def layout(grid: Grid, width: int) -> Table | list[str]:
    """``grid`` fitted to ``width`` columns: a table, or (too narrow for a readable table) lines of text.

    Args:
        grid: the table's cells.
        width: the terminal's width.

    Returns:
        A rich ``Table`` whose column widths fit, or, when it would not fit without rows taller
        than a few lines, one block per row: the first cell on its own line, then the other
        cells as ``header: value`` items.
    """
    widths = _widths(grid, width)
    if widths is None:
        return _blocks(grid, width)
    table = Table()
    for c, w in zip(grid.columns, widths, strict=True):
        table.add_column(c.header, justify=c.justify, width=w, overflow="fold")
    for row in grid.rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def fmt_err(value: float) -> str:
    """An error in three significant digits, ``1.12e-15``."""
    return f"{value:.2e}"


def fmt_bytes(n: int) -> str:
    """A byte count for people: ``292.8 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def migration_table(report: MigrationReport) -> Grid:
    """One row per converted layer."""
    heads = ("old shape", "new shape", "action", "target conv", "max abs err", "rel err", "MACs ratio")
    grid = Grid("deconv2shuffle migrate", [Col("key", whole=True), *(Col(h) for h in heads)])
    for layer in report.layers:
        action = "converted" if layer.exact else f"approx (dropped {layer.dropped_mass:.2g})"
        if layer.weight_norm_folded:
            action += ", weight norm folded"
        grid.add(
            f"{layer.source} -> {layer.target}",
            str(tuple(layer.old_shape)),
            str(tuple(layer.new_shape)),
            action,
            f"k{_axes(layer.target_kernel_size)} p{_axes(layer.target_padding)} "
            f"crop {_axes(layer.crop_start)}/{_axes(layer.crop_end)}",
            fmt_err(layer.max_abs_error),
            fmt_err(layer.max_rel_error),
            f"{layer.macs_ratio:.2f}",
        )
    return grid


def tensors_table(data: dict[str, Any]) -> Grid:
    """Every tensor, grouped by module."""
    grid = Grid(
        "tensors by module",
        [
            Col("module", whole=True),
            Col("tensor", whole=True),
            Col("shape"),
            Col("dtype"),
            Col("elements", "right"),
            Col("bytes", "right"),
        ],
        grouped=True,
    )
    for group in data["modules"]:
        for i, row in enumerate(group["tensors"]):
            grid.add(
                group["module"] if i == 0 else "",
                row["name"],
                str(tuple(row["shape"])),
                row["dtype"],
                f"{row['numel']:,}",
                fmt_bytes(row["bytes"]),
            )
    return grid


def layers_table(data: dict[str, Any]) -> Grid:
    """The ConvTranspose layers and their targets."""
    layers, origin = data["conv_transpose"], data["conv_transpose_source"]
    title = "ConvTranspose layers" + (
        " (GUESSES: confirm with --spec or --source-model)" if origin == "guess" else f" (from {origin})"
    )
    heads = ("geometry", "weight", "target conv", "target weight", "crop start/end", "MACs ratio")
    grid = Grid(title, [Col("module", whole=True), *(Col(h) for h in heads), Col("note", free=True)])
    for layer in layers:
        if layer.get("error"):
            grid.add(layer["module"], "", "", "", "", "", "", to_flags(layer["error"]))
            continue
        note = layer.get("reason", "") if origin == "guess" else ""
        if layer.get("assumed"):
            note += f"; assumed {layer['assumed']}"
        if layer.get("weight_norm"):
            note = ("weight norm; " + note).strip("; ")
        grid.add(
            layer["module"],
            layer.get("geometry", "?"),
            str(tuple(layer["weight_shape"])),
            f"k{_axes(layer['target_kernel_size'])} p{_axes(layer['target_padding'])}"
            if layer.get("target_kernel_size")
            else "?",
            str(tuple(layer["target_weight_shape"])) if layer.get("target_weight_shape") else "",
            f"{_axes(layer['crop_start'])}/{_axes(layer['crop_end'])}" if layer.get("crop_end") else "",
            f"{layer['macs_ratio']:.2f}" if layer.get("macs_ratio") else "",
            note,
        )
    return grid


def taps_table(ax: dict[str, Any]) -> Grid:
    """One axis of ``explain``: which source tap each phase puts at each target tap."""
    K = ax["target_kernel"]
    pad = ax["target_padding"]
    title = (
        f"axis {ax['axis']}: k{ax['kernel']} s{ax['stride']} p{ax['padding']}"
        + (f" op{ax['output_padding']}" if ax["output_padding"] else "")
        + (f" d{ax['dilation']}" if ax["dilation"] != 1 else "")
        + f" -> target taps j (kernel {K}, padding {pad[0]}"
        + (f"/{pad[1]}" if pad[0] != pad[1] else "")
        + (f", shift {ax['shift']}" if ax.get("shift") else "")
        + ")"
    )
    columns = [Col("phase")]
    columns += [Col(f"j={j}" + ("" if 0 <= j < K else " (outside)"), "center") for j in ax["columns"]]
    grid = Grid(title, columns)
    for ph in ax["phases"]:
        phase = f"s={ph['phase']}" + (f" (source s={ph['source_phase']})" if ax.get("shift") else "")
        grid.add(phase, *[("." if t is None else f"w[{t}]") for t in ph["row"]])
    return grid


def bench_table(rows: list[BenchRow]) -> Grid:
    """Forward times per layer and runtime: the ConvTranspose, then each exact form against it."""
    device = rows[0].device if rows else "cpu"
    repeats = rows[0].repeats if rows else 0
    heads = ("input", "runtime", "form", "conv", "MACs ratio", "ms", "spread ms")
    grid = Grid(
        f"forward time per layer ({device}; median and 25-75% spread of {repeats} rounds)",
        [Col("layer", whole=True), *(Col(h) for h in heads), Col("vs ConvTranspose", free=True)],
    )
    for r in rows:
        spread = "-".join(f"{v:.3f}" for v in r.transposed_spread_ms)
        grid.add(
            r.layer, str(tuple(r.input_shape)), r.runtime, "ConvTranspose", r.geometry, "1.00",
            f"{r.transposed_ms:.3f}", spread, r.verdict,
        )  # fmt: skip
        for f in r.forms:
            versus = f"{f.ratio:.2f}x time, {f.verdict}" + (f" (same conv as {f.same_as})" if f.same_as else "")
            grid.add(
                "", "", "", f.form, f.target, f"{f.macs_ratio:.2f}", f"{f.median_ms:.3f}",
                "-".join(f"{v:.3f}" for v in f.spread_ms), versus,
            )  # fmt: skip
    return grid


def batch_table(result: BatchResult) -> Grid:
    """One row per file."""
    heads = ("status", "layers", "max rel error", "seconds")
    grid = Grid("deconv2shuffle batch", [Col("input", whole=True), *(Col(h) for h in heads), Col("detail", free=True)])
    for f in result.files:
        err_text = f"{f.max_rel_error:.2e}" if f.max_rel_error is not None else ""
        detail = failure_detail(f.input, f.error) if f.error else (f.output if f.status != "failed" else "")
        grid.add(f.input, f.status, str(f.layers or ""), err_text, f"{f.seconds:.2f}", detail)
    return grid


def failure_detail(path: str, error: str) -> str:
    """A file's error without the file's name in front (its row or line already names it)."""
    message = to_flags(error)
    for prefix in (f"{path}: ", f"{path}:"):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def keys_table(report: MigrationReport) -> Grid:
    """Every key and what happened to it."""
    grid = Grid("every key", [Col("old key", whole=True), Col("new key", whole=True), Col("action")])
    for layer in report.layers:
        new_weight, new_bias = layer.new_keys[0], (layer.new_keys[1:] or [""])[0]
        for old in layer.old_keys:
            new = new_bias if old.endswith(".bias") else new_weight
            folded = layer.weight_norm_folded and not old.endswith(".bias")
            grid.add(old, new, "weight norm folded + converted" if folded else "converted")
    for key in report.copied:
        grid.add(key, key, "copied")
    for old, new in report.renamed.items():
        grid.add(old, new, "renamed")
    for key in report.dropped:
        grid.add(key, "", "dropped")
    for key in report.missing:
        grid.add("", key, "MISSING in target")
    return grid
