"""Messages a newcomer meets: what happened, where, and what to do; the key layout; non-finite weights."""

import importlib
import json
import os
import sys

import pytest
import torch
from conftest import small_state

from deconv2shuffle.errors import SpecError

EXTRA = """

class Wide(Old):
    def __init__(self):
        super().__init__()
        self.extra = nn.ModuleList(nn.Linear(2, 2) for _ in range(30))
"""


def test_load_mismatch_lists_whole_keys_and_counts_the_rest(tmp_path, cli, models_py, old_model):
    models_py.write_text(models_py.read_text() + EXTRA)
    torch.save(old_model.Old().state_dict(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", "--dry-run", "--source-model", f"{models_py}:Wide", "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith("the old checkpoint does not load into the source model: 60 key(s) missing: ")
    assert error.endswith(" and 55 more"), error
    listed = error.split("missing: ")[1].removesuffix(" and 55 more").split(", ")
    assert listed == ["extra.0.weight", "extra.0.bias", "extra.1.weight", "extra.1.bias", "extra.2.weight"]


def test_input_shape_advice_only_when_it_helps(tmp_path, cli, models_py, old_model):
    models_py.write_text(
        models_py.read_text() + "\n\nclass NoShuffle(New):\n    def __init__(self):\n        super().__init__()\n"
        "        self.up = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1))\n"
        "\n\nclass PlainConv(New):\n    def __init__(self):\n        super().__init__()\n"
        "        self.up = nn.Conv2d(8, 64, 3, padding=1)\n"
    )
    torch.save(old_model.Old().state_dict(), tmp_path / "old.pth")
    base = ["migrate", tmp_path / "old.pth", "--dry-run", "--source-model", f"{models_py}:Old"]
    for extra in ([], ["--input-shape", "1,3,8,8"]):
        for target in ("NoShuffle", "PlainConv"):
            result = cli(*base, "--target-model", f"{models_py}:{target}", *extra)
            assert result.exit_code == 2, result.output
            assert "but no PixelShuffle follows" in result.output, result.output
            assert ("'up.0'" if target == "NoShuffle" else "'up'") in result.output, result.output
            assert "--input-shape" not in result.output
    wrong = cli(*base, "--input-shape", "1,5,8,8")
    assert wrong.exit_code == 2 and "the source model cannot run on --input-shape 1,5,8,8" in wrong.output
    assert "pass --input-shape" not in wrong.output


def test_a_folder_as_new_is_refused_without_force_advice(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    (tmp_path / "out").mkdir()
    for force in ([], ["--force"]):
        result = cli("migrate", tmp_path / "old.pth", tmp_path / "out", "--spec", spec_file, *force)
        assert result.exit_code == 2, result.output
        assert "is a folder" in result.output and f"{tmp_path / 'out' / 'old.pth'}" in result.output
        assert "add --force" not in result.output and "Is a directory" not in result.output
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["new.txt", "new", "new.json"])
def test_outputs_without_a_checkpoint_extension_are_refused(tmp_path, cli, spec_file, name):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / name, "--spec", spec_file)
    assert result.exit_code == 2, result.output
    assert ".pth/.pt/.ckpt/.bin" in result.output and ".safetensors.index.json" in result.output
    assert not (tmp_path / name).exists()


def test_a_module_reference_to_a_file_here_hints_at_the_file_form(tmp_path, monkeypatch, models_py):
    from deconv2shuffle import load_sources

    (tmp_path / "mymodel.py").write_text(models_py.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(SpecError, match=r"No module named 'mymodel'; to load the file mymodel\.py, write "):
        load_sources(None, "mymodel:Old")
    from deconv2shuffle.cli._errors import to_flags

    with pytest.raises(SpecError) as info:
        load_sources(None, "mymodel:Old")
    assert to_flags(str(info.value)).endswith("write --source-model mymodel.py:Old")


def test_trusted_pickle_of_a_missing_module_says_so(tmp_path, cli):
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    (hidden / "gone_module_xyz.py").write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    sys.path.insert(0, str(hidden))
    try:
        module = importlib.import_module("gone_module_xyz")
        torch.save({"model": module.Net()}, tmp_path / "m.pth")
    finally:
        sys.path.remove(str(hidden))
        del sys.modules["gone_module_xyz"]
        importlib.invalidate_caches()
    result = cli("inspect", tmp_path / "m.pth", "--trust-pickle")
    assert result.exit_code == 2, result.output
    assert "needs module 'gone_module_xyz'" in result.output and "corrupt" not in result.output


def test_a_failed_file_is_named_once(tmp_path, cli, models_py):
    src = tmp_path / "bin"
    src.mkdir()
    (src / "x.pth").write_bytes(b"garbage")
    result = cli("batch", src, tmp_path / "out", "--source-model", f"{models_py}:Old")
    assert result.exit_code == 1
    (line,) = [x for x in result.stderr.splitlines() if "FAILED" in x]
    assert line.count("x.pth") == 1 and "not a checkpoint" in line, line
    (row,) = [x for x in result.stdout.splitlines() if "x.pth" in x]
    assert row.count("x.pth") == 1, row


def test_the_report_says_which_model_the_keys_fit(tmp_path, cli, models_py, old_model):
    torch.save(old_model.Old().state_dict(), tmp_path / "old.pth")
    run = ["migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--source-model", f"{models_py}:Old", "--force"]
    alone = cli(*run, "--json")
    assert json.loads(alone.stdout)["loads_into"] == "convert_model(Old())"
    text = cli(*run)
    assert (
        "loads into convert_model(Old()); to fit your own Conv + PixelShuffle class, give --target-model" in text.output
    )
    mine = cli(*run, "--target-model", f"{models_py}:New", "--json", "--report", tmp_path / "r.json")
    assert json.loads(mine.stdout)["loads_into"] == f"your target model {models_py}:New"
    assert json.loads((tmp_path / "r.json").read_text())["loads_into"] == f"your target model {models_py}:New"
    assert f"loads into your target model {models_py}:New" in cli(*run, "--target-model", f"{models_py}:New").output


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_weights_verify_as_copies(dtype):
    from deconv2shuffle import LayerSpec, convert_state_dict

    state = {k: v.to(dtype) for k, v in small_state().items()}
    w, b = state["up.weight"].clone(), state["up.bias"].clone()
    w[0, 0, 0, 0], w[1, 2, 3, 3], w[2, 1, 1, 2], b[3] = float("nan"), float("inf"), -float("inf"), float("nan")
    state["up.weight"], state["up.bias"] = w, b
    conv = convert_state_dict(state, [LayerSpec("up", 2, padding=1)])
    (layer,) = conv.report.layers
    assert layer.max_rel_error < 1e-12
    new_w, new_b = conv.state_dict["up.conv.weight"], conv.state_dict["up.conv.bias"]
    assert int(torch.isnan(new_w).sum()) == 1 and int(torch.isinf(new_w).sum()) == 2
    assert int(torch.isnan(new_b).sum()) == 4  # one bias per phase


def test_a_misplaced_non_finite_value_fails_verification():
    from deconv2shuffle import LayerSpec, convert_state_dict, verify_layer

    state = small_state()
    state["up.weight"] = state["up.weight"].clone()
    state["up.weight"][0, 0, 1, 1] = float("nan")
    conv = convert_state_dict(state, [LayerSpec("up", 2, padding=1)])
    plan_weight = conv.state_dict["up.conv.weight"]
    moved = torch.where(torch.isnan(plan_weight), torch.zeros(()), plan_weight)
    moved[5, 3, 0, 0] = float("nan")
    from deconv2shuffle.core.planning import plan_layer

    plan = plan_layer(LayerSpec("up", 2, padding=1), state["up.weight"])
    assert (
        verify_layer(state["up.weight"], state["up.bias"], plan_weight, conv.state_dict["up.conv.bias"], plan)[1]
        < 1e-12
    )
    assert verify_layer(state["up.weight"], state["up.bias"], moved, conv.state_dict["up.conv.bias"], plan)[1] == float(
        "inf"
    )


def test_non_finite_weights_pass_the_end_to_end_check(tmp_path, cli, models_py, old_model):
    model = old_model.Old()
    state = model.state_dict()
    state["up.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "old.pth")
    result = cli(
        "migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--source-model", f"{models_py}:Old", "--target-model",
        f"{models_py}:New", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["end_to_end"]["max_rel_error"] < 1e-12


def test_explain_refuses_text_that_is_not_integers(cli):
    result = cli("explain", "-k", "4", "-s", "2", "-p", "x")
    assert result.exit_code == 2 and "'x'" in result.output and "0 values" not in result.output


def test_api_words_with_an_open_value_become_flags():
    from deconv2shuffle.cli._errors import to_flags

    assert to_flags("give kernel= and stride= (and padding=...)") == "give --kernel and --stride (and --padding ...)"
