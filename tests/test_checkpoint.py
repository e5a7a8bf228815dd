import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import listing, sha, small_state
from safetensors import safe_open
from safetensors.torch import save_file

from deconv2shuffle.checkpoint import (
    SAFETENSORS,
    SHARDED,
    TORCH_LEGACY,
    TORCH_ZIP,
    load_checkpoint,
    save_checkpoint,
)
from deconv2shuffle.errors import CheckpointError, OutputExistsError, UnsafeCheckpointError


def test_formats_are_sniffed_from_bytes_not_extension(tmp_path):
    state = small_state()
    torch.save(state, tmp_path / "a.safetensors")  # a torch file with the wrong extension
    torch.save(state, tmp_path / "b.bin", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "a.safetensors").format == TORCH_ZIP
    assert load_checkpoint(tmp_path / "b.bin").format == TORCH_LEGACY
    ck = load_checkpoint(tmp_path / "c.pth")
    assert ck.format == SAFETENSORS
    for key, value in state.items():
        assert torch.equal(ck.state_dict[key], value)


def test_containers_pick_the_state_dict_and_say_which(tmp_path):
    state = small_state()
    ema = {k: v + 1 for k, v in state.items()}
    torch.save(
        {"state_dict": state, "state_dict_ema": ema, "epoch": 3, "hyper_parameters": {"lr": 1e-3}}, tmp_path / "l.ckpt"
    )
    ck = load_checkpoint(tmp_path / "l.ckpt")
    assert ck.state_key == "state_dict"
    assert set(ck.candidates) == {"state_dict", "state_dict_ema"}
    ck = load_checkpoint(tmp_path / "l.ckpt", state_dict_key="state_dict_ema")
    assert torch.equal(ck.state_dict["up.weight"], ema["up.weight"])
    torch.save({"model": state, "step": 10}, tmp_path / "m.pth")
    assert load_checkpoint(tmp_path / "m.pth").state_key == "model"
    torch.save({"model_ema": state, "opt": 1}, tmp_path / "e.pth")
    assert load_checkpoint(tmp_path / "e.pth").state_key == "model_ema"
    with pytest.raises(CheckpointError, match="no entry 'nope'"):
        load_checkpoint(tmp_path / "l.ckpt", state_dict_key="nope")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_runs_nothing_and_names_the_global(tmp_path, cli):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"up.weight": torch.zeros(2, 2, 4, 4), "x": Evil(marker)}, path)
    before = sha(path)
    with pytest.raises(
        UnsafeCheckpointError, match=r"'posix\.system'.*allow_globals=\['posix\.system'\].*trust_pickle=True"
    ):
        load_checkpoint(path)
    result = cli("migrate", path, tmp_path / "out.pth", "--spec", _spec(tmp_path))
    assert result.exit_code == 2, result.output
    # the library names the API parameter; the command line may spell it as its flag
    assert "trust_pickle=True" in result.output or "--trust-pickle" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()
    assert sha(path) == before


