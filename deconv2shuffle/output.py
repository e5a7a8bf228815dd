"""The one place that owns the terminal: results to stdout, errors and progress to stderr.

rich honours ``NO_COLOR`` and drops colour and box-drawing control codes when the output is piped.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .report import format_axes as _axes

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
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A line of plain text on stdout: no markup parsing (keys and formulas contain brackets)."""
    out.print(message, markup=False, highlight=False, soft_wrap=True)


def _add_row(table: Table, *cells: str) -> None:
    """Cells are plain text: keys, errors and tap names contain brackets that are not markup."""
    table.add_row(*(Text(c) for c in cells))


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
        _add_row(
            table,
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
            say(f"end-to-end check skipped: {e['skipped']}")
        else:
            say(
                f"end-to-end ({e['dtype']}, input {tuple(e['input_shape'])}): "
                f"max abs error {_err(e['max_abs_error'])}, "
                f"relative {_err(e['max_rel_error'])}"
            )
    for n in report.notes:
        say(f"note: {n}")
    if report.written:
        say(f"wrote {', '.join(report.written)}")
    elif report.output_file is None:
        say("check only: nothing written")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_inspect(data: dict[str, Any]) -> None:
    say(f"{data['file']}: {data['format']}, {_bytes(data['file_bytes'])}")
    if data["top_level"]:
        say("top-level entries:")
        for key, summary in data["top_level"].items():
            mark = "  <- state_dict used" if key == data["state_dict_key"] else ""
            say(f"  {key}: {summary}{mark}")
    else:
        say("the file is a bare state_dict")
    if data["metadata"]:
        say(f"metadata: {json.dumps(data['metadata'])[:300]}")
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
            _add_row(
                table,
                group["module"] if i == 0 else "",
                row["name"],
                str(tuple(row["shape"])),
                row["dtype"],
                f"{row['numel']:,}",
                _bytes(row["bytes"]),
            )
    out.print(table)
    t = data["totals"]
    dtypes = ", ".join(f"{k}: {v['tensors']} tensors, {_bytes(v['bytes'])}" for k, v in t["by_dtype"].items())
    say(f"total: {t['tensors']} tensors, {t['numel']:,} elements, {_bytes(t['bytes'])} ({dtypes})")
    layers = data["conv_transpose"]
    origin = data["conv_transpose_source"]
    if not layers:
        say(
            "no ConvTranspose layers "
            + ("listed" if origin != "guess" else "recognised; give --spec or --source-model")
        )
        return
    title = "ConvTranspose layers" + (
        " (GUESSES: confirm with --spec or --source-model)" if origin == "guess" else f" (from {origin})"
    )
    table = Table(title=title, title_justify="left")
    for col in ("module", "geometry", "weight", "target conv", "target weight", "crop", "MACs ratio", "note"):
        table.add_column(col)
    for layer in layers:
        if "error" in layer:
            _add_row(table, layer["module"], "", "", "", "", "", "", layer["error"])
            continue
        note = layer.get("reason", "") if origin == "guess" else ""
        if layer.get("assumed"):
            note += f"; assumed {layer['assumed']}"
        if layer.get("weight_norm"):
            note = ("weight norm; " + note).strip("; ")
        _add_row(
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
    out.print(table)


def render_explain(data: dict[str, Any]) -> None:
    verdict = "exact" if data["exact"] else "NOT exact"
    say(f"ConvTranspose {data['source']}  ->  conv {data['target']} + PixelShuffle + crop: {verdict}")
    seen: dict[str, int] = {}
    for ax in data["axes"]:
        sig = json.dumps({k: v for k, v in ax.items() if k != "axis"})
        if sig in seen:
            say(f"axis {ax['axis']}: same as axis {seen[sig]}")
            continue
        seen[sig] = ax["axis"]
        K = ax["target_kernel"]
        table = Table(
            title=f"axis {ax['axis']}: k{ax['kernel']} s{ax['stride']} p{ax['padding']}"
            + (f" op{ax['output_padding']}" if ax["output_padding"] else "")
            + (f" d{ax['dilation']}" if ax["dilation"] != 1 else "")
            + f" -> target taps j (kernel {K}, padding {ax['target_padding'][0]}"
            + (f"/{ax['target_padding'][1]}" if ax["target_padding"][0] != ax["target_padding"][1] else "")
            + ")",
            title_justify="left",
        )
        table.add_column("phase")
        for j in ax["columns"]:
            table.add_column(f"j={j}" + ("" if 0 <= j < K else " (outside)"), justify="center")
        for ph in ax["phases"]:
            _add_row(table, f"s={ph['phase']}", *[("." if t is None else f"w[{t}]") for t in ph["row"]])
        out.print(table)
        e = ax["example"]
        say(
            f"  input length {e['input']}: ConvTranspose gives {e['transposed_output']}; "
            f"the conv gives {e['conv_cells']} "
            f"cells, x{ax['stride']} after the shuffle = {e['after_shuffle']}, crop {e['crop']} at the end"
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
    say(
        f"cost: {data['phases']} phases x target kernel / source kernel = {data['macs_ratio']:.2f}x the multiply-adds "
        f"(zero taps are real work). smallest exact: {data['smallest']}; tight (asymmetric padding): {data['tight']}, "
        f"{data['tight_macs_ratio']:.2f}x"
    )


def render_bench(rows: list[Any]) -> None:
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
        _add_row(
            table,
            r.layer,
            r.geometry,
            str(tuple(r.input_shape)),
            f"{r.transposed_ms:.3f}",
            f"{r.symmetric_ms:.3f} ({r.symmetric_target})",
            tight,
            r.verdict,
        )
    out.print(table)


def batch_progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def render_batch(result: Any) -> None:
    table = Table(title="deconv2shuffle batch", title_justify="left")
    for col in ("input", "status", "layers", "max rel error", "seconds", "detail"):
        table.add_column(col)
    for f in result.files:
        err_text = f"{f.max_rel_error:.2e}" if f.max_rel_error is not None else ""
        detail = f.error or (f.output if f.status != "failed" else "")
        _add_row(table, f.input, f.status, str(f.layers or ""), err_text, f"{f.seconds:.2f}", detail)
    out.print(table)
    say(
        f"{result.count('converted')} converted, {result.count('skipped')} up to date, {result.count('failed')} failed "
        f"in {result.seconds:.1f} s"
    )


def status(message: str, enabled: bool = True) -> Any:
    """A spinner on stderr while long work runs; nothing when stderr is not a terminal."""
    import contextlib

    if not enabled or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(Text(message), spinner="dots")


def render_keys(report: Any) -> None:
    """Every key of the old checkpoint (and every missing target key) with its action."""
    table = Table(title="every key", title_justify="left")
    for col in ("old key", "new key", "action"):
        table.add_column(col)
    for layer in report.layers:
        new_weight, new_bias = layer.new_keys[0], (layer.new_keys[1:] or [""])[0]
        for old in layer.old_keys:
            new = new_bias if old.endswith(".bias") else new_weight
            folded = layer.weight_norm_folded and not old.endswith(".bias")
            _add_row(table, old, new, "weight norm folded + converted" if folded else "converted")
    for key in report.copied:
        _add_row(table, key, key, "copied")
    for old, new in report.renamed.items():
        _add_row(table, old, new, "renamed")
    for key in report.dropped:
        _add_row(table, key, "", "dropped")
    for key in report.missing:
        _add_row(table, "", key, "MISSING in target")
    out.print(table)
