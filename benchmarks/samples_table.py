"""The README's per-sample table: convert every bundled sample to the minimal form and measure it.

    python benchmarks/samples_table.py

Each sample is migrated from its source model alone (no hand-written target), so every layer takes
the cheapest exact form, the one ``convert_model`` builds. For each ConvTranspose layer: source
geometry, target conv with its crops, float64 layer error, and the multiply-add ratio of the
symmetric form against the minimal one; for each sample: the float32 end-to-end error of
``convert_model(source)`` holding the migrated weights (loaded with ``strict=True``) against the
original model on random input.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from deconv2shuffle import convert_model, load_spec, migrate
from deconv2shuffle.checkpoint import load_checkpoint
from deconv2shuffle.geometry import TransposedConv, smallest
from deconv2shuffle.report import LayerResult, MigrationReport, format_axes

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"


def sample_models() -> ModuleType:
    """``sample_checkpoints/models.py``, imported."""
    spec = importlib.util.spec_from_file_location("sample_models", SAMPLES / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_of(spec_path: Path) -> Path:
    """The sample checkpoint a sidecar spec describes."""
    return next(p for p in SAMPLES.iterdir() if p.name.split(".")[0] == spec_path.stem and p.suffix != ".toml")


def migrate_minimal(spec_path: Path, out: Path) -> tuple[MigrationReport, float]:
    """Migrate one sample from its source model alone; the float32 error of ``convert_model(source)``."""
    spec = load_spec(spec_path)
    ref, args = spec.model_ref("source"), spec.models.get("source_args")
    assert ref is not None
    ckpt = checkpoint_of(spec_path)
    report = migrate(ckpt, out, source_model=ref, source_args=args, input_shape=spec.models["input_shape"])
    source = getattr(sample_models(), ref.rpartition(":")[2])(**(args or {})).eval()
    prefix = report.key_prefix
    old_state = {k.removeprefix(prefix): v for k, v in load_checkpoint(ckpt).state_dict.items()}
    new_state = {k.removeprefix(prefix): v for k, v in load_checkpoint(out).state_dict.items()}
    source.load_state_dict(old_state, strict=True)
    new = convert_model(source)  # default: the minimal form, the one the spec-less migration wrote
    new.load_state_dict(new_state, strict=True)
    x = torch.randn(spec.models["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = source(x), new(x)
    return report, float((got - want).abs().max() / want.abs().max())


def symmetric_ratio(layer: LayerResult, spec_path: Path) -> float:
    """The MACs ratio of the same layer in the symmetric form (crop at the end only)."""
    spec_layer = next(x for x in load_spec(spec_path).layers if x.source == layer.source)
    k = tuple(layer.old_shape[2:])
    geo = TransposedConv.make(
        k, spec_layer.stride, spec_layer.padding, spec_layer.output_padding, spec_layer.dilation, rank=len(k)
    )
    return smallest(geo, "symmetric").macs_ratio


def main() -> None:
    print(
        "| sample | file | layer | ConvTranspose | minimal conv | crop start / end | layer error (f64, rel) "
        "| MACs ratio symmetric -> minimal | model error (f32, rel) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec_path in sorted(SAMPLES.glob("*.toml")):
            ckpt = checkpoint_of(spec_path)
            report, e2e = migrate_minimal(spec_path, Path(tmp) / ckpt.name)
            for i, layer in enumerate(report.layers):
                pad = format_axes(layer.target_padding)
                print(
                    f"| {spec_path.stem if i == 0 else ''} | {ckpt.name if i == 0 else ''} | `{layer.source}` | "
                    f"{layer.source_geometry} | {'x'.join(map(str, layer.target_kernel_size))} pad {pad} | "
                    f"{format_axes(layer.crop_start)} / {format_axes(layer.crop_end)} | {layer.max_rel_error:.1e} | "
                    f"{symmetric_ratio(layer, spec_path):.2f} -> {layer.macs_ratio:.2f} | "
                    f"{f'{e2e:.1e}' if i == 0 else ''} |"
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
