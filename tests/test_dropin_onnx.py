"""A converted model exports to ONNX without ConvTranspose, and ONNX Runtime agrees with torch."""

import numpy as np
import pytest
import torch
from torch import nn

from deconv2shuffle import convert_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


class Layers(nn.Module):
    """One layer per case, so that a single export (seconds each) covers them all."""

    def __init__(self):
        super().__init__()
        self.k4s2p1 = nn.ConvTranspose2d(4, 3, 4, 2, 1)  # 2x2 pad 1, crop 1 at both ends: Conv, DepthToSpace, Slice
        self.k2s2 = nn.ConvTranspose2d(4, 3, 2, 2)  # 1x1, nothing to crop: Conv, DepthToSpace
        self.k9s3p4op2 = nn.ConvTranspose2d(4, 3, 9, 3, 4, 2)  # pad 1 before, 2 after
        self.k16s8p4 = nn.ConvTranspose1d(4, 3, 16, 8, 4)  # 1D shuffle: Reshape, Transpose
        self.k4s2p1_3d = nn.ConvTranspose3d(2, 3, 4, 2, 1)

    def forward(self, x2, x1, x3):
        return self.k4s2p1(x2), self.k2s2(x2), self.k9s3p4op2(x2), self.k16s8p4(x1), self.k4s2p1_3d(x3)


def test_onnx_graph_is_conv_shuffle_slice_and_runtime_agrees(tmp_path):
    torch.manual_seed(0)
    model = Layers().eval()
    new = convert_model(model).eval()
    xs = (torch.randn(1, 4, 6, 5), torch.randn(1, 4, 7), torch.randn(1, 2, 3, 4, 2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(new, xs, str(path), dynamo=True)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == 5, ops
    assert set(ops) <= {"Conv", "DepthToSpace", "Slice", "Pad", "Reshape", "Transpose"}, ops
    assert ops.count("DepthToSpace") == 3, ops  # the 2D shuffles (the exporter may fold the one Pad into its Conv)
    for node in graph.node:
        if node.op_type == "DepthToSpace":
            assert {a.name: a.s.decode() for a in node.attribute if a.type == a.STRING}["mode"] == "CRD"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs)})
    with torch.no_grad():
        want = [w.numpy() for w in model(*xs)]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
