"""One ``batch`` over 12 small checkpoints vs 12 separate ``migrate`` runs (each a fresh process).

    python benchmarks/batch_vs_migrate.py [--files 12] [--repeat 3]

Both go through the real console entry point. Goal: batch takes under half the time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
PICK = ["forum.pth", "fsrcnn_x2.pth", "unet.safetensors", "dcgan.pth", "cyclegan.ckpt", "unet3d.safetensors"]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "deconv2shuffle", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        shutil.copy(SAMPLES / "models.py", src / "models.py")
        jobs = []
        for i in range(args.files):
            name = PICK[i % len(PICK)]
            stem, _, ext = name.partition(".")
            copy = src / f"{stem}_{i:02d}.{ext}"
            shutil.copy(SAMPLES / name, copy)
            shutil.copy(SAMPLES / f"{stem}.toml", src / f"{stem}_{i:02d}.toml")
            jobs.append(copy)
        t_batch, t_each = [], []
        for r in range(args.repeat):
            out = Path(tmp) / f"batch{r}"
            start = time.perf_counter()
            cli("batch", str(src), str(out))
            t_batch.append(time.perf_counter() - start)
            out = Path(tmp) / f"each{r}"
            out.mkdir()
            start = time.perf_counter()
            for job in jobs:
                cli("migrate", str(job), str(out / job.name), "--spec", str(job.with_suffix("").with_suffix(".toml")))
            t_each.append(time.perf_counter() - start)
        b, e = statistics.median(t_batch), statistics.median(t_each)
        print(
            f"{args.files} checkpoints, median of {args.repeat}: batch {b:.2f} s, separate migrate runs {e:.2f} s, "
            f"ratio {b / e:.2f} (goal < 0.50)"
        )


if __name__ == "__main__":
    main()
