"""Each sample architecture exported to ONNX by torch, rewritten, and compared in ONNX Runtime."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from onnx_cases import op_types, relative_error, run  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

from deconv2shuffle.onnx_graph import migrate_onnx  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
sys.path.insert(0, str(SAMPLES))

import models  # noqa: E402

# model, input shape, dynamic spatial axes, MACs ratio of each ConvTranspose after the rewrite
CASES = [
    ("DCGANSource", (2, 32, 1, 1), False, [1.0, 1.0, 1.0, 1.0]),
    ("UNetSource", (1, 1, 16, 12), True, [1.0, 1.0]),
    ("FSRCNNSource", (1, 1, 9, 7), True, [4 * 25 / 81]),
    ("CycleGANSource", (1, 3, 16, 12), True, [16 / 9, 16 / 9]),
    ("HiFiGANSource", (1, 20, 9), True, [1.0, 1.0]),
    ("UNet3DSource", (1, 1, 8, 6, 4), True, [1.0]),
    ("ForumSource", (1, 3, 12, 10), True, [1.0]),
]


def _export(model: torch.nn.Module, shape: tuple[int, ...], dynamic: bool, path: Path) -> None:
    axes = {0: "batch", **({i: f"len{i}" for i in range(2, len(shape))} if dynamic else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": {0: "batch"}},
        )


def _without_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """What inference code does before export (HiFi-GAN's remove_weight_norm): plain weights."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight")
    return model


@pytest.mark.parametrize(("name", "shape", "dynamic", "ratios"), CASES, ids=[c[0] for c in CASES])
def test_sample_model_exported_and_rewritten_matches(
    tmp_path: Path, name: str, shape: tuple[int, ...], dynamic: bool, ratios: list[float]
) -> None:
    torch.manual_seed(0)
    model = _without_weight_norm(getattr(models, name)().eval())
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}_subpixel.onnx"
    _export(model, shape, dynamic, src)
    report = migrate_onnx(src, dst, input_shapes={"x": shape})
    assert [n.status for n in report.nodes] == ["converted"] * len(ratios)
    assert [n.macs_ratio for n in report.nodes] == pytest.approx(ratios)
    assert "ConvTranspose" not in op_types(dst)
    sizes = [shape, (shape[0] + 1, shape[1], *[n + 4 for n in shape[2:]])] if dynamic else [shape]
    for size in sizes:
        x = torch.randn(size, generator=torch.Generator().manual_seed(sum(size)))
        [want], [got] = run(src, {"x": x.numpy()}), run(dst, {"x": x.numpy()})
        assert relative_error(want, got) <= 1e-5
        with torch.no_grad():
            eager = model(x).numpy()
        assert relative_error(eager, got) <= 1e-4


def test_bundled_forum_sample(tmp_path: Path) -> None:
    dst = tmp_path / "forum_subpixel.onnx"
    report = migrate_onnx(SAMPLES / "forum.onnx", dst)
    [node] = report.nodes
    assert node.weight_shape == [64, 256, 4, 4] and node.new_weight_shape == [1024, 64, 2, 2]
    model = models.ForumSource().eval()
    model.load_state_dict(torch.load(SAMPLES / "forum.pth", weights_only=True))
    x = torch.randn(2, 3, 13, 11, generator=torch.Generator().manual_seed(0))
    [got] = run(dst, {"x": x.numpy()})
    with torch.no_grad():
        assert relative_error(model(x).numpy(), got) <= 1e-5
