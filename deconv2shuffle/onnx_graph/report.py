"""The report of an ONNX rewrite (or of an inspection): pure data, rendered as JSON or Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import write_text


@dataclass
class OnnxNodeResult:
    """One ConvTranspose node: what it was, what it became (or why it was left), how close."""

    node: str
    status: str  # "converted", "convertible" (inspection) or "left"
    old_geometry: str
    weight: str
    weight_shape: list[int]
    quantized: bool = False
    new_geometry: str | None = None
    new_weight_shape: list[int] | None = None
    new_nodes: list[str] = field(default_factory=list)
    macs_ratio: float | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    reason: str | None = None


@dataclass
class OnnxReport:
    """Everything one ONNX rewrite did, for humans (Markdown) and scripts (JSON)."""

    source_file: str
    output_file: str | None = None
    opset: int | None = None
    opset_raised_to: int | None = None
    external_data: bool = False
    nodes: list[OnnxNodeResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    end_to_end: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    tolerance: float = 1e-5
    written: list[str] = field(default_factory=list)
    ok: bool = False

    @property
    def converted(self) -> list[OnnxNodeResult]:
        return [n for n in self.nodes if n.status == "converted"]

    @property
    def left(self) -> list[OnnxNodeResult]:
        return [n for n in self.nodes if n.status == "left"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        title = "inspection" if self.output_file is None and not self.checks else "migration"
        lines = [f"# deconv2shuffle ONNX {title}: {'ok' if self.ok else 'FAILED'}", ""]
        lines.append(f"- source: `{self.source_file}` (opset {self.opset})")
        if self.output_file:
            data = ", weights in external data" if self.external_data else ""
            lines.append(f"- output: `{self.output_file}`{data}")
        if self.opset_raised_to:
            lines.append(f"- opset raised from {self.opset} to {self.opset_raised_to} for DepthToSpace in CRD mode")
        done = "converted" if self.output_file or self.checks else "convertible"
        lines.append(
            f"- ConvTranspose nodes: {len(self.nodes)}, {done} {len(self.nodes) - len(self.left)}, "
            f"left as they are {len(self.left)}"
        )
        for check in self.checks:
            lines.append(f"- {check}")
        lines.append(f"- end-to-end: {_end_to_end_words(self.end_to_end)}")
        if self.nodes:
            lines += [
                "",
                "| node | old geometry | weight | new geometry | new weight | MACs ratio | max abs error | status |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for n in self.nodes:
                q = " (quantized)" if n.quantized else ""
                weight = f"`{n.weight}` {tuple(n.weight_shape)}{q}"
                lines.append(
                    f"| `{n.node}` | {n.old_geometry} | {weight} | {n.new_geometry or '-'} "
                    f"| {tuple(n.new_weight_shape) if n.new_weight_shape else '-'} | {_num(n.macs_ratio, '.2f')} "
                    f"| {_num(n.max_abs_error, '.3g')} | {n.status}{': ' + n.reason if n.reason else ''} |"
                )
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Write as JSON (``.json``) or Markdown (anything else), atomically."""
        path = Path(path)
        write_text(path, self.to_json() if path.suffix.lower() == ".json" else self.to_markdown())


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _end_to_end_words(e: dict[str, Any] | None) -> str:
    if e is None:
        return "not run"
    if "skipped" in e:
        return f"skipped: {e['skipped']}"
    return f"{e['runtime']}, inputs {e['inputs']}: max relative error {e['max_rel_error']:.3g}"
