"""migrate vs a plain load + save of the same checkpoint: wall time and peak memory, as ratios.

    python benchmarks/io_speed.py [--size-gb 1.5] [--dir /tmp] [--repeat 3]

Builds a checkpoint of about ``--size-gb`` (big 2D weights plus four ConvTranspose2d layers),
then times, side by side in this run (median of ``--repeat``, order alternated, page cache warm):

- torch: ``torch.load(mmap=True, weights_only=True)`` + ``torch.save``  vs  ``migrate`` (.pth -> .pth)
- safetensors: ``load_file`` + ``save_file``  vs  ``migrate`` (.safetensors -> .safetensors)

Peak RSS of each is measured in a fresh child process (``ru_maxrss``) and printed against the
input file size. Goals: migrate <= 1.15x the baseline time, peak RSS <= 1.2x the file size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = """version = 1
[[layers]]
source = "dec.0"
stride = 2
padding = 1
[[layers]]
source = "dec.1"
stride = 2
padding = 1
[[layers]]
source = "dec.2"
stride = 2
[[layers]]
source = "dec.3"
stride = 2
padding = 1
output_padding = 1
"""


def build(folder: Path, size_gb: float) -> tuple[Path, Path, Path]:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {
        "dec.0.weight": torch.randn(256, 128, 4, 4, generator=gen),
        "dec.0.bias": torch.randn(128, generator=gen),
        "dec.1.weight": torch.randn(128, 64, 4, 4, generator=gen),
        "dec.1.bias": torch.randn(64, generator=gen),
        "dec.2.weight": torch.randn(64, 32, 2, 2, generator=gen),
        "dec.2.bias": torch.randn(32, generator=gen),
        "dec.3.weight": torch.randn(32, 16, 3, 3, generator=gen),
        "dec.3.bias": torch.randn(16, generator=gen),
    }
    block = 4096 * 4096  # 64 MiB of float32 per tensor
    for i in range(int(size_gb * 2**30 // (block * 4))):
        state[f"encoder.blocks.{i}.weight"] = torch.randn(4096, 4096, generator=gen)
    pth, st = folder / "big.pth", folder / "big.safetensors"
    torch.save(state, pth)
    save_file(state, st)
    spec = folder / "spec.toml"
    spec.write_text(SPEC)
    return pth, st, spec


FSYNC = "fd = os.open({dst!r}, os.O_RDONLY); os.fsync(fd); os.close(fd)"
CHILD = {
    "torch": "import torch; sd = torch.load({src!r}, mmap=True, weights_only=True); torch.save(sd, {dst!r})",
    "safetensors": "from safetensors.torch import load_file, save_file; save_file(load_file({src!r}), {dst!r})",
    "torch+fsync": "import torch, os; sd = torch.load({src!r}, mmap=True, weights_only=True); torch.save(sd, {dst!r}); "
    + FSYNC,
    "safetensors+fsync": "from safetensors.torch import load_file, save_file; import os; "
    "save_file(load_file({src!r}), {dst!r}); " + FSYNC,
    "migrate": (
        "from deconv2shuffle import load_sources, migrate; "
        "migrate({src!r}, {dst!r}, sources=load_sources({spec!r}), force=True)"
    ),
    "migrate --no-hash": (
        "from deconv2shuffle import load_sources, migrate; "
        "migrate({src!r}, {dst!r}, sources=load_sources({spec!r}), force=True, hash_source=False)"
    ),
}


def run_child(kind: str, src: Path, dst: Path, spec: Path) -> tuple[float, int]:
    """Wall seconds of the work itself (import excluded) and the child's peak RSS in bytes."""
    code = (
        "import resource, time, sys\n"
        + "\n".join(p for p in CHILD[kind].split("; ") if p.startswith(("import", "from")))
        + "\n"  # untimed
        + "t = time.perf_counter()\n"
        + "; ".join(p for p in CHILD[kind].split("; ") if not p.startswith(("import", "from"))).format(
            src=str(src), dst=str(dst), spec=str(spec)
        )
        + "\n"
        + "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    if dst.exists():
        dst.unlink()
    os.sync()  # start clean: earlier runs' dirty pages must not throttle this one
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, rss = out.stdout.split()
    return float(seconds), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        pth, st, spec = build(folder, args.size_gb)
        size = pth.stat().st_size
        print(
            f"input: {size / 2**30:.2f} GiB ({pth.name}), {st.stat().st_size / 2**30:.2f} GiB ({st.name}); "
            f"{os.cpu_count()} CPUs; median of {args.repeat}"
        )
        rows = []
        for fmt, src, base in (("torch zip", pth, "torch"), ("safetensors", st, "safetensors")):
            out = folder / f"out{src.suffix}"
            kinds = [base, base + "+fsync", "migrate"] + (["migrate --no-hash"] if base == "safetensors" else [])
            times: dict[str, list[float]] = {k: [] for k in kinds}
            rss: dict[str, int] = {}
            run_child(base, src, out, spec)  # warm the page cache
            for i in range(args.repeat):
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    seconds, peak = run_child(kind, src, out, spec)
                    times[kind].append(seconds)
                    rss[kind] = max(rss.get(kind, 0), peak)
            t_base, t_sync, t_ours = (statistics.median(times[k]) for k in kinds[:3])
            rows.append((fmt, t_base, t_sync, t_ours, rss[base], rss["migrate"], src.stat().st_size))
            if "migrate --no-hash" in times:
                t_nohash = statistics.median(times["migrate --no-hash"])
                rows.append(
                    (
                        fmt + " --no-hash",
                        t_base,
                        t_sync,
                        t_nohash,
                        rss[base],
                        rss["migrate --no-hash"],
                        src.stat().st_size,
                    )
                )
        print(
            f"{'format':<22} {'baseline s':>10} {'+fsync s':>9} {'migrate s':>10} {'ratio':>6} {'ratio/fsync':>11} "
            f"{'base RSS/file':>13} {'migrate RSS/file':>16}"
        )
        for fmt, t_base, t_sync, t_ours, r_base, r_ours, fsize in rows:
            print(
                f"{fmt:<22} {t_base:>10.2f} {t_sync:>9.2f} {t_ours:>10.2f} {t_ours / t_base:>6.2f} "
                f"{t_ours / t_sync:>11.2f} {r_base / fsize:>13.2f} {r_ours / fsize:>16.2f}"
            )
        print(
            "ratio: migrate (load, convert, verify, write, fsync, read back) / baseline load + save; "
            "ratio/fsync: against a baseline that also fsyncs its output"
        )


if __name__ == "__main__":
    main()
