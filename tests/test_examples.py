"""examples: example inputs from files, Python references and shapes, and running a model on them."""

import pickle
from argparse import Namespace

import pytest
import torch
from torch import nn

from deconv2shuffle.errors import SpecError
from deconv2shuffle.examples import (
    ExampleInputs,
    as_example_inputs,
    load_example_file,
    load_example_inputs,
    random_inputs,
    save_example_inputs,
)


class TimestepModel(nn.Module):
    """Shaped like a diffusion UNet: forward(sample, timestep, *, cond=None)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, sample, timestep, cond=None):
        y = self.conv(sample) + timestep.to(sample.dtype).view(-1, 1, 1)
        return y if cond is None else y + cond["scale"]


def _inputs():
    return torch.randn(1, 2, 8), torch.tensor([7]), {"scale": torch.full((1, 2, 1), 0.5)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_inputs_load_back_as_args_and_nested_kwargs(tmp_path, suffix):
    sample, timestep, cond = _inputs()
    path = save_example_inputs(tmp_path / f"in{suffix}", sample, timestep, cond=cond)
    loaded = load_example_inputs(path)
    assert len(loaded.args) == 2 and set(loaded.kwargs) == {"cond"}
    torch.testing.assert_close(loaded.args[0], sample)
    assert torch.equal(loaded.args[1], timestep) and loaded.args[1].dtype == torch.int64
    torch.testing.assert_close(loaded.kwargs["cond"]["scale"], cond["scale"])
    assert loaded.source == str(path)


def test_safetensors_keys_follow_the_documented_convention(tmp_path):
    from safetensors.torch import load_file

    sample, timestep, cond = _inputs()
    path = save_example_inputs(tmp_path / "in.safetensors", sample, timestep, cond=cond)
    assert set(load_file(path)) == {"args.0", "args.1", "kwargs.cond.scale"}


@pytest.mark.parametrize(
    ("obj", "n_args", "kwargs"),
    [
        (torch.ones(2), 1, set()),
        ([torch.ones(2), torch.ones(3)], 2, set()),
        ({"args": [torch.ones(2)], "kwargs": {"timestep": torch.tensor(3)}}, 1, {"timestep"}),
        ({"sample": torch.ones(2), "timestep": torch.tensor(3)}, 0, {"sample", "timestep"}),
        ({"args.0": torch.ones(2), "kwargs.t": torch.tensor(1)}, 1, {"t"}),
    ],
)
def test_torch_files_may_hold_the_structure_itself(tmp_path, obj, n_args, kwargs):
    torch.save(obj, tmp_path / "in.pt")
    loaded = load_example_file(tmp_path / "in.pt")
    assert len(loaded.args) == n_args and set(loaded.kwargs) == kwargs


def test_a_pickle_with_code_is_refused_in_one_line_naming_the_file(tmp_path):
    path = tmp_path / "in.pt"
    torch.save({"args": [torch.ones(1)], "ns": Namespace(lr=1)}, path)
    with pytest.raises(
        SpecError, match=r"in\.pt: refused to load example inputs: .*argparse.Namespace.*trust_pickle=True"
    ):
        load_example_file(path)
    with pytest.raises(SpecError, match=r"'args' and 'kwargs' take no other entries beside them; found \['ns'\]"):
        load_example_file(path, trust_pickle=True)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"args.1": torch.ones(1)}, r"args\.0 \.\. args\.0 without gaps; args\.0 is missing"),
        ({"x": torch.ones(1)}, r"key 'x' is neither args\.N nor kwargs\.NAME"),
        ({"kwargs.c": torch.ones(1), "kwargs.c.d": torch.ones(1)}, r"kwargs\.c\.d' nests under 'c'"),
    ],
)
def test_bad_safetensors_keys_are_named(tmp_path, keys, message):
    from safetensors.torch import save_file

    save_file(keys, tmp_path / "in.safetensors")
    with pytest.raises(SpecError, match=message):
        load_example_file(tmp_path / "in.safetensors")


def test_missing_and_damaged_files_are_one_line_errors(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.pt: example inputs file not found"):
        load_example_inputs(tmp_path / "nope.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(SpecError, match=r"bad\.safetensors: cannot read example inputs"):
        load_example_file(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(pickle.dumps(1)[:3])
    with pytest.raises(SpecError, match=r"bad\.pt: cannot read example inputs"):
        load_example_file(tmp_path / "bad.pt")


def test_saving_refuses_non_tensors_and_unknown_suffixes(tmp_path):
    with pytest.raises(SpecError, match="kwargs.t is a int"):
        save_example_inputs(tmp_path / "in.pt", t=3)
    with pytest.raises(SpecError, match=r"written as \.safetensors or \.pt"):
        save_example_inputs(tmp_path / "in.txt", torch.ones(1))


MAKE_INPUTS = """
import torch

