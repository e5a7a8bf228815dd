"""The migration report: one object, rendered as JSON, Markdown or a terminal table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LayerResult:
    source: str
    target: str
    source_geometry: str
    old_keys: list[str]
    new_keys: list[str]
    old_shape: list[int]
    new_shape: list[int]
    exact: bool
    max_abs_error: float
    max_rel_error: float
    target_kernel_size: list[int]
    target_padding: list[int] | list[list[int]]
    crop: list[int]
    macs_ratio: float
    dropped_mass: float = 0.0
    weight_norm_folded: bool = False


@dataclass
class MigrationReport:
    """Everything one migration did, for humans (terminal, Markdown) and scripts (JSON)."""

    source_file: str | None = None
    output_file: str | None = None
    source_format: str | None = None
    output_format: str | None = None
    state_dict_key: str | None = None
    state_dict_candidates: list[str] = field(default_factory=list)
    key_prefix: str = ""
    layers: list[LayerResult] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    optimizer: str | None = None
    end_to_end: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    tolerance: float = 1e-10
    written: list[str] = field(default_factory=list)
    ok: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_markdown(self) -> str:
        lines = [f"# deconv2shuffle migration: {'ok' if self.ok else 'FAILED'}", ""]
        if self.source_file:
            lines.append(
                f"- source: `{self.source_file}` ({self.source_format}, "
                f"state_dict: {self.state_dict_key or 'whole file'})"
            )
        if self.output_file:
            lines.append(f"- output: `{self.output_file}` ({self.output_format})")
        lines.append(
            f"- converted {len(self.layers)}, copied {len(self.copied)}, renamed {len(self.renamed)}, "
            f"dropped {len(self.dropped)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        )
        if self.optimizer:
            lines.append(f"- optimizer state: {self.optimizer}")
        if self.end_to_end:
            e = self.end_to_end
            lines.append(
                f"- end-to-end on input {e.get('input_shape')}: max abs error {e.get('max_abs_error'):.3g}, "
                f"relative {e.get('max_rel_error'):.3g}"
            )
        lines += [
            "",
            "| source | target | geometry | old shape | new shape | target conv | crop | exact "
            "| max abs error | MACs ratio |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for layer in self.layers:
            lines.append(
                f"| `{layer.source}` | `{layer.target}` | {layer.source_geometry} | {tuple(layer.old_shape)} | "
                f"{tuple(layer.new_shape)} | k{format_axes(layer.target_kernel_size)} "
                f"p{format_axes(layer.target_padding)} | "
                f"{format_axes(layer.crop)} | {'yes' if layer.exact else f'no (dropped {layer.dropped_mass:.3g})'} | "
                f"{layer.max_abs_error:.3g} | {layer.macs_ratio:.2f} |"
            )
        for title, items in (
            ("Renamed", [f"`{a}` -> `{b}`" for a, b in self.renamed.items()]),
            ("Dropped", self.dropped),
            ("Missing", self.missing),
            ("Unexpected", self.unexpected),
            ("Notes", self.notes),
        ):
            if items:
                lines += ["", f"## {title}", ""] + [
                    f"- {i}" if title in ("Renamed", "Notes") else f"- `{i}`" for i in items
                ]
        return "\n".join(lines) + "\n"

    def write_failure(self, path: str | Path, error: str, exit_code: int) -> None:
        """The report of a run that stopped: ``ok`` false, with the error (never a half-written file)."""
        from .checkpoint import atomic_file

        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps({**self.to_dict(), "error": error, "exit_code": exit_code}, indent=2)
        else:
            text = f"# deconv2shuffle migration: FAILED\n\n- source: `{self.source_file}`\n- error: {error}\n"
        with atomic_file(path) as f:
            f.write(text.encode())

    def write(self, path: str | Path) -> None:
        """Write as JSON (``.json``) or Markdown (anything else, typically ``.md``), atomically."""
        from .checkpoint import atomic_file

        path = Path(path)
        text = self.to_json() if path.suffix.lower() == ".json" else self.to_markdown()
        with atomic_file(path) as f:
            f.write(text.encode())


def format_axes(values: Any) -> str:
    """``[3, 3]`` -> ``3``, ``[3, 2]`` -> ``3x2``, ``[[0, 1], [0, 1]]`` -> ``0/1,0/1``."""
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
        return ",".join("/".join(map(str, v)) for v in values)
    if isinstance(values, (list, tuple)):
        return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))
    return str(values)
