"""The one place that owns the terminal: results to stdout, errors and progress to stderr.

rich honours ``NO_COLOR`` and drops colour and box-drawing control codes when the output is piped.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=False)
err = Console(stderr=True)


def set_width_for_pipes() -> None:
    """A piped stdout gets a wide console so tables are not wrapped into unreadable columns."""
    global out
    if not sys.stdout.isatty():
        out = Console(width=200, soft_wrap=False)


def print_json(data: Any) -> None:
    """Plain JSON on stdout, nothing else (no markup, no wrapping) for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)


def _axes(values: Any) -> str:
    if values and isinstance(values[0], list):
        return ",".join("/".join(map(str, v)) for v in values)
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _err(value: float) -> str:
    return f"{value:.2e}"


def render_migration(report: Any) -> None:
    """The terminal table for a MigrationReport."""
    table = Table(title="deconv2shuffle migrate", title_justify="left")
    for col in ("key", "old shape", "new shape", "action", "target conv", "max abs err", "rel err", "MACs ratio"):
        table.add_column(col, no_wrap=col != "key")
    for layer in report.layers:
        action = "converted" if layer.exact else f"approx (dropped {layer.dropped_mass:.2g})"
        if layer.weight_norm_folded:
            action += ", weight norm folded"
        table.add_row(
            f"{layer.source} -> {layer.target}",
            str(tuple(layer.old_shape)),
            str(tuple(layer.new_shape)),
            action,
            f"k{_axes(layer.target_kernel_size)} p{_axes(layer.target_padding)} crop {_axes(layer.crop)}",
            _err(layer.max_abs_error),
            _err(layer.max_rel_error),
            f"{layer.macs_ratio:.2f}",
        )
    out.print(table)
    out.print(
        f"{len(report.layers)} converted, {len(report.copied)} copied, {len(report.renamed)} renamed, "
        f"{len(report.dropped)} dropped, {len(report.missing)} missing, {len(report.unexpected)} unexpected",
        highlight=False,
    )
    if report.source_file:
        used = f"[{report.state_dict_key!r}]" if report.state_dict_key else "the whole file"
        out.print(f"read {report.source_file} ({report.source_format}), state_dict from {used}", highlight=False)
    for old, new in list(report.renamed.items())[:20]:
        out.print(f"  renamed {old} -> {new}", highlight=False)
    if len(report.renamed) > 20:
        out.print(f"  ... and {len(report.renamed) - 20} more renamed", highlight=False)
    for key in report.dropped:
        out.print(f"  dropped {key}", highlight=False)
    if report.optimizer:
        out.print(f"optimizer state: {report.optimizer}", highlight=False)
    if report.end_to_end:
        e = report.end_to_end
        if "skipped" in e:
            out.print(f"end-to-end check skipped: {e['skipped']}", highlight=False)
        else:
            out.print(
                f"end-to-end ({e['dtype']}, input {tuple(e['input_shape'])}): max abs error {_err(e['max_abs_error'])}, "
                f"relative {_err(e['max_rel_error'])}",
                highlight=False,
            )
    for n in report.notes:
        out.print(f"note: {n}", highlight=False)
    if report.written:
        out.print(f"wrote {', '.join(report.written)}", highlight=False)
    elif report.output_file is None:
        out.print("check only: nothing written", highlight=False)
