"""Rewriting an ONNX model vs a plain ``onnx.load`` + ``onnx.save`` of it: wall time, as ratios.

    python benchmarks/onnx_rewrite.py [--size-mb 500] [--dir /tmp] [--repeat 3]

Builds a model with about ``--size-mb`` of float32 weights, nearly all of them ConvTranspose
weights (k4 s2 p1 and k2 s2 branches on one input, plus a 1x1 Conv that is only carried along),
then times, in this run (median of ``--repeat``, order alternated, page cache warm):

- baseline: ``onnx.load`` + ``onnx.save`` of the same file
- ``migrate_onnx`` with every check (per-node float64, ``onnx.checker`` full check, ONNX Runtime
  end to end), without the end-to-end check, and with no numerical check at all.

Goal: the rewrite takes <= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def build(path: Path, size_mb: float) -> int:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels, nodes, inits, outputs = 1024, [], [], []
    per_branch = channels * channels * 16 * 4
    branches = max(1, round(size_mb * 2**20 / per_branch) - 1)
    for i in range(branches):
        w = rng.standard_normal((channels, channels, 4, 4), dtype=np.float32)
        inits.append(numpy_helper.from_array(w, f"up{i}.weight"))
        inits.append(numpy_helper.from_array(rng.standard_normal(channels, dtype=np.float32), f"up{i}.bias"))
        nodes.append(
            helper.make_node(
                "ConvTranspose", ["x", f"up{i}.weight", f"up{i}.bias"], [f"y{i}"], name=f"up{i}", strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        )  # fmt: skip
        outputs.append(f"y{i}")
    w = rng.standard_normal((channels, channels // 4, 2, 2), dtype=np.float32)
    inits.append(numpy_helper.from_array(w, "pair.weight"))
    nodes.append(helper.make_node("ConvTranspose", ["x", "pair.weight"], ["pair"], name="pair", strides=[2, 2]))
    inits.append(numpy_helper.from_array(rng.standard_normal((256, channels, 1, 1), dtype=np.float32), "mix.weight"))
    nodes.append(helper.make_node("Conv", ["x", "mix.weight"], ["mix"], name="mix"))
    outputs += ["pair", "mix"]
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 2, 2])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path.stat().st_size


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=500)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import onnx

    from deconv2shuffle.onnx_graph import migrate_onnx

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        src, copy, out = folder / "model.onnx", folder / "copy.onnx", folder / "out.onnx"
        size = build(src, args.size_mb)
        print(f"model: {size / 2**20:.0f} MiB of which ConvTranspose weights are nearly all")

        def baseline() -> None:
            onnx.save(onnx.load(str(src)), str(copy))

        runs: dict[str, Callable[[], object]] = {
            "onnx.load + onnx.save": baseline,
            "migrate_onnx (all checks)": lambda: migrate_onnx(src, out, force=True),
            "migrate_onnx (no end-to-end)": lambda: migrate_onnx(src, out, force=True, end_to_end=False),
            "migrate_onnx (no checks)": lambda: migrate_onnx(src, out, force=True, verify=False, end_to_end=False),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        baseline()  # warm the page cache
        for i in range(args.repeat):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in order:
                times[name].append(timed(runs[name]))
        base = statistics.median(times["onnx.load + onnx.save"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:32s} {median:7.2f} s  {median / base:5.2f}x")
        report = migrate_onnx(src, out, force=True)
        print(f"end-to-end: {report.end_to_end}")


if __name__ == "__main__":
    main()
