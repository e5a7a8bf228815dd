"""The end-to-end check on real example inputs: a diffusers UNet that takes a timestep, on the command line.

No wrapper class: ``--example-inputs`` gives ``(sample, timestep)`` as a Python function, a
``.safetensors`` file or a ``.pt`` file. Skips when diffusers is missing.
"""

from __future__ import annotations

import json

import pytest
import torch
from real_models_helpers import need, trained
from test_real_models import UNET1D_ARGS

from deconv2shuffle.examples import save_example_inputs
from deconv2shuffle.loading import load_converted

pytestmark = pytest.mark.filterwarnings("ignore")

INPUTS_PY = """
import torch


def make_inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, generator=gen), torch.tensor([10])), {}
"""


@pytest.fixture(scope="module")
def unet1d(tmp_path_factory):
    diffusers = need("diffusers")
    need("diffusers", "UNet1DModel")
    torch.manual_seed(0)
    model = trained(diffusers.UNet1DModel(**UNET1D_ARGS)).eval()
    folder = tmp_path_factory.mktemp("unet1d")
    model.save_pretrained(folder / "original")
    return diffusers, model, folder / "original" / "diffusion_pytorch_model.safetensors"


def _migrate(cli, src, out, *extra):
    args = ["--source-model", "diffusers:UNet1DModel", "--source-args", json.dumps(UNET1D_ARGS), "--json", *extra]
    return cli("migrate", src, out, *args)


def _write_inputs(tmp_path, form: str) -> str:
    sample = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    if form == "python":
        (tmp_path / "inputs.py").write_text(INPUTS_PY)
        return f"{tmp_path / 'inputs.py'}:make_inputs"
    if form == "safetensors":
        return str(save_example_inputs(tmp_path / "inputs.safetensors", sample, torch.tensor([10])))
    torch.save({"args": [sample, torch.tensor([10])], "kwargs": {}}, tmp_path / "inputs.pt")
    return str(tmp_path / "inputs.pt")


def test_without_example_inputs_the_timestep_model_cannot_be_checked(unet1d, tmp_path, cli):
    _, _, src = unet1d
    result = _migrate(cli, src, tmp_path / "out.safetensors", "--input-shape", "2,4,16")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert "the source model cannot run on --input-shape 2,4,16" in error and "--example-inputs" in error
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("form", ["python", "safetensors", "pt"])
def test_example_inputs_with_a_timestep_check_the_whole_model(unet1d, tmp_path, cli, form):
    diffusers, model, src = unet1d
    out = tmp_path / "out.safetensors"
    result = _migrate(cli, src, out, "--example-inputs", _write_inputs(tmp_path, form))
    assert result.exit_code == 0, result.output
    e2e = json.loads(result.stdout)["end_to_end"]
    assert e2e["inputs"] == "(2, 4, 16) float32, (1,) int64" and e2e["max_rel_error"] <= 1e-10, e2e
    converted = load_converted(lambda: diffusers.UNet1DModel(**UNET1D_ARGS), out)
    sample = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(sample, torch.tensor([10])).sample
        got = converted(sample, torch.tensor([10])).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_spec_can_name_its_example_inputs_relative_to_its_folder(unet1d, tmp_path, cli):
    _, _, src = unet1d
    _write_inputs(tmp_path, "python")
    spec = tmp_path / "unet.toml"
    spec.write_text(
        '[models]\nsource = "diffusers:UNet1DModel"\nexample_inputs = "inputs.py:make_inputs"\n'
        f"[models.source_args]\n{_toml_table(UNET1D_ARGS)}"
    )
    result = cli("migrate", src, tmp_path / "out.safetensors", "--spec", spec, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["end_to_end"]["inputs_source"].endswith("inputs.py:make_inputs")


def test_input_shape_and_example_inputs_together_are_refused(unet1d, tmp_path, cli):
    _, _, src = unet1d
    ref = _write_inputs(tmp_path, "python")
    result = _migrate(cli, src, tmp_path / "o.safetensors", "--example-inputs", ref, "--input-shape", "2,4,16")
    assert result.exit_code == 2 and "give one" in json.loads(result.stdout)["error"]


def _toml_table(values: dict) -> str:
    import tomli_w

    return tomli_w.dumps(values)


def test_batch_takes_example_inputs_for_every_file(unet1d, tmp_path, cli):
    _, _, src = unet1d
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "unet.safetensors").write_bytes(src.read_bytes())
    ref = _write_inputs(tmp_path, "python")
    args = ["--source-model", "diffusers:UNet1DModel", "--source-args", json.dumps(UNET1D_ARGS), "--json"]
    without = cli("batch", tmp_path / "in", tmp_path / "out0", *args)
    (row,) = json.loads(without.stdout)["files"]  # no input the model takes: converted, but not checked whole
    assert row["end_to_end_error"] is None and "example_inputs" in row["note"], row
    result = cli("batch", tmp_path / "in", tmp_path / "out", *args, "--example-inputs", ref)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["files"]
    assert row["status"] == "converted" and row["end_to_end_error"] <= 1e-10, row