def _spec(tmp_path: Path) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text('version = 1\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n')
    return p


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    state = small_state()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    st = tmp_path / "good.safetensors"
    save_file(state, st)
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, data: bytes, match: str) -> None:
        p = tmp_path / name
        p.write_bytes(data)
        cases[name] = (p, match)

    write("truncated.pth", good.read_bytes()[: good.stat().st_size // 2], "truncated or corrupt")
    write("empty.pth", b"", "empty")
    write("image.pth", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG image")
    write("header.safetensors", struct.pack("<Q", 10**9) + b'{"a":1}', "header length .* past the end")
    write("cut.safetensors", st.read_bytes()[: st.stat().st_size - 100], "truncated or corrupt")
    write("notjson.safetensors", struct.pack("<Q", 8) + b"{abc    ", "invalid JSON")
    (tmp_path / "shard.safetensors").write_bytes(st.read_bytes())
    write(
        "missing.safetensors.index.json",
        json.dumps({"weight_map": {"up.weight": "nowhere.safetensors"}}).encode(),
        "does not exist",
    )
    write(
        "escape.safetensors.index.json",
        json.dumps({"weight_map": {"up.weight": "../shard.safetensors"}}).encode(),
        "outside the index's folder",
    )
    torch.save({"state_dict": {"up.weight": "not a tensor", "up.bias": torch.zeros(2)}}, tmp_path / "strings.pth")
    cases["strings.pth"] = (tmp_path / "strings.pth", r"\['up.weight'\] is a str, expected a tensor")
    torch.save({"epoch": 3, "note": "hi"}, tmp_path / "nostate.pth")
    cases["nostate.pth"] = (tmp_path / "nostate.pth", "found no state_dict")
    return cases


BAD = [
    "truncated.pth",
    "empty.pth",
    "image.pth",
    "header.safetensors",
    "cut.safetensors",
    "notjson.safetensors",
    "missing.safetensors.index.json",
    "escape.safetensors.index.json",
    "strings.pth",
    "nostate.pth",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gives_one_line_and_no_output(tmp_path, cli, name):
    path, match = _bad_inputs(tmp_path)[name]
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    before = sha(path)
    files_before = listing(tmp_path)
    result = cli("migrate", path, tmp_path / "out.pth", "--spec", _spec(tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and path.name in lines[0], result.output
    assert sha(path) == before
    assert listing(tmp_path) == sorted(files_before + ["spec.toml"]) or listing(tmp_path) == files_before


def test_output_equal_to_input_and_existing_output_are_refused(tmp_path, cli):
    path = tmp_path / "m.pth"
    torch.save(small_state(), path)
    before = sha(path)
    spec = _spec(tmp_path)
    result = cli("migrate", path, path, "--spec", spec)
    assert result.exit_code == 2 and "is the input file" in result.output
    assert sha(path) == before
    existing = tmp_path / "exists.pth"
    existing.write_bytes(b"keep me")
    result = cli("migrate", path, existing, "--spec", spec)
    assert result.exit_code == 2 and ("force=True" in result.output or "--force" in result.output), result.output
    assert existing.read_bytes() == b"keep me"
    result = cli("migrate", path, existing, "--spec", spec, "--force")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(existing).state_dict["up.conv.weight"].shape == (64, 8, 2, 2)  # the minimal form
    # the input itself, only with --force, and atomically
    result = cli("migrate", path, path, "--spec", spec, "--force")
    assert result.exit_code == 0, result.output
    assert "up.conv.weight" in load_checkpoint(path).state_dict
    assert [p for p in listing(tmp_path) if "partial" in p] == []


def test_unwritable_destination_is_one_line(tmp_path, cli):
    path = tmp_path / "m.pth"
    torch.save(small_state(), path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = cli("migrate", path, blocker / "out.pth", "--spec", _spec(tmp_path))
    assert result.exit_code == 2
    assert "does not exist" in result.output and len(result.output.strip().splitlines()) == 1


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    import deconv2shuffle.checkpoint as ck_mod

    path = tmp_path / "m.pth"
    torch.save(small_state(), path)
    ck = load_checkpoint(path)
    real_save = torch.save

    def full(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck_mod.torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path / "out.pth", ck.state_dict, like=ck)
    monkeypatch.setattr(ck_mod.torch, "save", real_save)
    assert listing(tmp_path) == ["m.pth"]


def test_lightning_container_is_kept_and_optimizer_remapped(tmp_path, cli, old_model):
    model = old_model.Old()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)
    model(x).square().mean().backward()
    opt.step()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt = {
        "epoch": 4,
        "global_step": 120,
        "hyper_parameters": {"ch": 8, "name": "unet"},
        "state_dict": state,
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"last_epoch": 4}],
    }
    src = tmp_path / "gen.ckpt"
    torch.save(ckpt, src)
    result = cli("migrate", src, tmp_path / "new.ckpt", "--spec", _spec(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "rearranged" in report["optimizer"]
    new = torch.load(tmp_path / "new.ckpt", weights_only=True)
    assert new["epoch"] == 4 and new["global_step"] == 120 and new["hyper_parameters"] == {"ch": 8, "name": "unet"}
    assert new["lr_schedulers"] == [{"last_epoch": 4}]
    assert "model.up.conv.weight" in new["state_dict"]
    # the moments resume in the converted model
    from deconv2shuffle import convert_model

    conv = convert_model(model)  # the form migrate writes by default
    opt2 = torch.optim.Adam(conv.parameters(), lr=1e-3)
    opt2.load_state_dict(new["optimizer_states"][0])
    conv.load_state_dict({k[len("model.") :]: v for k, v in new["state_dict"].items()})
    moments = opt2.state[conv.up.conv.weight]["exp_avg"]
    assert moments.shape == conv.up.conv.weight.shape
    from deconv2shuffle import smallest, transposed_to_subpixel
    from deconv2shuffle.geometry import TransposedConv

    plan = smallest(TransposedConv.make((4, 4), 2, 1), "minimal")
    expect = transposed_to_subpixel(opt.state[model.up.weight]["exp_avg"], None, plan).weight
    assert torch.equal(moments, expect)
    model(x).sum()  # the old model still works
    conv(x).square().mean().backward()
    opt2.step()  # a step with the loaded state runs


def test_optimizer_that_does_not_line_up_is_dropped_and_reported(tmp_path, cli):
    state = small_state()
    bogus = {"state": {0: {"exp_avg": torch.zeros(5)}}, "param_groups": [{"params": [0], "lr": 1}]}
    torch.save({"state_dict": state, "optimizer": bogus}, tmp_path / "o.pth")
    result = cli("migrate", tmp_path / "o.pth", tmp_path / "n.pth", "--spec", _spec(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert "dropped" in json.loads(result.stdout)["optimizer"]
    assert torch.load(tmp_path / "n.pth", weights_only=True)["optimizer"] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, getattr(torch, "float8_e4m3fn", None)])
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_dtypes_and_other_tensors_survive_bit_for_bit(tmp_path, cli, dtype, ext):
    if dtype is None:
        pytest.skip("no float8 in this torch")
    state = {k: v.to(dtype) for k, v in small_state().items()}
    state["counter"] = torch.tensor(7, dtype=torch.int64)
    src = tmp_path / f"in{ext}"
    if ext == ".pth":
        torch.save(state, src)
    else:
        save_file(state, src, metadata={"author": "lab", "format": "pt"})
    out = tmp_path / f"out{ext}"
    result = cli("migrate", src, out, "--spec", _spec(tmp_path))
    assert result.exit_code == 0, result.output
    back = load_checkpoint(out).state_dict
    for key in ("head.weight", "head.bias", "tail.weight", "counter"):
        assert back[key].dtype == state[key].dtype
        assert torch.equal(back[key].reshape(-1).view(torch.uint8), state[key].reshape(-1).view(torch.uint8))
    assert back["up.conv.weight"].dtype == dtype
    if ext == ".safetensors":
        with safe_open(out, "pt") as f:
            meta = f.metadata()
        assert meta["author"] == "lab" and meta["format"] == "pt"
        assert meta["deconv2shuffle.source_sha256"] == sha(src)
        assert json.loads(meta["deconv2shuffle.converted"]) == ["up->up.conv"]


def test_tied_tensors_are_each_their_own_safetensors_entry_and_stay_tied_in_torch(tmp_path):
    from safetensors.torch import load_file

    state = small_state()
    state["tail_copy.weight"] = state["tail.weight"]  # tied
    src = tmp_path / "tied.pth"
    torch.save(state, src)
    ck = load_checkpoint(src)
    save_checkpoint(tmp_path / "tied.safetensors", ck.state_dict, like=ck)
    # the library's own loader returns every key, so a strict load works
    back = load_file(tmp_path / "tied.safetensors")
    assert set(back) == set(state)
    assert torch.equal(back["tail_copy.weight"], state["tail.weight"])
    with safe_open(tmp_path / "tied.safetensors", "pt") as f:
        assert "tail_copy.weight" in f.keys() and not any(k.startswith("deconv2shuffle.") for k in f.metadata())
    model = torch.nn.Module()
    model.head, model.up = torch.nn.Conv2d(3, 8, 3), torch.nn.ConvTranspose2d(8, 16, 4, 2, 1)
    model.tail = torch.nn.Conv2d(16, 3, 3)
    model.tail_copy = torch.nn.Module()
    model.tail_copy.weight = model.tail.weight  # tied in the model too
    model.load_state_dict(back, strict=True)
    assert load_checkpoint(tmp_path / "tied.safetensors").state_dict.keys() == state.keys()
    save_checkpoint(tmp_path / "tied2.pth", ck.state_dict, like=ck)
    back = torch.load(tmp_path / "tied2.pth", weights_only=True)
    assert back["tail_copy.weight"].data_ptr() == back["tail.weight"].data_ptr()


def test_sharded_in_gives_sharded_out(tmp_path, cli):
    state = small_state()
    shard_a = {k: v for k, v in state.items() if k.startswith(("head", "up"))}
    shard_b = {k: v for k, v in state.items() if k.startswith("tail")}
    save_file(shard_a, tmp_path / "model-00001-of-00002.safetensors", metadata={"format": "pt", "shard": "one"})
    save_file(shard_b, tmp_path / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {
            **dict.fromkeys(shard_a, "model-00001-of-00002.safetensors"),
            **dict.fromkeys(shard_b, "model-00002-of-00002.safetensors"),
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_checkpoint(tmp_path / "model.safetensors.index.json").format == SHARDED
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli(
        "migrate",
        tmp_path / "model.safetensors.index.json",
        out_dir / "model.safetensors.index.json",
        "--spec",
        _spec(tmp_path),
    )
    assert result.exit_code == 0, result.output
    new_index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    assert new_index["weight_map"]["up.conv.weight"] == "model-00001-of-00002.safetensors"
    assert new_index["weight_map"]["tail.weight"] == "model-00002-of-00002.safetensors"
    back = load_checkpoint(out_dir / "model.safetensors.index.json").state_dict
    assert torch.equal(back["tail.weight"], state["tail.weight"])
    assert back["up.conv.weight"].shape == (64, 8, 2, 2)
    with safe_open(out_dir / "model-00001-of-00002.safetensors", "pt") as f:
        assert f.metadata()["shard"] == "one" and "deconv2shuffle.source_sha256" in f.metadata()


def test_trust_pickle_is_explicit(tmp_path):
    import argparse

    path = tmp_path / "odd.pth"
    torch.save({"state_dict": small_state(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"'argparse\.Namespace'.*trust_pickle=True"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust_pickle=True).state_key == "state_dict"


def test_outputs_refuse_without_force_at_library_level(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(small_state(), path)
    ck = load_checkpoint(path)
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, ck.state_dict, like=ck)


def _formats(tmp_path: Path) -> dict[str, bytes]:
    state = small_state()
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "z.pth")
    torch.save(state, tmp_path / "l.pth", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "s.safetensors")
    return {name: (tmp_path / name).read_bytes() for name in ("z.pth", "l.pth", "s.safetensors")}


@pytest.mark.parametrize("name", ["z.pth", "l.pth", "s.safetensors"])
def test_every_truncation_and_bit_flip_is_a_clean_error(tmp_path, name):
    """A damaged file is refused in one line naming it, or it loads exactly what the format's own reader
    (safetensors.torch.load_file / torch.load with weights_only) loads from the same bytes; a cut file never
    loads."""
    import random

    from safetensors.torch import load_file

    data = _formats(tmp_path)[name]
    rng = random.Random(0)
    cuts = {1, 7, 8, 9, 15, 16, 100, len(data) // 2, len(data) - 1}
    cuts = sorted(cuts | {rng.randrange(1, len(data)) for _ in range(40)})
    damaged = [(f"cut at {n}", data[:n]) for n in cuts]
    for i in range(40):
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        damaged.append((f"flip {i}", bytes(b)))
    path = tmp_path / f"damaged_{name}"
    loaded = 0
    for what, blob in damaged:
        path.write_bytes(blob)
        try:
            ours = load_checkpoint(path).state_dict
        except CheckpointError as e:
            text = str(e)
            assert text.startswith(f"{path}: ") and "\n" not in text and len(text) > len(str(path)) + 10, (what, text)
            continue
        assert not what.startswith("cut"), f"{what}: a truncated file loaded"
        loaded += 1
        if name.endswith(".safetensors"):
            reference = load_file(path)
        else:
            reference = torch.load(path, weights_only=True)
            reference = reference.get("state_dict", reference)
        assert ours.keys() == reference.keys(), what
        for key, t in reference.items():
            assert ours[key].dtype == t.dtype and ours[key].shape == t.shape, (what, key)
            assert torch.equal(ours[key].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), (what, key)
    assert loaded < len(damaged)


def test_full_disk_while_writing_safetensors_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import deconv2shuffle.checkpoint as ck_mod

    save_file(small_state(), tmp_path / "m.safetensors")
    ck = load_checkpoint(tmp_path / "m.safetensors")
    calls = {"n": 0}
    real = ck_mod.Sink.write

    def failing(self, data):
        calls["n"] += 1
        if calls["n"] == 4:  # header length, header, one tensor, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(ck_mod.Sink, "write", failing)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path / "out.safetensors", ck.state_dict, like=ck)
    assert listing(tmp_path) == ["m.safetensors"]


def test_flat_dict_with_plain_values_keeps_them(tmp_path, cli):
    state = {**small_state(), "step": 1200, "arch": "unet-small"}
    torch.save(state, tmp_path / "flat.pth")
    result = cli("migrate", tmp_path / "flat.pth", tmp_path / "out.pth", "--spec", _spec(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert any("step" in n and n.startswith("kept") for n in json.loads(result.stdout)["notes"])
    back = torch.load(tmp_path / "out.pth", weights_only=True)
    assert back["step"] == 1200 and back["arch"] == "unet-small" and "up.conv.weight" in back
    result = cli("migrate", tmp_path / "flat.pth", tmp_path / "out.safetensors", "--spec", _spec(tmp_path), "--json")
    assert any(n.startswith("could not write") for n in json.loads(result.stdout)["notes"])


def test_optimizer_follows_a_removed_prefix_into_the_target_model(tmp_path, cli, old_model, models_py):
    model = old_model.Old()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    opt.step()
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
    }
    torch.save(ckpt, tmp_path / "l.ckpt")
    result = cli(
        "migrate",
        tmp_path / "l.ckpt",
        tmp_path / "n.ckpt",
        "--source-model",
        f"{models_py}:Old",
        "--target-model",
        f"{models_py}:New",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert "rearranged" in json.loads(result.stdout)["optimizer"]
    new_ckpt = torch.load(tmp_path / "n.ckpt", weights_only=True)
    new = old_model.New()
    new.load_state_dict(new_ckpt["state_dict"], strict=True)
    opt2 = torch.optim.Adam(new.parameters())
    opt2.load_state_dict(new_ckpt["optimizer_states"][0])
    assert torch.equal(opt2.state[new.head.weight]["exp_avg"], opt.state[model.head.weight]["exp_avg"])
    assert opt2.state[new.up[0].weight]["exp_avg"].shape == new.up[0].weight.shape
