"""One ``batch`` over 12 small checkpoints vs 12 separate ``migrate`` runs (each a fresh process),
a second ``batch`` with everything up to date, and how fast Ctrl-C stops ``batch --jobs 2``.

    python benchmarks/batch_vs_migrate.py [--files 12] [--repeat 3] [--stops 3]

Everything goes through the real console entry point. Goals: batch takes under half the time of
separate runs; the up-to-date check costs next to nothing; SIGINT ends a parallel batch (exit 130)
within a second.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
PICK = ["forum.pth", "fsrcnn_x2.pth", "unet.safetensors", "dcgan.pth", "cyclegan.ckpt", "unet3d.safetensors"]
COMMAND = [sys.executable, "-m", "deconv2shuffle"]


def cli(*args: str) -> None:
    subprocess.run([*COMMAND, *args], check=True, capture_output=True)


def timed(*args: str) -> float:
    start = time.perf_counter()
    cli(*args)
    return time.perf_counter() - start


def make_inputs(src: Path, files: int) -> list[Path]:
    src.mkdir()
    shutil.copy(SAMPLES / "models.py", src / "models.py")
    jobs = []
    for i in range(files):
        name = PICK[i % len(PICK)]
        stem, _, ext = name.partition(".")
        copy = src / f"{stem}_{i:02d}.{ext}"
        shutil.copy(SAMPLES / name, copy)
        shutil.copy(SAMPLES / f"{stem}.toml", src / f"{stem}_{i:02d}.toml")
        jobs.append(copy)
    return jobs


def stop_latency(src: Path, out: Path) -> float:
    """Seconds from SIGINT to the exit of ``batch --jobs 2``, sent once the first output exists."""
    argv = [*COMMAND, "batch", str(src), str(out), "--jobs", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not any(p.is_file() and not p.name.startswith(".") for p in out.glob("*")):
        time.sleep(0.01)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.communicate()
    if proc.returncode != 130:
        raise SystemExit(f"batch exited {proc.returncode} (the run ended before the signal?); use more --files")
    return time.perf_counter() - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stops", type=int, default=3, help="SIGINT latency tries (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        jobs = make_inputs(src, args.files)
        t_batch, t_each, t_again = [], [], []
        for r in range(args.repeat):
            out = Path(tmp) / f"batch{r}"
            t_batch.append(timed("batch", str(src), str(out)))
            t_again.append(timed("batch", str(src), str(out)))  # every output up to date
            out = Path(tmp) / f"each{r}"
            out.mkdir()
            start = time.perf_counter()
            for job in jobs:
                cli("migrate", str(job), str(out / job.name), "--spec", str(job.with_suffix("").with_suffix(".toml")))
            t_each.append(time.perf_counter() - start)
        b, e, a = statistics.median(t_batch), statistics.median(t_each), statistics.median(t_again)
        print(
            f"{args.files} checkpoints, median of {args.repeat}: batch {b:.2f} s, separate migrate runs {e:.2f} s, "
            f"ratio {b / e:.2f} (goal < 0.50); batch again, all up to date: {a:.2f} s"
        )
        if args.stops:
            stops = [stop_latency(src, Path(tmp) / f"stop{i}") for i in range(args.stops)]
            print(
                f"SIGINT to exit 130 of batch --jobs 2, {args.stops} tries: median {statistics.median(stops):.2f} s, "
                f"worst {max(stops):.2f} s (goal < 1 s)"
            )


if __name__ == "__main__":
    main()
