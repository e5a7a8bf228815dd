"""Rewriting an ONNX model vs a plain ``onnx.load`` + ``onnx.save`` of it: wall time, as ratios.

    python benchmarks/onnx_rewrite.py [--size-mb 500] [--dir /tmp] [--repeat 3]

Builds a model with about ``--size-mb`` of float32 weights (``--case decoder``: four
ConvTranspose layers and large MatMul weights carried along; ``--case convtranspose``: nothing
but ConvTranspose weights, the worst case), then times, in this run (median of ``--repeat``,
order alternated, page cache warm):

- baseline: ``onnx.load`` + ``onnx.save`` of the same file (and the same with an ``fsync``, which
  every migrate write does before it is moved into place)
- ``migrate_onnx`` with every check (per-node float64, ``onnx.checker`` full check, ONNX Runtime
  end to end), without the end-to-end check, and with no numerical check at all.

Goal: the rewrite takes <= 1.5x the baseline. Medians and best runs are both printed: on a
shared machine the best run is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def build(path: Path, size_mb: float, case: str) -> int:
    """Write the benchmark model; returns its size in bytes.

    ``decoder``: four ConvTranspose layers (k4 s2 p1, k4 s2 p1, k2 s2, k3 s2 p1 op1, about 2.7 MB)
    after which 4096x4096 MatMul weights fill up the size, as in a model whose upsampling is a
    small part. ``convtranspose``: every weight is a ConvTranspose weight (1024x1024 k4 s2 p1
    branches and one k2 s2), the worst case for the rewrite.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), name))
        return name

    def up(name: str, x: str, c_in: int, c_out: int, k: int, **attrs: object) -> str:
        inputs = [x, weight(f"{name}.weight", c_in, c_out, k, k), weight(f"{name}.bias", c_out)]
        nodes.append(helper.make_node("ConvTranspose", inputs, [name], name=name, strides=[2, 2], **attrs))
        return name

    budget = int(size_mb * 2**20)
    if case == "decoder":
        h = up("dec0", "x", 256, 128, 4, pads=[1, 1, 1, 1])
        h = up("dec1", h, 128, 64, 4, pads=[1, 1, 1, 1])
        h = up("dec2", h, 64, 32, 2)
        outputs.append(up("dec3", h, 32, 16, 3, pads=[1, 1, 1, 1], output_padding=[1, 1]))
        z = "z"
        for i in range(max(1, (budget - 2_800_000) // (4096 * 4096 * 4))):
            nodes.append(
                helper.make_node("MatMul", [z, weight(f"fc{i}.weight", 4096, 4096)], [f"fc{i}"], name=f"fc{i}")
            )
            z = f"fc{i}"
        outputs.append(z)
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 4, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4096]),
        ]
    else:
        channels = 1024
        for i in range(max(1, budget // (channels * channels * 16 * 4) - 1)):
            outputs.append(up(f"up{i}", "x", channels, channels, 4, pads=[1, 1, 1, 1]))
        outputs.append(up("pair", "x", channels, channels // 4, 2))
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 2, 2])]
    graph = helper.make_graph(
        nodes,
        "bench",
        inputs,
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * (2 if o.startswith("fc") else 4))
            for o in outputs
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
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
    parser.add_argument("--case", choices=["decoder", "convtranspose"], default="decoder")
    args = parser.parse_args()

    import onnx

    from deconv2shuffle.onnx_graph import migrate_onnx

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        src, copy, out = folder / "model.onnx", folder / "copy.onnx", folder / "out.onnx"
        size = build(src, args.size_mb, args.case)
        print(f"model ({args.case}): {size / 2**20:.0f} MiB")

        def baseline() -> None:
            onnx.save(onnx.load(str(src)), str(copy))

        def durable() -> None:
            baseline()
            fd = os.open(copy, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        runs: dict[str, Callable[[], object]] = {
            "onnx.load + onnx.save": baseline,
            "onnx.load + onnx.save + fsync": durable,
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
        best = min(times["onnx.load + onnx.save"])
        print(f"{'':34s} {'median':>9s} {'ratio':>6s} {'best':>9s} {'ratio':>6s}")
        for name, values in times.items():
            median, low = statistics.median(values), min(values)
            print(f"{name:34s} {median:7.2f} s {median / base:5.2f}x {low:7.2f} s {low / best:5.2f}x")
        report = migrate_onnx(src, out, force=True)
        print(f"end-to-end: {report.end_to_end}")


if __name__ == "__main__":
    main()
