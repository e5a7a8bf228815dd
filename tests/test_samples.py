"""The bundled samples: the README's main command, the sample batch, float32 and ONNX Runtime checks."""

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deconv2shuffle import load_spec

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"
NAMES = ["cyclegan", "dcgan", "forum", "fsrcnn_x2", "fsrcnn_x3", "hifigan", "unet", "unet3d"]


def _models():
    spec = importlib.util.spec_from_file_location("sample_models", SAMPLES / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _checkpoint(name: str) -> Path:
    (path,) = [p for p in SAMPLES.iterdir() if p.name.split(".")[0] == name and p.suffix not in (".toml", ".onnx")]
    return path


def readme_main_command() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    line = next(ln for b in blocks for ln in b.splitlines() if "pip install" in ln and "deconv2shuffle migrate" in ln)
    return shlex.split(line.split("&&", 1)[1])


def test_readme_main_command_runs(tmp_path):
    args = readme_main_command()
    assert args[0] == "deconv2shuffle" and args[1] == "migrate"
    shutil.copytree(SAMPLES, tmp_path / "sample_checkpoints")
    out = subprocess.run(
        [sys.executable, "-m", "deconv2shuffle", *args[1:]], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "converted" in out.stdout and "end-to-end" in out.stdout
    written = [a for a in args[2:] if not a.startswith("-") and not a.startswith("sample_checkpoints")]
    assert (tmp_path / written[0]).is_file()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    out = tmp_path_factory.mktemp("converted")
    result = CliRunner().invoke(app, ["batch", str(SAMPLES), str(out), "--json"])  # real/ is tested on its own
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_sample_batch_converts_every_sample_exactly(converted):
    out, report = converted
    assert report["failed"] == 0 and report["converted"] == len(NAMES) + 1  # and forum.onnx, rewritten as ONNX
    assert [f["kind"] for f in report["files"]].count("onnx") == 1
    for f in report["files"]:
        assert f["exact"] is True and f["max_rel_error"] < 1e-12, f


def _loaded(name: str, out: Path):
    """The original model with the sample's weights, the target model with the converted ones, an input."""
    old, new, shape = _source_and_target(name)
    old.load_state_dict(_state(_checkpoint(name)), strict=True)
    new.load_state_dict(_state(out / _checkpoint(name).name), strict=True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return old.eval(), new.eval(), x


def _source_and_target(name: str):
    models = _models()
    spec = load_spec(SAMPLES / f"{name}.toml")
    src_cls = getattr(models, spec.models["source"].split(":")[1])
    dst_cls = getattr(models, spec.models["target"].split(":")[1])
    return (
        src_cls(**spec.models.get("source_args", {})),
        dst_cls(**spec.models.get("target_args", {})),
        tuple(spec.models["input_shape"]),
    )


def _state(path: Path) -> dict[str, torch.Tensor]:
    from deconv2shuffle.checkpoint import load_checkpoint

    state = load_checkpoint(path).state_dict
    return {k.removeprefix("model."): v for k, v in state.items()}


@pytest.mark.parametrize("name", NAMES)
def test_converted_samples_reproduce_the_originals_in_float32(converted, name):
    old, new, x = _loaded(name, converted[0])
    assert not any(
        isinstance(m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d))
        for m in new.modules()
    )
    with torch.no_grad():
        want, got = old(x), new(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_converted_samples_run_in_onnx_runtime(converted, name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    old, new, x = _loaded(name, converted[0])
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(new, (x,), str(path), dynamo=True, external_data=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = old(x)
    assert float((torch.from_numpy(got) - want).abs().max() / want.abs().max()) <= 1e-5


# the layers the minimal form brings to the ConvTranspose's own multiply-adds (phase shift + crops at both ends)
AT_PAR = {"dcgan", "forum", "hifigan", "fsrcnn_x3"}


@pytest.mark.parametrize("name", NAMES)
def test_every_sample_migrates_to_the_minimal_form_and_loads_strictly_into_convert_model(name, tmp_path):
    """From its source model alone a sample takes the cheapest form, exactly what convert_model(Source()) holds."""
    from deconv2shuffle import convert_model, migrate
    from deconv2shuffle.geometry import TransposedConv, smallest

    spec = load_spec(SAMPLES / f"{name}.toml")
    ref, args = spec.model_ref("source"), spec.models.get("source_args")
    out = tmp_path / _checkpoint(name).name
    report = migrate(_checkpoint(name), out, source_model=ref, source_args=args, input_shape=spec.models["input_shape"])
    e2e = report.end_to_end  # float64, against convert_model in the form the plan wrote
    assert e2e["max_rel_error"] <= e2e["tolerance"] <= 2e-6
    assert all(layer.target == f"{layer.source}.conv" for layer in report.layers)
    for layer in report.layers:
        listed = next(x for x in spec.layers if x.source == layer.source)
        k = tuple(layer.old_shape[2:])
        geo = TransposedConv.make(k, listed.stride, listed.padding, listed.output_padding, rank=len(k))
        assert layer.macs_ratio == smallest(geo, "minimal").macs_ratio <= smallest(geo, "symmetric").macs_ratio
        if name in AT_PAR:
            assert layer.macs_ratio == 1.0, (name, layer.source)
    source = getattr(_models(), ref.rpartition(":")[2])(**(args or {})).eval()
    source.load_state_dict(_state(_checkpoint(name)), strict=True)
    new = convert_model(source)
    new.load_state_dict(_state(out), strict=True)
    x = torch.randn(spec.models["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = source(x), new(x)
    assert got.shape == want.shape and float((got - want).abs().max() / want.abs().max()) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_a_hand_written_target_model_decides_the_form(name):
    """The sidecar specs name hand-written symmetric targets: their convs, not the minimal default, decide."""
    from deconv2shuffle import load_sources, migrate
    from deconv2shuffle.core.models import target_convs

    sources = load_sources(SAMPLES / f"{name}.toml")
    report = migrate(_checkpoint(name), None, sources=sources)
    convs = target_convs(sources.target_model)
    for layer in report.layers:
        assert layer.target_kernel_size == list(convs[layer.target].kernel_size), (name, layer.source)
        assert layer.crop_start == [0] * len(layer.crop_start)
    assert report.end_to_end["max_rel_error"] <= 1e-6


def test_generate_script_reproduces_the_samples(tmp_path):
    """The committed samples are what generate.py writes, on any CPU: it trains in float64 and stores float32, so
    the instruction set's rounding (which a few Adam steps through InstanceNorm grow to 1e-2 in float32) stays
    below float32's last bit. The tolerance admits one last-bit flip, nothing a change to the script would make."""
    out = subprocess.run([sys.executable, str(SAMPLES / "generate.py"), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in NAMES:
        fresh, kept = _state(tmp_path / _checkpoint(name).name), _state(_checkpoint(name))
        assert fresh.keys() == kept.keys()
        for key in kept:
            assert fresh[key].dtype == kept[key].dtype == torch.float32 or key.endswith("num_batches_tracked"), key
            torch.testing.assert_close(fresh[key], kept[key], rtol=2.5e-7, atol=1e-9, msg=f"{name}: {key}")


def test_readme_spec_example_is_valid():
    from deconv2shuffle import parse_spec

    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    spec = parse_spec("\n".join(line.strip() for line in block.splitlines()))
    (layer,) = spec.layers
    assert (layer.source, layer.target_module, layer.stride, layer.target_kernel_size) == (
        "decoder.up",
        "decoder.up.conv",
        2,
        3,
    )
    assert spec.rename == [("^backbone\\.", "encoder.")] and spec.drop == ["^loss\\."]
    assert spec.models["input_shape"] == [1, 3, 12, 12]
