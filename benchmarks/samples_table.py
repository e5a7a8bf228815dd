"""The README's per-sample table: convert every bundled sample and measure it.

    python benchmarks/samples_table.py

For each ConvTranspose layer: source geometry, target conv, crop, float64 layer error and the
multiply-add ratio; for each sample: the float32 end-to-end error of the converted target model
against the original model on random input.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

from deconv2shuffle import load_sources, load_spec, migrate
from deconv2shuffle.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"


def main() -> None:
    spec_mod = importlib.util.spec_from_file_location("sample_models", SAMPLES / "models.py")
    models = importlib.util.module_from_spec(spec_mod)
    assert spec_mod.loader is not None
    spec_mod.loader.exec_module(models)
    print(
        "| sample | file | layer | ConvTranspose | target conv | crop | layer error (f64, rel) | MACs ratio "
        "| model error (f32, rel) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec_path in sorted(SAMPLES.glob("*.toml")):
            ckpt = next(p for p in SAMPLES.iterdir() if p.name.split(".")[0] == spec_path.stem and p.suffix != ".toml")
            out = Path(tmp) / ckpt.name
            report = migrate(ckpt, out, sources=load_sources(spec_path))
            spec = load_spec(spec_path)
            old = getattr(models, spec.models["source"].split(":")[1])(**spec.models.get("source_args", {})).eval()
            new = getattr(models, spec.models["target"].split(":")[1])(**spec.models.get("target_args", {})).eval()
            strip = {"model.": ""} if report.key_prefix else {}
            for model, path in ((old, ckpt), (new, out)):
                state = load_checkpoint(path).state_dict
                model.load_state_dict({k.removeprefix(next(iter(strip), "")): v for k, v in state.items()})
            x = torch.randn(spec.models["input_shape"], generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                want, got = old(x), new(x)
            e2e = float((got - want).abs().max() / want.abs().max())
            for i, layer in enumerate(report.layers):
                k = "x".join(map(str, layer.target_kernel_size))
                pad = layer.target_padding[0]
                print(
                    f"| {spec_path.stem if i == 0 else ''} | {ckpt.name if i == 0 else ''} | `{layer.source}` | "
                    f"{layer.source_geometry} | {k} pad {pad} | {max(layer.crop)} | {layer.max_rel_error:.1e} | "
                    f"{layer.macs_ratio:.2f} | {f'{e2e:.1e}' if i == 0 else ''} |"
                )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
