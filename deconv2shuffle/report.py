"""The migration report: plain data, rendered as JSON or Markdown here and as a table by the command line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerResult:
    """One converted layer: keys, shapes, target geometry, measured error and cost.

    ``crop_start`` / ``crop_end``: cells cropped from each axis's start / end after the shuffle;
    ``shift``: the phase shift, ``crop_start mod stride``.
    """

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
    crop: list[int]  # the end crop, as ``crop_end`` (kept under its old name)
    macs_ratio: float
    dropped_mass: float = 0.0
    weight_norm_folded: bool = False
    crop_start: list[int] = field(default_factory=list)
    crop_end: list[int] = field(default_factory=list)
    shift: list[int] = field(default_factory=list)


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
    loads_into: str | None = None  # the model the output's keys fit: "convert_model(Net())" or the target model

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``--json`` prints)."""
        return asdict(self)

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_markdown(self) -> str:
        """A Markdown summary with one table row per converted layer."""
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
            if "skipped" in e:
                lines.append(f"- **end-to-end check skipped**: {e['skipped']}")
            else:
                on = f"input {e['input_shape']}" if "input_shape" in e else f"inputs {e.get('inputs')}"
                lines.append(
                    f"- end-to-end on {on}: max abs error {e['max_abs_error']:.3g}, relative {e['max_rel_error']:.3g}"
                )
        lines += [
            "",
            "| source | target | geometry | old shape | new shape | target conv | crop start | crop end | exact "
            "| max abs error | MACs ratio |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for layer in self.layers:
            lines.append(
                f"| `{layer.source}` | `{layer.target}` | {layer.source_geometry} | {tuple(layer.old_shape)} | "
                f"{tuple(layer.new_shape)} | k{format_axes(layer.target_kernel_size)} "
                f"p{format_axes(layer.target_padding)} | "
                f"{format_axes(layer.crop_start)} | {format_axes(layer.crop_end)} | "
                f"{'yes' if layer.exact else f'no (dropped {layer.dropped_mass:.3g})'} | "
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

    def failure(self, error: str, exit_code: int) -> dict[str, Any]:
        """The report of a run that stopped, as plain data: ``ok`` false, with the error and exit code."""
        return {**self.to_dict(), "ok": False, "error": error, "exit_code": exit_code}

    def failure_markdown(self, error: str) -> str:
        """The Markdown report of a run that stopped."""
        return f"# deconv2shuffle migration: FAILED\n\n- source: `{self.source_file}`\n- error: {error}\n"

    def render(self, suffix: str, error: str | None = None, exit_code: int = 0) -> str:
        """The report as text for a file: JSON for ``.json``, Markdown otherwise.

        Args:
            suffix: the file's suffix (``".json"``, ``".md"``...).
            error: the message of the error that stopped the run, if one did.
            exit_code: that error's exit code.

        Returns:
            The text to write.
        """
        if suffix.lower() == ".json":
            data = self.to_dict() if error is None else self.failure(error, exit_code)
            return json.dumps(data, indent=2)
        return self.to_markdown() if error is None else self.failure_markdown(error)


def format_axes(values: Any) -> str:
    """``[3, 3]`` -> ``3``, ``[3, 2]`` -> ``3x2``, ``[[0, 1], [0, 1]]`` -> ``0/1,0/1``."""
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
        return ",".join("/".join(map(str, v)) for v in values)
    if isinstance(values, (list, tuple)):
        return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))
    return str(values)
