"""`batch` over a folder that holds ONNX models beside checkpoints: each model rewritten, reported, resumed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_cases import convtranspose_model, op_types, random_input, relative_error, run, save  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
# name -> (model, input shape): 2D from the bundled sample, 1D and 3D built here
MODELS = {
    "forum.onnx": (None, [2, 3, 6, 5]),
    "wave.onnx": (
        convtranspose_model(rank=1, kernel=5, attrs={"strides": [3], "auto_pad": "SAME_UPPER"}),
        [2, 4, 7],
    ),
    "sub/volume.onnx": (
        convtranspose_model(rank=3, c_in=4, c_out=4, kernel=2, attrs={"strides": [2, 2, 2], "group": 2}),
        [1, 4, 3, 2, 3],
    ),
}


def _folder(tmp_path: Path) -> Path:
    """forum.pth with its sidecar spec (a checkpoint), and the ONNX models of MODELS."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("forum.pth", "forum.toml", "models.py"):
        shutil.copy(SAMPLES / name, src / name)
    for name, (model, _) in MODELS.items():
        if model is None:
            shutil.copy(SAMPLES / name, src / name)
        else:
            save(model, src / name)
    return src


def _batch(cli, *args):  # type: ignore[no-untyped-def]
    result = cli("batch", *args, "--json")
    return result, json.loads(result.stdout)


