"""ConvTranspose attributes: each rewritten model has no ConvTranspose and matches in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx_cases import convtranspose_model, op_types, random_input, relative_error, run, save  # noqa: E402

from deconv2shuffle.onnx_graph import inspect_onnx, migrate_onnx  # noqa: E402

# (id, rank, kernel, attributes, c_in, c_out)
CASES: list[tuple[str, int, Any, dict[str, Any], int, int]] = [
    ("k4s2p1", 2, 4, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, 4, 6),
    ("asymmetric-pads", 2, 5, {"strides": [3, 3], "pads": [2, 0, 1, 3]}, 4, 6),
    ("same-upper", 2, 3, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 4, 6),
    ("same-lower", 2, 3, {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, 4, 6),
    ("same-upper-output-padding", 2, 4, {"strides": [2, 2], "auto_pad": "SAME_UPPER", "output_padding": [1, 1]}, 4, 6),
    ("valid", 2, 3, {"strides": [2, 2], "auto_pad": "VALID"}, 4, 6),
    ("notset-output-padding", 2, 3, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 4, 6),
    ("output-padding-past-pads", 2, 3, {"strides": [3, 3], "pads": [1, 0, 0, 1], "output_padding": [2, 1]}, 4, 6),
    ("groups-dilation", 2, 3, {"strides": [2, 2], "dilations": [2, 2], "group": 2, "pads": [1, 2, 1, 0]}, 4, 6),
    ("depthwise", 2, 4, {"strides": [2, 2], "group": 4, "pads": [1, 1, 1, 1]}, 4, 4),
    ("dilation-over-stride", 2, 3, {"strides": [2, 1], "dilations": [3, 2], "output_padding": [1, 0]}, 4, 6),
    ("kernel-below-stride", 2, 2, {"strides": [4, 4]}, 4, 6),
    ("unequal-factors", 2, (4, 3), {"strides": [2, 3], "pads": [1, 0, 1, 1], "kernel_shape": [4, 3]}, 4, 6),
    ("stride-1", 2, 3, {"pads": [1, 0, 1, 2]}, 4, 6),
    ("1d-k16s8p4", 1, 16, {"strides": [8], "pads": [4, 4]}, 4, 3),
    ("1d-same-lower-groups", 1, 5, {"strides": [3], "auto_pad": "SAME_LOWER", "group": 2}, 4, 6),
    ("3d-k2s2", 3, 2, {"strides": [2, 2, 2]}, 4, 3),
    ("3d-mixed", 3, 3, {"strides": [2, 1, 2], "pads": [1, 0, 0, 1, 1, 0], "output_padding": [1, 0, 0]}, 2, 3),
]


def _migrate(tmp_path: Path, model: onnx.ModelProto) -> tuple[Path, Path, Any]:
    src = save(model, tmp_path / "in.onnx")
    dst = tmp_path / "out.onnx"
    report = migrate_onnx(src, dst)
    assert report.ok and dst.exists()
    return src, dst, report


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    ("rank", "kernel", "attrs", "c_in", "c_out"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rewrite_matches_in_onnxruntime(
    tmp_path: Path, rank: int, kernel: Any, attrs: dict[str, Any], c_in: int, c_out: int, bias: bool
) -> None:
    model = convtranspose_model(rank=rank, kernel=kernel, attrs=attrs, bias=bias, c_in=c_in, c_out=c_out)
    src, dst, report = _migrate(tmp_path, model)
    ops = op_types(dst)
    assert "ConvTranspose" not in ops
    strides = attrs.get("strides", [1] * rank)
    if rank == 2 and strides[0] == strides[1] > 1:
        assert "DepthToSpace" in ops
    elif max(strides) > 1:
        assert "Reshape" in ops and "Transpose" in ops
    [node] = report.nodes
    assert node.status == "converted" and node.max_rel_error is not None and node.max_rel_error < 1e-12
    assert report.end_to_end is not None and report.end_to_end["max_rel_error"] <= 1e-5
    # dynamic batch and spatial axes: two sizes the library's own check did not use
    for batch, length in ((2, 5), (1, 7)):
        x = random_input([batch, c_in, *[length + i for i in range(rank)]], seed=length)
        [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
        assert relative_error(want, got) <= 1e-5


@pytest.mark.parametrize(
    ("rank", "kernel", "attrs", "c_in", "c_out"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_large_weights_take_the_written_while_rewritten_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rank: int,
    kernel: Any,
    attrs: dict[str, Any],
    c_in: int,
    c_out: int,
) -> None:
    """Weights above 4 KiB stay out of the protobuf and are streamed into the file."""
    from deconv2shuffle.onnx_graph.deferred import Deferred

    added: list[str] = []
    real_add = Deferred.add
    monkeypatch.setattr(
        Deferred, "add", lambda self, proto, name, *a: (added.append(name), real_add(self, proto, name, *a))
    )
    model = convtranspose_model(rank=rank, kernel=kernel, attrs=attrs, c_in=8 * c_in, c_out=8 * c_out)
    src, dst, report = _migrate(tmp_path, model)
    assert added == ["w_subpixel"] and report.nodes[0].max_rel_error < 1e-12
    assert "ConvTranspose" not in op_types(dst)
    new_weight = next(t for t in onnx.load(str(dst)).graph.initializer if t.name == "w_subpixel")
    assert list(new_weight.dims) == report.nodes[0].new_weight_shape
    x = random_input([2, 8 * c_in, *[5 + i for i in range(rank)]], seed=3)
    [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
    assert relative_error(want, got) <= 1e-5


@pytest.mark.parametrize(
    ("rank", "kernel", "attrs", "lengths"),
    [
        (2, 4, {"strides": [2, 2], "output_shape": [10, 13]}, (5, 6)),
        (2, 3, {"strides": [2, 2], "output_shape": [9, 12], "auto_pad": "SAME_UPPER"}, (5, 6)),
        (2, 3, {"strides": [2, 3], "output_shape": [10, 16], "pads": [3, 3, 3, 3]}, (5, 6)),
        (2, 4, {"strides": [2, 2], "output_shape": [11, 11]}, None),
        (2, 3, {"strides": [2, 2], "output_shape": [9, 10], "auto_pad": "SAME_UPPER"}, None),
        (1, 5, {"strides": [3], "output_shape": [20], "auto_pad": "SAME_LOWER"}, None),
    ],
    ids=["static", "static-same-upper", "static-pads-ignored", "dynamic", "dynamic-same-upper", "1d-dynamic"],
)
def test_output_shape(tmp_path: Path, rank: int, kernel: int, attrs: dict[str, Any], lengths: Any) -> None:
    model = convtranspose_model(rank=rank, kernel=kernel, attrs=attrs, lengths=lengths)
    src, dst, report = _migrate(tmp_path, model)
    assert "ConvTranspose" not in op_types(dst)
    sizes = [lengths] if lengths else [(6, 7, 8)[:rank], (8, 9, 10)[:rank], (7, 7, 7)[:rank]]
    for size in sizes:
        x = random_input([1, 4, *size], seed=sum(size))
        [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
        assert tuple(got.shape[2:]) == tuple(attrs["output_shape"])
        assert relative_error(want, got) <= 1e-5


def test_constant_node_weight_is_rewritten_and_removed(tmp_path: Path) -> None:
    model = convtranspose_model(attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}, kernel=4, weight_as="constant")
    _, dst, report = _migrate(tmp_path, model)
    out = onnx.load(str(dst))
    assert "Constant" not in [n.op_type for n in out.graph.node]
    assert "w" not in {t.name for t in out.graph.initializer}
    assert report.nodes[0].new_weight_shape == [24, 4, 2, 2]
    assert "w" in report.removed


@pytest.mark.parametrize(
    ("weight_as", "attrs", "reason"),
    [
        ("input", {"strides": [2, 2]}, "graph input"),
        ("initializer", {"strides": [4, 4], "auto_pad": "SAME_UPPER"}, "runtimes disagree"),
    ],
    ids=["weight-is-input", "negative-same-padding"],
)
def test_nodes_left_as_they_are_are_reported(
    tmp_path: Path, weight_as: str, attrs: dict[str, Any], reason: str
) -> None:
    model = convtranspose_model(kernel=2, attrs=attrs, weight_as=weight_as)
    src, dst, report = _migrate(tmp_path, model)
    [node] = report.nodes
    assert node.status == "left" and reason in (node.reason or "")
    assert "ConvTranspose" in op_types(dst)
    assert reason in report.to_markdown()


def test_computed_weight_is_left_with_a_hint(tmp_path: Path) -> None:
    model = convtranspose_model(attrs={"strides": [2, 2]})
    graph = model.graph
    graph.initializer[0].name = "w_raw"
    graph.node.insert(0, onnx.helper.make_node("Neg", ["w_raw"], ["w"], name="negate"))
    src, dst, report = _migrate(tmp_path, model)
    assert report.nodes[0].status == "left"
    assert "computed by a Neg node" in (report.nodes[0].reason or "")


def test_everything_else_is_kept(tmp_path: Path) -> None:
    model = convtranspose_model(kernel=4, attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]})
    model.doc_string = "a model"
    model.producer_name, model.model_version = "tests", 7
    onnx.helper.set_model_props(model, {"author": "someone", "license": "MIT"})
    model.graph.doc_string = "the graph"
    model.graph.node[0].doc_string = "relu first"
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["N", 4, None, None]))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, ["N", 6, None, None]))
    _, dst, report = _migrate(tmp_path, model)
    out = onnx.load(str(dst))
    assert out.doc_string == "a model" and out.producer_name == "tests" and out.model_version == 7
    assert {p.key: p.value for p in out.metadata_props} == {"author": "someone", "license": "MIT"}
    assert out.graph.doc_string == "the graph" and out.graph.node[0].doc_string == "relu first"
    assert [v.name for v in out.graph.value_info] == ["h", "u"]
    assert [(i.domain, i.version) for i in out.opset_import] == [("", 17)]
    names = [n.name for n in out.graph.node]
    assert names[0] == "pre" and names[-1] == "post" and len(set(names)) == len(names)
    assert all(n.startswith("up/") for n in names[1:-1])
    assert out.graph.node[-2].output[0] == "u"  # the crop writes the ConvTranspose's output name
    assert report.opset_raised_to is None


def test_shared_weight_and_weight_used_elsewhere(tmp_path: Path) -> None:
    model = convtranspose_model(kernel=4, attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}, bias=False)
    graph = model.graph
    graph.node.append(onnx.helper.make_node("ConvTranspose", ["h", "w"], ["u2"], name="up2", strides=[2, 2]))
    graph.node.append(onnx.helper.make_node("Identity", ["w"], ["w_out"], name="keep"))
    graph.output.append(onnx.helper.make_tensor_value_info("u2", onnx.TensorProto.FLOAT, [None] * 4))
    graph.output.append(onnx.helper.make_tensor_value_info("w_out", onnx.TensorProto.FLOAT, [None] * 4))
    src, dst, report = _migrate(tmp_path, model)
    assert [n.status for n in report.nodes] == ["converted", "converted"]
    assert "w" in {t.name for t in onnx.load(str(dst)).graph.initializer}  # still read by Identity
    x = random_input([1, 4, 5, 6])
    for want, got in zip(run(src, {"x": x}), run(dst, {"x": x})):
        assert relative_error(want, got) <= 1e-5


def test_old_opset_is_raised_to_11_only_when_nothing_else_changes(tmp_path: Path) -> None:
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    _, dst, report = _migrate(tmp_path, convtranspose_model(kernel=4, attrs=attrs, opset=9))
    assert report.opset_raised_to == 11 and "DepthToSpace" in op_types(dst)
    assert [i.version for i in onnx.load(str(dst)).opset_import] == [11]
    assert "raised from 9 to 11" in report.to_markdown()

    blocked = convtranspose_model(kernel=4, attrs=attrs, opset=9)
    blocked.graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").ones(4, "float32"), "scales"))
    blocked.graph.node[-1].CopyFrom(onnx.helper.make_node("Upsample", ["u", "scales"], ["y"], name="post"))
    (tmp_path / "b").mkdir()
    src, dst, report = _migrate(tmp_path / "b", blocked)
    ops = op_types(dst)
    assert report.opset_raised_to is None and "DepthToSpace" not in ops and "ConvTranspose" not in ops
    assert "Upsample" in " ".join(report.notes)
    slices = [n for n in onnx.load(str(dst)).graph.node if n.op_type == "Slice"]
    assert slices and len(slices[0].input) == 1  # opset 9: starts/ends are attributes
    x = random_input([1, 4, 5, 6])
    [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
    assert relative_error(want, got) <= 1e-5


def test_inspect_lists_the_plan_without_writing(tmp_path: Path) -> None:
    model = convtranspose_model(kernel=4, attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]})
    src = save(model, tmp_path / "in.onnx")
    report = inspect_onnx(src)
    [node] = report.nodes
    assert node.status == "convertible" and node.macs_ratio == 1.0
    assert node.new_geometry == "Conv 2x2 pad 1 + shuffle 2 + crop 1"
    assert node.new_weight_shape == [24, 4, 2, 2]
    assert list(tmp_path.iterdir()) == [src]


def test_a_node_that_fails_late_is_left_without_leftovers(tmp_path: Path) -> None:
    """output_shape with unknown input sizes needs a computed Slice (opset 10+); at opset 9 the node stays."""
    model = convtranspose_model(kernel=3, attrs={"strides": [2, 3], "output_shape": [9, 13]}, opset=9)
    src, dst, report = _migrate(tmp_path, model)
    [node] = report.nodes
    assert node.status == "left" and "needs opset 10" in (node.reason or "")
    out = onnx.load(str(dst))
    assert [t.name for t in out.graph.initializer] == ["w", "b"]
    assert [n.op_type for n in out.graph.node] == ["Relu", "ConvTranspose", "Sigmoid"]


@pytest.mark.parametrize("group", [1, 2, 6])
def test_large_layers_are_checked_on_sampled_channels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: int
) -> None:
    monkeypatch.setattr("deconv2shuffle.onnx_graph.verify._FULL_CHECK_MACS", 0)
    attrs = {"strides": [2, 2], "pads": [1, 0, 2, 1], "group": group}
    model = convtranspose_model(kernel=4, c_in=6, c_out=12 if group != 6 else 6, attrs=attrs)
    _, _, report = _migrate(tmp_path, model)
    [node] = report.nodes
    assert node.status == "converted" and node.max_rel_error is not None and node.max_rel_error < 1e-12
