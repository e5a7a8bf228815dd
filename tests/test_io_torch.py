"""Torch pickles: every unsafe global named, an allow-list between safe and trusted, trust kept on read-back."""

import argparse
import pathlib

import pytest
import torch
from conftest import listing, sha, small_state

from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint
from deconv2shuffle.errors import CheckpointError, UnsafeCheckpointError


def _odd(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save(
        {
            "state_dict": small_state(),
            "args": argparse.Namespace(lr=0.1),
            "root": pathlib.PurePosixPath("/data"),
            "epoch": 3,
        },
        path,
    )
    return path


def test_the_refusal_names_every_unsafe_global(tmp_path):
    path = _odd(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "'argparse.Namespace'" in text and "'pathlib.PurePosixPath'" in text, text
    assert "allow_globals=[" in text and "trust_pickle=True" in text and "\n" not in text
    assert "--" not in text  # API words, not command-line flags


def test_allow_globals_admits_exactly_the_named_classes(tmp_path):
    path = _odd(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r"'pathlib\.PurePosixPath'") as info:
        load_checkpoint(path, allow_globals=["argparse.Namespace"])
    assert "'argparse.Namespace'" not in str(info.value).split("allow it")[0]
    ck = load_checkpoint(path, allow_globals=["argparse.Namespace", "pathlib.PurePosixPath"])
    assert ck.container["args"].lr == 0.1 and ck.container["root"] == pathlib.PurePosixPath("/data")
    assert ck.state_key == "state_dict"


def test_a_safe_global_a_state_dict_does_not_need_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "size.pth"
    torch.save({"state_dict": small_state(), "shape": torch.Size([3, 4])}, path)
    with pytest.raises(CheckpointError, match=r"'torch\.Size'.*allow_globals=\['torch\.Size'\]") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)  # it cannot run code; it is just not needed
    assert load_checkpoint(path, allow_globals=["torch.Size"]).container["shape"] == torch.Size([3, 4])


@pytest.mark.parametrize("name", ["nowhere_module.Thing", "argparse.NoSuchClass", "Namespace", ""])
def test_an_allowed_name_that_cannot_be_imported_is_one_clear_error(tmp_path, name):
    path = _odd(tmp_path)
    with pytest.raises(CheckpointError, match=r"^allow_globals: .*" + repr(name).replace(".", r"\.")) as info:
        load_checkpoint(path, allow_globals=[name])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "how", [{"trust_pickle": True}, {"allow_globals": ["argparse.Namespace", "pathlib.PurePosixPath"]}]
)
def test_writing_a_torch_file_reads_it_back_with_the_inputs_trust(tmp_path, how):
    path = _odd(tmp_path)
    ck = load_checkpoint(path, **how)
    out = tmp_path / "out.ckpt"
    assert save_checkpoint(out, ck.state_dict, like=ck) == [out]
    back = torch.load(out, weights_only=False)
    assert back["args"].lr == 0.1 and back["epoch"] == 3
    # and an explicit, stricter read-back refuses, leaving nothing behind
    with pytest.raises(CheckpointError, match="read-back"):
        save_checkpoint(tmp_path / "strict.ckpt", ck.state_dict, like=ck, trust_pickle=False, allow_globals=[])
    assert "strict.ckpt" not in listing(tmp_path)


def test_trusted_migrate_of_a_container_with_a_namespace_exits_0(tmp_path, cli):
    path = _odd(tmp_path)
    spec = tmp_path / "spec.toml"
    spec.write_text('version = 1\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n')
    before = sha(path)
    result = cli("migrate", path, tmp_path / "new.ckpt", "--spec", spec, "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert "up.conv.weight" in torch.load(tmp_path / "new.ckpt", weights_only=False)["state_dict"]
    assert sha(path) == before


def test_a_parameter_saved_in_a_state_dict_loads(tmp_path):
    path = tmp_path / "p.pth"
    torch.save({"w": torch.nn.Parameter(torch.arange(4.0)), "b": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.arange(4.0))


def test_containers_of_plain_values_load(tmp_path):
    path = tmp_path / "plain.ckpt"
    extras = {
        "epoch": 3,
        "lr": 1e-3,
        "c": 1 + 2j,
        "tags": {"a", "b"},
        "raw": b"\x00\xff",
        "buf": bytearray(b"xy"),
        "none": None,
        "nested": {"a": [1, (2, 3)]},
        "dtype": torch.float16,
    }
    torch.save({"state_dict": small_state(), **extras}, path)
    ck = load_checkpoint(path)
    assert {k: ck.container[k] for k in extras} == extras


def test_a_trusted_container_nested_too_deep_to_write_is_one_line(tmp_path):
    from hostile.torch_files import _deep_list

    path = tmp_path / "deep.pth"
    torch.save({"state_dict": small_state(), "deep": []}, path)
    ck = load_checkpoint(path, trust_pickle=True)
    import pickle

    ck.container["deep"] = pickle.loads(_deep_list(200_000))  # what a trusted file could hold
    with pytest.raises(CheckpointError, match=r"nests too deeply to be written\); nothing was written"):
        save_checkpoint(tmp_path / "out.pth", ck.state_dict, like=ck)
    assert listing(tmp_path) == ["deep.pth"]