def _by_name(data: dict, src: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {Path(f["input"]).relative_to(src).as_posix(): f for f in data["files"]}


def _matches(src: Path, out: Path, name: str) -> None:
    """No ConvTranspose left in the output, and it computes what the input does (float32, ORT)."""
    assert "ConvTranspose" in op_types(src / name)
    assert "ConvTranspose" not in op_types(out / name) and "Conv" in op_types(out / name)
    x = random_input(MODELS[name][1])
    want, got = run(src / name, {"x": x}), run(out / name, {"x": x})
    assert len(want) == len(got) == 1
    assert relative_error(want[0], got[0]) <= 1e-5


def test_a_mixed_folder_converts_checkpoints_and_onnx_models(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    result, data = _batch(cli, src, out, "--recursive")
    assert result.exit_code == 0, result.output
    files = _by_name(data, src)
    assert sorted(files) == ["forum.onnx", "forum.pth", "sub/volume.onnx", "wave.onnx"]
    assert {n: (f["status"], f["kind"]) for n, f in files.items()} == {
        "forum.onnx": ("converted", "onnx"),
        "forum.pth": ("converted", "checkpoint"),
        "sub/volume.onnx": ("converted", "onnx"),
        "wave.onnx": ("converted", "onnx"),
    }
    for name in MODELS:
        assert files[name]["layers"] == 1 and files[name]["exact"] is True, files[name]
        assert files[name]["max_rel_error"] < 1e-12 and files[name]["spec"] is None
        assert files[name]["output"] == str(out / name)
        _matches(src, out, name)
    assert files["forum.pth"]["spec"] == str(src / "forum.toml") and (out / "forum.pth").is_file()
    assert data["converted"] == 4 and data["ok"] is True and data["notes"] == []


def test_a_corrupt_model_is_one_line_and_the_others_still_convert(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    good = (src / "wave.onnx").read_bytes()
    (src / "wave.onnx").write_bytes(good[: len(good) // 2])  # truncated
    result, data = _batch(cli, src, out, "--recursive")
    assert result.exit_code == 1, result.output  # what batch returns when some files failed
    files = _by_name(data, src)
    failed = files.pop("wave.onnx")
    assert failed["status"] == "failed" and failed["kind"] == "onnx"
    assert failed["error"].startswith(f"{src / 'wave.onnx'}: ") and "truncated or corrupt" in failed["error"]
    assert "\n" not in failed["error"]
    assert {f["status"] for f in files.values()} == {"converted"}
    assert not (out / "wave.onnx").exists() and not (out / ".deconv2shuffle" / "wave.onnx.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [".deconv2shuffle", "forum.onnx", "forum.pth", "sub"]
    _matches(src, out, "forum.onnx")


def test_the_table_names_the_failed_model_on_one_line(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    (src / "forum.onnx").write_bytes(b"\x08\x07 not a model")
    result = cli("batch", src, out)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "forum.onnx" in line and "FAILED" in line]
    assert len(lines) == 1 and "truncated or corrupt" in lines[0], result.output
    assert "wave.onnx" in result.output and "2 converted" in result.output


def test_resume_skips_the_models_already_done(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    assert _batch(cli, src, out, "--recursive")[0].exit_code == 0
    stamps = {name: (out / name).stat().st_mtime_ns for name in MODELS}
    save(convtranspose_model(rank=1, kernel=4, attrs={"strides": [2]}, seed=3), src / "wave.onnx")  # changed
    result, data = _batch(cli, src, out, "--recursive")
    assert result.exit_code == 0, result.output
    status = {n: f["status"] for n, f in _by_name(data, src).items()}
    assert status == {
        "forum.onnx": "skipped",
        "forum.pth": "skipped",
        "sub/volume.onnx": "skipped",
        "wave.onnx": "converted",
    }
    assert (out / "forum.onnx").stat().st_mtime_ns == stamps["forum.onnx"]
    assert (out / "wave.onnx").stat().st_mtime_ns != stamps["wave.onnx"]
    record = json.loads((out / ".deconv2shuffle" / "forum.onnx.json").read_text())
    assert list(record["inputs"]) == [str(src / "forum.onnx")]


def test_resume_follows_a_models_external_data(tmp_path, cli):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    model = convtranspose_model(c_in=16, c_out=32, kernel=4, attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]})
    onnx.save_model(model, str(src / "big.onnx"), save_as_external_data=True, location="big.bin", size_threshold=256)
    first = _batch(cli, src, out)[1]
    assert first["converted"] == 1, first
    record = json.loads((out / ".deconv2shuffle" / "big.onnx.json").read_text())
    assert sorted(Path(p).name for p in record["inputs"]) == ["big.bin", "big.onnx"]
    assert sorted(p.name for p in out.iterdir()) == [".deconv2shuffle", "big.onnx", "big.onnx.data"]
    assert _batch(cli, src, out)[1]["skipped"] == 1
    data = (src / "big.bin").read_bytes()
    (src / "big.bin").write_bytes(data[:-4] + bytes(4))  # the weights change, the model file does not
    assert _batch(cli, src, out)[1]["converted"] == 1


def test_parallel_workers_convert_onnx_models(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    (src / "forum.pth").unlink()
    result, data = _batch(cli, src, out, "--recursive", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert data["converted"] == 3 and {f["kind"] for f in data["files"]} == {"onnx"}
    for name in MODELS:
        _matches(src, out, name)


def test_dry_run_checks_models_and_writes_nothing(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    result, data = _batch(cli, src, out, "--recursive", "--dry-run")
    assert result.exit_code == 0, result.output
    assert data["checked"] == 4 and not out.exists()


def test_checkpoint_options_with_only_onnx_models_are_named(tmp_path, cli):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / "forum.onnx", src / "forum.onnx")
    result = cli("batch", src, out, "--spec", SAMPLES / "forum.toml", "--approx")
    assert result.exit_code == 0, result.output
    assert f"note: --spec {SAMPLES / 'forum.toml'}, --approx apply to checkpoints only" in result.output
    assert "all ONNX models" in result.output and "converted without them" in result.output
    _, data = _batch(cli, src, tmp_path / "out2", "--spec", SAMPLES / "forum.toml")
    assert data["converted"] == 1 and len(data["notes"]) == 1 and "spec=" in data["notes"][0]
    _, quiet = _batch(cli, src, tmp_path / "out3")
    assert quiet["notes"] == []


def test_the_note_is_not_given_when_a_checkpoint_uses_the_options(tmp_path, cli):
    src, out = _folder(tmp_path), tmp_path / "out"
    result, data = _batch(cli, src, out, "--spec", SAMPLES / "forum.toml")
    assert result.exit_code == 0, result.output
    assert data["notes"] == [] and data["converted"] == 3


def test_without_the_onnx_extra_a_model_fails_alone(tmp_path, cli, monkeypatch):
    src, out = _folder(tmp_path), tmp_path / "out"
    monkeypatch.setitem(sys.modules, "onnx", None)
    result, data = _batch(cli, src, out)
    assert result.exit_code == 1, result.output
    files = _by_name(data, src)
    assert files["forum.pth"]["status"] == "converted"
    for name in ("forum.onnx", "wave.onnx"):
        error = files[name]["error"]
        assert files[name]["status"] == "failed" and error.startswith(str(src / name))
        assert "pip install 'deconv2shuffle[onnx]'" in error and "\n" not in error
    assert sorted(p.name for p in out.iterdir()) == [".deconv2shuffle", "forum.pth"]


def test_a_node_left_as_it_is_is_noted(tmp_path, cli):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    save(convtranspose_model(weight_as="input", attrs={"strides": [2, 2]}), src / "open.onnx")
    result, data = _batch(cli, src, out)
    assert result.exit_code == 0, result.output
    (f,) = data["files"]
    assert f["status"] == "converted" and f["layers"] == 0
    assert f["note"].startswith("1 ConvTranspose node(s) left as they are (weight 'w' is a graph input")
    assert op_types(out / "open.onnx") == op_types(src / "open.onnx")
