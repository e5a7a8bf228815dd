"""Tables for the terminal, built from results (plain data); the console module prints them.

Cells are plain text: keys, errors and tap names contain brackets that are not markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from ..report import format_axes as _axes
from ._errors import to_flags

if TYPE_CHECKING:
    from ..pipeline import BatchResult, BenchRow
    from ..report import MigrationReport


def add_row(table: Table, *cells: str) -> None:
    """Cells are plain text: keys, errors and tap names contain brackets that are not markup."""
    table.add_row(*(Text(c) for c in cells))


def fmt_err(value: float) -> str:
    return f"{value:.2e}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def migration_table(report: MigrationReport) -> Table:
    """One row per converted layer."""
    table = Table(title="deconv2shuffle migrate", title_justify="left")
    for col in ("key", "old shape", "new shape", "action", "target conv", "max abs err", "rel err", "MACs ratio"):
        table.add_column(col, no_wrap=col != "key")
    for layer in report.layers:
        action = "converted" if layer.exact else f"approx (dropped {layer.dropped_mass:.2g})"
        if layer.weight_norm_folded:
            action += ", weight norm folded"
        add_row(
            table,
            f"{layer.source} -> {layer.target}",
            str(tuple(layer.old_shape)),
            str(tuple(layer.new_shape)),
            action,
            f"k{_axes(layer.target_kernel_size)} p{_axes(layer.target_padding)} crop {_axes(layer.crop)}",
            fmt_err(layer.max_abs_error),
            fmt_err(layer.max_rel_error),
            f"{layer.macs_ratio:.2f}",
        )
    return table


def tensors_table(data: dict[str, Any]) -> Table:
    """Every tensor, grouped by module."""
    table = Table(title="tensors by module", title_justify="left")
    for col, justify in (
        ("module", "left"),
        ("tensor", "left"),
        ("shape", "left"),
        ("dtype", "left"),
        ("elements", "right"),
        ("bytes", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for group in data["modules"]:
        for i, row in enumerate(group["tensors"]):
            add_row(
                table,
                group["module"] if i == 0 else "",
                row["name"],
                str(tuple(row["shape"])),
                row["dtype"],
                f"{row['numel']:,}",
                fmt_bytes(row["bytes"]),
            )
    return table


def layers_table(data: dict[str, Any]) -> Table:
    """The ConvTranspose layers and their targets."""
    layers, origin = data["conv_transpose"], data["conv_transpose_source"]
    title = "ConvTranspose layers" + (
        " (GUESSES: confirm with --spec or --source-model)" if origin == "guess" else f" (from {origin})"
    )
    table = Table(title=title, title_justify="left")
    for col in ("module", "geometry", "weight", "target conv", "target weight", "crop", "MACs ratio", "note"):
        table.add_column(col)
    for layer in layers:
        if "error" in layer:
            add_row(table, layer["module"], "", "", "", "", "", "", to_flags(layer["error"]))
            continue
        note = layer.get("reason", "") if origin == "guess" else ""
        if layer.get("assumed"):
            note += f"; assumed {layer['assumed']}"
        if layer.get("weight_norm"):
            note = ("weight norm; " + note).strip("; ")
        add_row(
            table,
            layer["module"],
            layer.get("geometry", "?"),
            str(tuple(layer["weight_shape"])),
            f"k{_axes(layer['target_kernel_size'])} p{_axes(layer['target_padding'])}"
            if "target_kernel_size" in layer
            else "?",
            str(tuple(layer["target_weight_shape"])) if "target_weight_shape" in layer else "",
            _axes(layer["crop"]) if "crop" in layer else "",
            f"{layer['macs_ratio']:.2f}" if "macs_ratio" in layer else "",
            note,
        )
    return table


def bench_table(rows: list[BenchRow]) -> Table:
    """Forward times per layer."""
    table = Table(title=f"forward time per layer ({rows[0].device if rows else 'cpu'}, median)", title_justify="left")
    for col in (
        "layer",
        "geometry",
        "input",
        "transposed ms",
        "sub-pixel (symmetric) ms",
        "sub-pixel (tight) ms",
        "verdict",
    ):
        table.add_column(col)
    for r in rows:
        tight = f"{r.tight_ms:.3f} ({r.tight_target})" if r.tight_ms is not None else "same as symmetric"
        add_row(
            table,
            r.layer,
            r.geometry,
            str(tuple(r.input_shape)),
            f"{r.transposed_ms:.3f}",
            f"{r.symmetric_ms:.3f} ({r.symmetric_target})",
            tight,
            r.verdict,
        )
    return table


def batch_table(result: BatchResult) -> Table:
    """One row per file."""
    table = Table(title="deconv2shuffle batch", title_justify="left")
    for col in ("input", "status", "layers", "max rel error", "seconds", "detail"):
        table.add_column(col)
    for f in result.files:
        err_text = f"{f.max_rel_error:.2e}" if f.max_rel_error is not None else ""
        detail = to_flags(f.error) if f.error else (f.output if f.status != "failed" else "")
        add_row(table, f.input, f.status, str(f.layers or ""), err_text, f"{f.seconds:.2f}", detail)
    return table


def keys_table(report: MigrationReport) -> Table:
    """Every key and what happened to it."""
    table = Table(title="every key", title_justify="left")
    for col in ("old key", "new key", "action"):
        table.add_column(col)
    for layer in report.layers:
        new_weight, new_bias = layer.new_keys[0], (layer.new_keys[1:] or [""])[0]
        for old in layer.old_keys:
            new = new_bias if old.endswith(".bias") else new_weight
            folded = layer.weight_norm_folded and not old.endswith(".bias")
            add_row(table, old, new, "weight norm folded + converted" if folded else "converted")
    for key in report.copied:
        add_row(table, key, key, "copied")
    for old, new in report.renamed.items():
        add_row(table, old, new, "renamed")
    for key in report.dropped:
        add_row(table, key, "", "dropped")
    for key in report.missing:
        add_row(table, "", key, "MISSING in target")
    return table
