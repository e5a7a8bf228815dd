"""ONNX files: bad input, external data, atomic writes, the optional extra, the report, sniffing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx_cases import convtranspose_model, op_types, random_input, relative_error, run, save  # noqa: E402

import deconv2shuffle.onnx_graph.lower as lower_module  # noqa: E402
from deconv2shuffle.errors import Deconv2ShuffleError, OutputExistsError, VerificationError  # noqa: E402
from deconv2shuffle.onnx_graph import (  # noqa: E402
    OnnxModelError,
    OnnxUnavailableError,
    inspect_onnx,
    looks_like_onnx,
    migrate_onnx,
    require_onnx,
)

FORUM = {"kernel": 4, "attrs": {"strides": [2, 2], "pads": [1, 1, 1, 1]}}


def _src(tmp_path: Path) -> Path:
    return save(convtranspose_model(**FORUM), tmp_path / "in.onnx")  # type: ignore[arg-type]


def _only(tmp_path: Path, *names: str) -> None:
    """Nothing but ``names`` in the folder: no output, no temporary files left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda data: data[: len(data) // 2], "truncated or corrupt"),
        (lambda data: b"\x08\x07" + bytes(range(256)) * 4, "not a readable ONNX model|not an ONNX model|fails onnx"),
        (lambda data: b"", "not an ONNX model|truncated"),
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_input_is_one_clear_error_and_nothing_written(tmp_path: Path, damage, match: str) -> None:  # type: ignore[no-untyped-def]
    src = _src(tmp_path)
    src.write_bytes(damage(src.read_bytes()))
    with pytest.raises(OnnxModelError, match=match) as info:
        migrate_onnx(src, tmp_path / "out.onnx")
    assert str(src) in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2
    _only(tmp_path, "in.onnx")


@pytest.mark.parametrize("opset", [5, 99])
def test_unsupported_opset(tmp_path: Path, opset: int) -> None:
    model = convtranspose_model(**FORUM)  # type: ignore[arg-type]
    model.opset_import[0].version = opset
    src = save(model, tmp_path / "in.onnx")
    with pytest.raises(OnnxModelError, match=f"in.onnx: opset {opset} is not supported"):
        migrate_onnx(src, tmp_path / "out.onnx")
    _only(tmp_path, "in.onnx")


def _external(tmp_path: Path) -> Path:
    model = convtranspose_model(**FORUM, c_in=16, c_out=32)  # type: ignore[arg-type]
    src = tmp_path / "in.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="weights.bin", size_threshold=256)
    return src


def test_external_data_in_external_data_out(tmp_path: Path) -> None:
    src = _external(tmp_path)
    dst = tmp_path / "out.onnx"
    report = migrate_onnx(src, dst)
    assert report.external_data and report.written == [str(tmp_path / "out.onnx.data"), str(dst)]
    _only(tmp_path, "in.onnx", "weights.bin", "out.onnx", "out.onnx.data")
    out = onnx.load(str(dst), load_external_data=False)
    big = [t for t in out.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert big and all(e.value == "out.onnx.data" for t in big for e in t.external_data if e.key == "location")
    x = random_input([1, 16, 5, 6])
    [want], [got] = run(src, {"x": x}), run(dst, {"x": x})
    assert relative_error(want, got) <= 1e-5


def test_missing_external_data_names_the_file(tmp_path: Path) -> None:
    src = _external(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(OnnxModelError, match=r"in.onnx: external data file 'weights.bin' of tensor 'w' is missing"):
        migrate_onnx(src, tmp_path / "out.onnx")
    _only(tmp_path, "in.onnx")


def test_truncated_external_data(tmp_path: Path) -> None:
    src = _external(tmp_path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(OnnxModelError, match="weights.bin' is shorter .* it is truncated"):
        migrate_onnx(src, tmp_path / "out.onnx")


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    src = _external(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../weights.bin"
    onnx.save(model, str(tmp_path / "m" / "in.onnx"))
    with pytest.raises(OnnxModelError, match="outside the model's folder"):
        migrate_onnx(tmp_path / "m" / "in.onnx", tmp_path / "m" / "out.onnx")


def test_existing_output_needs_force_and_input_is_never_overwritten(tmp_path: Path) -> None:
    src, dst = _src(tmp_path), tmp_path / "out.onnx"
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=r"out.onnx: already exists; pass force=True"):
        migrate_onnx(src, dst)
    assert dst.read_bytes() == b"keep me"
    migrate_onnx(src, dst, force=True)
    assert "ConvTranspose" not in op_types(dst)
    before = src.read_bytes()
    with pytest.raises(OutputExistsError, match="is the input model"):
        migrate_onnx(src, src, force=True)
    assert src.read_bytes() == before
    with pytest.raises(OutputExistsError, match="is a folder"):
        migrate_onnx(src, tmp_path, force=True)


def _broken_lower(*args, **kwargs):  # type: ignore[no-untyped-def]
    low = original_lower(*args, **kwargs)
    return lower_module.Lowering(**{**low.__dict__, "weight": None if low.weight is None else -low.weight})


original_lower = lower_module.lower


@pytest.mark.parametrize(
    ("verify", "sampled"), [(True, False), (True, True), (False, False)], ids=["node", "sampled-node", "end-to-end"]
)
def test_failed_verification_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: bool, sampled: bool
) -> None:
    monkeypatch.setattr("deconv2shuffle.onnx_graph.convert.lower", _broken_lower)
    if sampled:  # large layers are checked on a sample of output channels
        monkeypatch.setattr("deconv2shuffle.onnx_graph.verify._FULL_CHECK_MACS", 0)
    src = _src(tmp_path)
    match = "differs from the ConvTranspose" if verify else "differs from the original"
    with pytest.raises(VerificationError, match=match) as info:
        migrate_onnx(src, tmp_path / "out.onnx", verify=verify)
    assert info.value.exit_code == 1
    _only(tmp_path, "in.onnx")


def test_without_onnxruntime_the_end_to_end_check_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    report = migrate_onnx(_src(tmp_path), tmp_path / "out.onnx")
    assert report.ok and report.end_to_end is not None
    assert "onnxruntime is not installed" in report.end_to_end["skipped"]
    assert "end-to-end: skipped: onnxruntime is not installed" in report.to_markdown()


def test_without_onnx_one_line_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _src(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    for call in (lambda: require_onnx(src), lambda: migrate_onnx(src, tmp_path / "o.onnx"), lambda: inspect_onnx(src)):
        with pytest.raises(OnnxUnavailableError, match=r"pip install 'deconv2shuffle\[onnx\]'") as info:
            call()
        assert isinstance(info.value, Deconv2ShuffleError) and info.value.exit_code == 2
        assert "\n" not in str(info.value)
    assert looks_like_onnx(src)  # sniffing needs no onnx
    _only(tmp_path, "in.onnx")


def test_sniffing(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.save({"w": torch.ones(2)}, tmp_path / "a.pth")
    save_file({"w": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    (tmp_path / "c.onnx").write_bytes(b"not onnx at all")
    assert looks_like_onnx(_src(tmp_path)) and looks_like_onnx(_external(tmp_path))
    assert not any(looks_like_onnx(tmp_path / n) for n in ("a.pth", "b.safetensors", "c.onnx", "missing.onnx"))


def test_report_forms(tmp_path: Path) -> None:
    report = migrate_onnx(_src(tmp_path), tmp_path / "out.onnx")
    data = json.loads(report.to_json())
    [node] = data["nodes"]
    assert node["node"] == "up" and node["old_geometry"] == "ConvTranspose2d k4 s2 p1"
    assert node["new_geometry"] == "Conv 2x2 pad 1 + shuffle 2 + crop 1 (DepthToSpace CRD)"
    assert node["macs_ratio"] == 1.0 and node["max_abs_error"] < 1e-12
    assert data["end_to_end"]["max_rel_error"] <= 1e-5 and data["ok"]
    report.write(tmp_path / "r.json")
    report.write(tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text()) == data
    md = (tmp_path / "r.md").read_text()
    assert "| `up` | ConvTranspose2d k4 s2 p1 |" in md and "max relative error" in md


def test_models_over_the_protobuf_limit_are_written_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2 GiB limit, scaled down: a model "too large" for one protobuf goes to external data."""
    monkeypatch.setattr("deconv2shuffle.onnx_graph.migration._INLINE_LIMIT", 1000)
    src = _src(tmp_path)
    with pytest.raises(OnnxModelError, match=r"do not fit in one protobuf message .* \(external_data=True\)"):
        migrate_onnx(src, tmp_path / "out.onnx", external_data=False)
    _only(tmp_path, "in.onnx")
    report = migrate_onnx(src, tmp_path / "out.onnx")
    assert report.external_data and "written as external data" in " ".join(report.notes)
    _only(tmp_path, "in.onnx", "out.onnx", "out.onnx.data")
    x = random_input([1, 4, 5, 6])
    [want], [got] = run(src, {"x": x}), run(tmp_path / "out.onnx", {"x": x})
    assert relative_error(want, got) <= 1e-5


def test_output_data_file_may_not_replace_the_inputs(tmp_path: Path) -> None:
    model = convtranspose_model(**FORUM, c_in=16, c_out=32)  # type: ignore[arg-type]
    src = tmp_path / "in.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="out.onnx.data", size_threshold=256)
    with pytest.raises(OutputExistsError, match="would replace the input's external data"):
        migrate_onnx(src, tmp_path / "out.onnx", force=True)
    _only(tmp_path, "in.onnx", "out.onnx.data")


def test_missing_input_and_folder_input(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match=r"nope.onnx: no such file"):
        migrate_onnx(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(OnnxModelError, match=r"dir.onnx: is a folder, not an ONNX file"):
        inspect_onnx(tmp_path / "dir.onnx")
    _only(tmp_path, "dir.onnx")


def _deferred_case():  # type: ignore[no-untyped-def]
    """A model whose two large initializers are placeholders (values in a Deferred), and the same model whole."""
    import numpy as np
    from onnx import helper, numpy_helper

    from deconv2shuffle.onnx_graph.deferred import Deferred

    rng = np.random.default_rng(0)
    values = {
        "w": rng.standard_normal((64, 40)).astype(np.float32),  # large enough for multi-byte lengths
        "q": rng.integers(-128, 127, (3000,)).astype(np.int8),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["qf"], ["s"], keepdims=0),
        helper.make_node("Add", ["y", "s"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 40])],
        [numpy_helper.from_array(np.ones(3, np.float32), "kept")],
    )
    held = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    held.metadata_props.add(key="k", value="v")  # a field after the graph: the order on the wire does not matter
    deferred = Deferred()
    for name, array in values.items():
        deferred.add(
            held.graph.initializer.add(), name, numpy_helper.from_array(array).data_type, torch.from_numpy(array)
        )
    deferred.add(onnx.TensorProto(), "gone", TensorProto.FLOAT, torch.ones(2000))  # not in the graph (a node left)

    def whole(order):  # type: ignore[no-untyped-def]
        model = onnx.ModelProto()
        model.CopyFrom(held)
        del model.graph.initializer[:]
        model.graph.initializer.extend([numpy_helper.from_array(values[n], n) for n in order])
        model.graph.initializer.extend([numpy_helper.from_array(np.ones(3, np.float32), "kept")])
        return model

    return held, deferred, whole, values


def _runs_as_written(path: Path, values) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    onnx.checker.check_model(str(path), full_check=True)
    assert looks_like_onnx(path)
    x = random_input([2, 64])
    [got] = run(path, {"x": x})
    np.testing.assert_allclose(got, x @ values["w"] + values["q"].astype(np.float32).sum(), rtol=1e-5)


def test_deferred_weights_are_written_as_one_message_protobuf_reads_back(tmp_path: Path) -> None:
    """The writer's own framing of placeholder weights, held against protobuf's parser and ONNX Runtime."""
    import io

    from deconv2shuffle.onnx_graph.deferred import write_spliced

    held, deferred, whole, values = _deferred_case()
    before = held.SerializeToString()
    buffer = io.BytesIO()
    write_spliced(held, deferred, buffer)
    assert onnx.ModelProto.FromString(buffer.getvalue()) == whole(["w", "q"])  # placeholders filled, first
    assert held.SerializeToString() == before  # the placeholders are back
    (tmp_path / "m.onnx").write_bytes(buffer.getvalue())
    _runs_as_written(tmp_path / "m.onnx", values)


@pytest.mark.parametrize("streamed", [["q"], ["q", "w"], [], ["gone", "q"]])
def test_weights_streamed_during_the_rewrite_make_the_same_model(tmp_path: Path, streamed: list[str]) -> None:
    """What the writer thread wrote early is kept when the graph still holds it; otherwise the file is redone."""
    from deconv2shuffle.onnx_graph.output import output

    held, deferred, whole, values = _deferred_case()
    dst = tmp_path / "m.onnx"
    with output(dst) as out:
        assert out is not None
        out.stream(held, deferred)
        out.done(streamed)
        assert out.write(held, deferred, external=False) == [dst]
    order = ["q", "w"] if streamed and "gone" not in streamed else ["w", "q"]
    assert onnx.load(str(dst)) == whole(order)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    _runs_as_written(dst, values)


def test_a_failure_while_streaming_publishes_nothing(tmp_path: Path) -> None:
    from deconv2shuffle.onnx_graph.output import output

    held, deferred, _, _ = _deferred_case()
    with pytest.raises(KeyboardInterrupt), output(tmp_path / "m.onnx") as out:
        assert out is not None
        out.stream(held, deferred)
        out.done(["w", "q"])
        raise KeyboardInterrupt  # e.g. Ctrl-C during the rewrite
    assert list(tmp_path.iterdir()) == []


def test_weights_the_rewrite_leaves_alone_are_written_as_they_were(tmp_path: Path) -> None:
    """Large initializers no ConvTranspose reads go to the file early, from their bytes: the same tensors."""
    import numpy as np
    from onnx import helper, numpy_helper

    model = convtranspose_model(**FORUM, c_in=16, c_out=32)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    fc = numpy_helper.from_array(rng.standard_normal((48, 40)).astype(np.float32), "fc")
    fc.doc_string = "a field besides the data"
    half = numpy_helper.from_array(rng.standard_normal((3000,)).astype(np.float16), "half")
    model.graph.initializer.extend([fc, half])
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 48]))
    model.graph.node.extend(
        [
            helper.make_node("MatMul", ["z", "fc"], ["zf"]),
            helper.make_node("Cast", ["half"], ["h32"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["h32"], ["hs"], keepdims=0),
            helper.make_node("Add", ["zf", "hs"], ["v"]),
        ]
    )
    model.graph.output.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 40]))
    src = save(model, tmp_path / "in.onnx")
    report = migrate_onnx(src, tmp_path / "out.onnx")
    assert report.ok and report.end_to_end["max_rel_error"] <= 1e-5
    kept = {t.name: t for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    assert kept["fc"] == fc and kept["half"] == half
    assert "w" not in kept and "ConvTranspose" not in op_types(tmp_path / "out.onnx")
    feeds = {"x": random_input([1, 16, 5, 6]), "z": random_input([2, 48], seed=2)}
    for want, got in zip(run(src, feeds), run(tmp_path / "out.onnx", feeds), strict=True):
        assert relative_error(want, got) <= 1e-5
    _only(tmp_path, "in.onnx", "out.onnx")