def make_inputs():
    return (torch.ones(1, 2, 8), torch.tensor([10])), {}

def kwargs_only():
    return {"sample": torch.ones(1, 2, 8), "timestep": torch.tensor([10])}

def broken():
    raise RuntimeError("no data here")

def wrong():
    return 42
"""


def test_a_python_reference_returns_args_and_kwargs(tmp_path, monkeypatch):
    (tmp_path / "inputs.py").write_text(MAKE_INPUTS)
    got = load_example_inputs(f"{tmp_path / 'inputs.py'}:make_inputs")
    assert [tuple(a.shape) for a in got.args] == [(1, 2, 8), (1,)] and got.kwargs == {}
    monkeypatch.syspath_prepend(str(tmp_path))
    got = load_example_inputs("inputs:kwargs_only")
    assert got.args == () and set(got.kwargs) == {"sample", "timestep"}
    assert got.source == "inputs:kwargs_only"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("broken", r"inputs\.py:broken': calling it failed: RuntimeError: no data here"),
        ("wrong", r"inputs\.py:wrong: got a int; return a tensor, a tuple"),
        ("absent", r"has no function 'absent'"),
    ],
)
def test_python_reference_errors_name_the_reference(tmp_path, name, message):
    (tmp_path / "inputs.py").write_text(MAKE_INPUTS)
    with pytest.raises(SpecError, match=message):
        load_example_inputs(f"{tmp_path / 'inputs.py'}:{name}")


def test_reference_to_a_missing_file_or_module_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"file .*nowhere\.py not found"):
        load_example_inputs(f"{tmp_path / 'nowhere.py'}:make_inputs")
    with pytest.raises(SpecError, match=r"importing no_such_module_here failed: ModuleNotFoundError"):
        load_example_inputs("no_such_module_here:make_inputs")


@pytest.mark.parametrize(
    ("value", "n_args", "n_kwargs"),
    [
        (torch.ones(1), 1, 0),
        ((torch.ones(1), torch.ones(2)), 2, 0),
        ({"a": torch.ones(1)}, 0, 1),
        (((torch.ones(1),), {"t": torch.ones(1)}), 1, 1),
        ([torch.ones(1), {"not": "kwargs"}], 2, 0),  # a list is always positional
    ],
)
def test_returned_values_are_read_as_documented(value, n_args, n_kwargs):
    got = as_example_inputs(value)
    assert (len(got.args), len(got.kwargs)) == (n_args, n_kwargs)


def test_random_inputs_are_seeded_and_shaped():
    a, b = random_inputs((1, 2, 8), (3,), seed=5), random_inputs((1, 2, 8), (3,), seed=5)
    assert [tuple(t.shape) for t in a.args] == [(1, 2, 8), (3,)] and a.args[0].dtype == torch.float64
    assert all(torch.equal(x, y) for x, y in zip(a.args, b.args))
    assert not torch.equal(random_inputs((4,), seed=6).args[0], random_inputs((4,), seed=5).args[0])
    with pytest.raises(SpecError, match=r"shape \(1, 0\) needs positive sizes"):
        random_inputs((1, 0))


def test_run_casts_floats_to_the_model_dtype_and_keeps_integer_inputs():
    model = TimestepModel().double()
    sample, timestep, cond = _inputs()
    inputs = ExampleInputs((sample, timestep), {"cond": cond})
    out = inputs.run(model)
    assert out.dtype == torch.float64
    with torch.no_grad():
        want = model(sample.double(), timestep, cond={"scale": cond["scale"].double()})
    torch.testing.assert_close(out, want)
    assert "(1, 2, 8) float32, (1,) int64, cond={scale=(1, 2, 1) float32}" == inputs.describe()


class Sampler(nn.Module):
    """Draws noise in forward, like a VAE sampling its latent."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x + self.scale * torch.randn_like(x)


def test_run_seeds_random_draws_so_two_runs_agree_and_restores_the_global_generator():
    inputs = random_inputs((2, 3))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = inputs.run(Sampler()), inputs.run(Sampler())
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(inputs.run(Sampler(), seed=1), a)
