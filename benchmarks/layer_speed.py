"""ConvTranspose against each exact sub-pixel form, per layer, in torch and ONNX Runtime (CPU).

    python benchmarks/layer_speed.py [--repeat 15] [--runtime torch|onnxruntime|all] [--only k4s2p1]

For each layer of the README (float32, batch 1) it builds the ConvTranspose and its three exact
forms (``symmetric``: ConvNd(padding=P) + shuffle, crop at the end; ``tight``: smallest kernel
without a phase shift; ``minimal``: the phase-shifted narrowest kernel, crops at both ends),
checks each against the ConvTranspose, then times all four side by side in this run: every
repeat times each variant once (``n`` calls, order rotated between repeats, so drift and load
hit them alike). It prints the median per call, the spread (25th-75th percentile of the
repeats) and the ratio to the ConvTranspose's median; when two spreads overlap it says "no
clear difference" instead of naming a winner. ONNX Runtime runs the models exported with
``torch.onnx.export`` (Conv + DepthToSpace + Slice; the ConvTranspose as ConvTranspose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconv2shuffle.geometry import MODES
from deconv2shuffle.nn import SUBPIXEL_CLASSES


@dataclass(frozen=True)
class Layer:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


LAYERS = [
    Layer("k4s2p1 256->128 (DCGAN, pix2pix)", lambda: nn.ConvTranspose2d(256, 128, 4, 2, 1), (1, 256, 64, 64)),
    Layer("k16s8p4 512->256 1D (HiFi-GAN)", lambda: nn.ConvTranspose1d(512, 256, 16, 8, 4), (1, 512, 128)),
    Layer("k8s4p2 64->64", lambda: nn.ConvTranspose2d(64, 64, 8, 4, 2), (1, 64, 64, 64)),
    Layer("k9s3p4op2 56->1 (FSRCNN x3)", lambda: nn.ConvTranspose2d(56, 1, 9, 3, 4, 2), (1, 56, 128, 128)),
    Layer("k3s2p1op1 256->128 (CycleGAN)", lambda: nn.ConvTranspose2d(256, 128, 3, 2, 1, 1), (1, 256, 64, 64)),
    Layer("k9s2p4op1 56->1 (FSRCNN x2)", lambda: nn.ConvTranspose2d(56, 1, 9, 2, 4, 1), (1, 56, 128, 128)),
    Layer("k2s2p0 256->128 (U-Net)", lambda: nn.ConvTranspose2d(256, 128, 2, 2), (1, 256, 64, 64)),
]


@dataclass
class Timing:
    variant: str
    target: str
    macs_ratio: float
    times: list[float]  # seconds per call, one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]


def variants(layer: nn.Module) -> list[tuple[str, nn.Module, str, float]]:
    """(name, module, target conv, MACs ratio) for the ConvTranspose and each exact form."""
    out: list[tuple[str, nn.Module, str, float]] = [("ConvTranspose", layer, "-", 1.0)]
    cls = SUBPIXEL_CLASSES[len(layer.kernel_size)]  # type: ignore[arg-type]
    for mode in MODES:
        sub = cls.from_transposed(layer, geometry=mode).eval()
        out.append((mode, sub, sub.plan.target.describe(), sub.plan.macs_ratio))
    return out


def time_side_by_side(calls: list[Callable[[], Any]], repeat: int, target_s: float) -> list[list[float]]:
    """Seconds per call for each callable, ``repeat`` times, in rotated order."""
    loops = []
    for call in calls:
        for _ in range(2):
            call()  # warm-up: allocation, first-run kernel choice
        t = time.perf_counter()
        call()
        once = max(time.perf_counter() - t, 1e-6)
        loops.append(max(1, int(target_s / once)))
    out: list[list[float]] = [[] for _ in calls]
    for r in range(repeat):
        order = list(range(len(calls)))
        order = order[r % len(calls) :] + order[: r % len(calls)]
        for i in order:
            t = time.perf_counter()
            for _ in range(loops[i]):
                calls[i]()
            out[i].append((time.perf_counter() - t) / loops[i])
    return out


def torch_calls(mods: list[nn.Module], x: torch.Tensor) -> list[Callable[[], Any]]:
    def call(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m(x)

        return run

    return [call(m) for m in mods]


def ort_calls(mods: list[nn.Module], x: torch.Tensor, folder: Path, threads: int) -> list[Callable[[], Any]] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    calls: list[Callable[[], Any]] = []
    feed = x.numpy()
    for i, m in enumerate(mods):
        path = folder / f"m{i}.onnx"
        torch.onnx.export(m, (x,), str(path), dynamo=True, verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(session: Any = session, name: str = name) -> Any:
            return session.run(None, {name: feed})

        calls.append(run)
    return calls


def verdict(t: Timing, base: Timing) -> str:
    lo, hi = t.spread
    blo, bhi = base.spread
    if t is base:
        return ""
    if lo <= bhi and blo <= hi:
        return "no clear difference"
    ratio = t.median / base.median
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def report(runtime: str, layer: Layer, timings: list[Timing]) -> list[str]:
    base = timings[0]
    lines = []
    for t in timings:
        lo, hi = t.spread
        lines.append(
            f"| {layer.name} | {runtime} | {t.variant} | {t.target} | {t.macs_ratio:.2f} | {t.median * 1e3:.2f} | "
            f"{lo * 1e3:.2f}-{hi * 1e3:.2f} | {t.median / base.median:.2f}x | {verdict(t, base)} |"
        )
    return lines


def check(mods: list[nn.Module], x: torch.Tensor) -> float:
    with torch.no_grad():
        want = mods[0](x)
        return max(float((m(x) - want).abs().max() / want.abs().max()) for m in mods[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--runtime", choices=["torch", "onnxruntime", "all"], default="all")
    parser.add_argument("--only", default="", help="run only the layers whose name contains this text")
    parser.add_argument("--target-ms", type=float, default=40.0, help="time per repeat and variant")
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and ONNX Runtime (0: their defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeat < 10:
        parser.error("--repeat must be at least 10 for the spread to mean something")
    torch.manual_seed(0)
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads "
        f"(ONNX Runtime: {args.threads or 'default'}), "
        f"float32, batch 1, {args.repeat} repeats; spread = 25th-75th percentile of the repeats"
    )
    print("| layer | runtime | form | target conv | MACs ratio | median ms | spread ms | vs ConvTranspose | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for layer in [lay for lay in LAYERS if args.only in lay.name]:
            module = layer.make().eval()
            x = torch.randn(*layer.input_shape)
            found = variants(module)
            mods = [m for _, m, _, _ in found]
            err = check(mods, x)
            if err > 1e-4:
                raise SystemExit(f"{layer.name}: a sub-pixel form differs from ConvTranspose by {err:.3g}")
            runs: list[tuple[str, list[Callable[[], Any]] | None]] = []
            if args.runtime in ("torch", "all"):
                runs.append(("torch", torch_calls(mods, x)))
            if args.runtime in ("onnxruntime", "all"):
                runs.append(("onnxruntime", ort_calls(mods, x, Path(tmp), args.threads)))
            for runtime, calls in runs:
                if calls is None:
                    print(f"| {layer.name} | {runtime} | not installed | | | | | | |")
                    continue
                seconds = time_side_by_side(calls, args.repeat, args.target_ms / 1e3)
                timings = [Timing(n, tgt, ratio, s) for (n, _, tgt, ratio), s in zip(found, seconds, strict=True)]
                print("\n".join(report(runtime, layer, timings)), flush=True)


if __name__ == "__main__":
    main()
