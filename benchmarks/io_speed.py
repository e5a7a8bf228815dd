"""migrate vs a plain load + save of the same checkpoint: wall time and peak memory, as ratios.

    python benchmarks/io_speed.py [--size-gb 1.5] [--dir /tmp] [--repeat 3] [--compare DIR] [--tiny 300000]

Builds a checkpoint of about ``--size-gb`` (big 2D weights plus four ConvTranspose2d layers), then times, side
by side in this run (median of ``--repeat``, order alternated, page cache warm):

- torch: ``torch.load(mmap=True, weights_only=True)`` + ``torch.save``  vs  ``migrate`` (.pth -> .pth)
- safetensors: ``load_file`` + ``save_file``  vs  ``migrate`` (.safetensors -> .safetensors)

``--compare DIR`` also runs ``migrate`` from another checkout of this project (``DIR`` goes first on the
``PYTHONPATH``), so a change is measured before and after in one run, on one machine state.

``--tiny N`` adds a checkpoint of N tiny tensors (4 floats each): ``load_checkpoint`` + ``save_checkpoint`` of
it (safetensors and torch zip), against the libraries' own load + save, and against ``--compare DIR``.

Each measurement runs in a fresh child process; its peak memory is the child's resident high-water mark
(``VmHWM``: ``ru_maxrss`` would report the parent's peak too), printed against the input file size. Goals:
migrate <= 1.15x the baseline time, peak RSS <= 1.2x the file size.
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

BUILD = """
import sys, torch
from safetensors.torch import save_file
size_gb, pth, st = float(sys.argv[1]), sys.argv[2], sys.argv[3]
gen = torch.Generator().manual_seed(0)
state = {
    "dec.0.weight": torch.randn(256, 128, 4, 4, generator=gen), "dec.0.bias": torch.randn(128, generator=gen),
    "dec.1.weight": torch.randn(128, 64, 4, 4, generator=gen), "dec.1.bias": torch.randn(64, generator=gen),
    "dec.2.weight": torch.randn(64, 32, 2, 2, generator=gen), "dec.2.bias": torch.randn(32, generator=gen),
    "dec.3.weight": torch.randn(32, 16, 3, 3, generator=gen), "dec.3.bias": torch.randn(16, generator=gen),
}
block = 4096 * 4096  # 64 MiB of float32 per tensor
for i in range(int(size_gb * 2**30 // (block * 4))):
    state[f"encoder.blocks.{i}.weight"] = torch.randn(4096, 4096, generator=gen)
torch.save(state, pth)
save_file(state, st)
"""

BUILD_TINY = """
import sys, torch
from safetensors.torch import save_file
n, pth, st = int(sys.argv[1]), sys.argv[2], sys.argv[3]
state = {f"layer.{i}.weight": torch.full((4,), float(i)) for i in range(n)}
torch.save(state, pth)
save_file(state, st)
"""

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
    "load+save": (
        "from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint; "
        "ck = load_checkpoint({src!r}); save_checkpoint({dst!r}, ck.state_dict, like=ck, force=True)"
    ),
}

PEAK = (
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) * 1024\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
)


def _env(tree: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_child(kind: str, src: Path, dst: Path, spec: Path, tree: str | None = None) -> tuple[float, int]:
    """Wall seconds of the work itself (imports excluded) and the child's peak memory in bytes."""
    parts = CHILD[kind].split("; ")
    code = (
        "import resource, time, sys\n"
        + PEAK
        + "\n".join(p for p in parts if p.startswith(("import", "from")))
        + "\n"  # untimed
        + "t = time.perf_counter()\n"
        + "; ".join(p for p in parts if not p.startswith(("import", "from"))).format(
            src=str(src), dst=str(dst), spec=str(spec)
        )
        + "\n"
        + "print(time.perf_counter() - t, _peak())\n"
    )
    if dst.exists():
        dst.unlink()
    os.sync()  # start clean: earlier runs' dirty pages must not throttle this one
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(tree))
    seconds, rss = out.stdout.split()[-2:]
    return float(seconds), int(rss)


def _measure(runs: list[tuple[str, str | None]], src: Path, out: Path, spec: Path, repeat: int) -> dict:
    """Median seconds and max peak per (kind, tree), order alternated between repeats."""
    times: dict[tuple[str, str | None], list[float]] = {r: [] for r in runs}
    peak: dict[tuple[str, str | None], int] = {}
    run_child(runs[0][0], src, out, spec, runs[0][1])  # warm the page cache
    for i in range(repeat):
        for kind, tree in runs if i % 2 == 0 else runs[::-1]:
            seconds, rss = run_child(kind, src, out, spec, tree)
            times[(kind, tree)].append(seconds)
            peak[(kind, tree)] = max(peak.get((kind, tree), 0), rss)
    return {r: (statistics.median(times[r]), peak[r]) for r in runs}


def big(folder: Path, args: argparse.Namespace, compare: str | None) -> None:
    pth, st, spec = folder / "big.pth", folder / "big.safetensors", folder / "spec.toml"
    subprocess.run([sys.executable, "-c", BUILD, str(args.size_gb), str(pth), str(st)], check=True)
    spec.write_text(SPEC)
    print(
        f"input: {pth.stat().st_size / 2**30:.2f} GiB ({pth.name}), {st.stat().st_size / 2**30:.2f} GiB ({st.name}); "
        f"{os.cpu_count()} CPUs; median of {args.repeat}"
    )
    print(
        f"{'format':<34} {'baseline s':>10} {'+fsync s':>9} {'ours s':>8} {'ratio':>6} {'ratio/fsync':>11} "
        f"{'base peak/file':>14} {'ours peak/file':>14}"
    )
    for fmt, src, base in (("torch zip", pth, "torch"), ("safetensors", st, "safetensors")):
        ours = ["migrate"] + (["migrate --no-hash"] if base == "safetensors" else [])
        runs = [(base, None), (base + "+fsync", None)] + [(k, None) for k in ours]
        runs += [(k, compare) for k in ours] if compare else []
        res = _measure(runs, src, folder / f"out{src.suffix}", spec, args.repeat)
        (t_base, p_base), (t_sync, _) = res[(base, None)], res[(base + "+fsync", None)]
        size = src.stat().st_size
        for kind, tree in runs[2:]:
            t, p = res[(kind, tree)]
            label = f"{fmt} {kind.replace('migrate', '')}".strip() + (" [compare]" if tree else "")
            print(
                f"{label:<34} {t_base:>10.2f} {t_sync:>9.2f} {t:>8.2f} {t / t_base:>6.2f} {t / t_sync:>11.2f} "
                f"{p_base / size:>14.2f} {p / size:>14.2f}"
            )
    print(
        "ratio: migrate (load, convert, verify, write, fsync, read back) / baseline load + save; "
        "ratio/fsync: against a baseline that also fsyncs its output; [compare]: the --compare checkout"
    )


def tiny(folder: Path, args: argparse.Namespace, compare: str | None) -> None:
    pth, st = folder / "tiny.pth", folder / "tiny.safetensors"
    subprocess.run([sys.executable, "-c", BUILD_TINY, str(args.tiny), str(pth), str(st)], check=True)
    print(
        f"\n{args.tiny} tiny tensors: {pth.stat().st_size / 2**20:.1f} MiB (.pth), "
        f"{st.stat().st_size / 2**20:.1f} MiB (.safetensors); median of {args.repeat}"
    )
    print(f"{'format':<34} {'seconds':>8} {'peak MiB':>9}")
    for fmt, src, base in (("torch zip", pth, "torch"), ("safetensors", st, "safetensors")):
        runs = [(base, None), ("load+save", None)] + ([("load+save", compare)] if compare else [])
        res = _measure(runs, src, folder / f"tiny-out{src.suffix}", folder / "spec.toml", args.repeat)
        for kind, tree in runs:
            t, p = res[(kind, tree)]
            label = f"{fmt} {'library load + save' if kind == base else kind}" + (" [compare]" if tree else "")
            print(f"{label:<34} {t:>8.2f} {p / 2**20:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", metavar="DIR", help="another checkout to run migrate from, side by side")
    parser.add_argument("--tiny", type=int, default=0, metavar="N", help="also time N tiny tensors")
    parser.add_argument("--no-big", action="store_true", help="skip the big checkpoint")
    args = parser.parse_args()
    compare = str(Path(args.compare).resolve()) if args.compare else None
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if not args.no_big:
            big(Path(tmp), args, compare)
        if args.tiny:
            tiny(Path(tmp), args, compare)


if __name__ == "__main__":
    main()
