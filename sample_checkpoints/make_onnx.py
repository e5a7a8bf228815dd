"""Regenerate the ONNX sample: ``python sample_checkpoints/make_onnx.py``.

``forum.onnx`` is the forum-case model (``models.ForumSource``: Conv -> ConvTranspose2d(64, 256,
4, 2, 1) -> Conv) with the trained weights of ``forum.pth``, exported by torch's TorchScript-based
exporter at opset 17 with dynamic batch and spatial axes (input ``x``, output ``y``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402


def main() -> None:
    model = models.ForumSource().eval()
    model.load_state_dict(torch.load(HERE / "forum.pth", weights_only=True))
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notice that it is the legacy one
        torch.onnx.export(
            model,
            (x,),
            str(HERE / "forum.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )
    print(f"wrote {HERE / 'forum.onnx'}")


if __name__ == "__main__":
    main()
