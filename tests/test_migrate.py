import json

import pytest
import torch
from conftest import listing, sha, small_state
from torch import nn

from deconv2shuffle import load_spec, parse_spec
from deconv2shuffle.errors import SpecError


def _forum_checkpoint(tmp_path, old_model):
    model = old_model.Forum()
    path = tmp_path / "old.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_forum_case_by_spec(tmp_path, cli, old_model, spec_file):
    model, path = _forum_checkpoint(tmp_path, old_model)
    result = cli("migrate", path, tmp_path / "new.pth", "--spec", spec_file, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    layer = report["layers"][0]
    assert (layer["source"], layer["target"]) == ("up", "up.conv")
    assert layer["target_kernel_size"] == [3, 3] and layer["target_padding"] == [1, 1] and layer["crop"] == [0, 0]
    assert layer["exact"] and layer["max_abs_error"] < 1e-12 and layer["macs_ratio"] == pytest.approx(2.25)
    assert report["ok"] and report["copied"] == [] and report["dropped"] == []
    new = old_model.ForumNew()
    state = torch.load(tmp_path / "new.pth", weights_only=True)
    new.conv.load_state_dict({"weight": state["up.conv.weight"], "bias": state["up.conv.bias"]})
    x = torch.randn(2, 64, 9, 7)
    with torch.no_grad():
        assert _relative(new(x), model(x)) <= 1e-5


def test_forum_case_by_model_classes(tmp_path, cli, old_model, models_py):
    model, path = _forum_checkpoint(tmp_path, old_model)
    out = tmp_path / "new.pth"
    result = cli(
        "migrate",
        path,
        out,
        "--source-model",
        f"{models_py}:Forum",
        "--target-model",
        f"{models_py}:ForumNew",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layers"][0]["target"] == "conv"
    assert report["end_to_end"]["max_rel_error"] < 1e-12
    new = old_model.ForumNew()
    new.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert _relative(new(x), model(x)) <= 1e-5


def _forum_migrate(tmp_path, cli, old_model, models_py, target_args: str):
    _, path = _forum_checkpoint(tmp_path, old_model)
    return cli(
        "migrate",
        path,
        tmp_path / "new.pth",
        "--source-model",
        f"{models_py}:Forum",
        "--target-model",
        f"{models_py}:ForumNew",
        "--target-args",
        target_args,
    )


def test_forum_mistake_one_by_one_conv_is_explained(tmp_path, cli, old_model, models_py):
    result = _forum_migrate(tmp_path, cli, old_model, models_py, '{"kernel": 1, "padding": 0}')
    assert result.exit_code == 1, result.output
    assert "exact needs a 3x3 conv with padding 1" in result.output
    assert not (tmp_path / "new.pth").exists()


def test_forum_mistake_divided_channels_is_explained(tmp_path, cli, old_model, models_py):
    result = _forum_migrate(tmp_path, cli, old_model, models_py, '{"out": 256}')
    assert result.exit_code == 2, result.output
    assert "ConvTranspose2d(64, 256) needs Conv2d(64, 1024) + PixelShuffle(2)" in result.output
    assert "divided by r^2 = 4" in result.output
    assert not (tmp_path / "new.pth").exists()


def test_approx_truncates_and_reports(tmp_path, cli, old_model, models_py):
    model, path = _forum_checkpoint(tmp_path, old_model)
    args = [
        "--source-model",
        f"{models_py}:Forum",
        "--target-model",
        f"{models_py}:ForumNew",
        "--target-args",
        '{"kernel": 1, "padding": 0}',
    ]
    result = cli("migrate", path, tmp_path / "new.pth", *args, "--approx", "--json")
    assert result.exit_code == 0, result.output
    layer = json.loads(result.stdout)["layers"][0]
    assert layer["exact"] is False and 0 < layer["dropped_mass"] < 1
    assert layer["max_rel_error"] > 1e-3
    assert torch.load(tmp_path / "new.pth", weights_only=True)["conv.weight"].shape == (1024, 64, 1, 1)


def test_rename_rules_and_drop(tmp_path, cli):
    state = small_state()
    state = {("backbone." + k if k.startswith("head") else k): v for k, v in state.items()}
    state["loss.scale"] = torch.ones(1)
    torch.save(state, tmp_path / "old.pth")
    spec = tmp_path / "s.toml"
    spec.write_text(
        'version = 1\ndrop = ["^loss\\\\."]\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n'
        '[rename]\n"^backbone\\\\.head\\\\." = "encoder.stem."\n'
    )
    result = cli(
        "migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec, "--rename", "^tail=out", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["renamed"] == {
        "backbone.head.weight": "encoder.stem.weight",
        "backbone.head.bias": "encoder.stem.bias",
        "tail.weight": "out.weight",
        "tail.bias": "out.bias",
    }
    assert report["dropped"] == ["loss.scale"]
    new = torch.load(tmp_path / "new.pth", weights_only=True)
    assert set(new) == {
        "encoder.stem.weight",
        "encoder.stem.bias",
        "up.conv.weight",
        "up.conv.bias",
        "out.weight",
        "out.bias",
    }
    assert torch.equal(new["out.weight"], state["tail.weight"])


def test_rename_collision_is_refused(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli(
        "migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file, "--rename", "^(head|tail)=x"
    )
    assert result.exit_code == 2 and "would both become" in result.output


@pytest.mark.parametrize(("args", "word"), [('{"extra": true}', "missing"), ('{"missing": true}', "does not have")])
def test_target_with_extra_or_missing_keys(tmp_path, cli, old_model, models_py, args, word):
    torch.save(old_model.Old().state_dict(), tmp_path / "old.pth")
    base = [
        "migrate",
        tmp_path / "old.pth",
        tmp_path / "new.pth",
        "--source-model",
        f"{models_py}:Old",
        "--target-model",
        f"{models_py}:New",
        "--target-args",
        args,
    ]
    result = cli(*base)
    assert result.exit_code == 2 and word in result.output and "strict=True" in result.output, result.output
    assert not (tmp_path / "new.pth").exists()
    fix = "--allow-missing" if word == "missing" else "--drop-unexpected"
    result = cli(*base, fix, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if word == "missing":
        assert report["missing"] == ["extra.weight", "extra.bias"]
    else:
        assert report["dropped"] == ["tail.weight", "tail.bias"]


def test_lightning_keys_with_model_prefix(tmp_path, cli, old_model, models_py, spec_file):
    model = old_model.Old()
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 1}, tmp_path / "l.ckpt"
    )
    result = cli("migrate", tmp_path / "l.ckpt", tmp_path / "n.ckpt", "--spec", spec_file, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["key_prefix"] == "model." and report["state_dict_key"] == "state_dict"
    assert "model.up.conv.weight" in torch.load(tmp_path / "n.ckpt", weights_only=True)["state_dict"]
    # with a target model, the prefix is removed so the result loads with strict=True
    result = cli(
        "migrate",
        tmp_path / "l.ckpt",
        tmp_path / "n.pth",
        "--source-model",
        f"{models_py}:Old",
        "--target-model",
        f"{models_py}:New",
        "--json",
    )
    assert result.exit_code == 0, result.output
    new = old_model.New()
    new.load_state_dict(torch.load(tmp_path / "n.pth", weights_only=True)["state_dict"], strict=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert _relative(new(x), model(x)) <= 1e-5


def test_compiled_and_data_parallel_prefixes(tmp_path, cli, spec_file):
    for prefix in ("module.", "_orig_mod."):
        torch.save({prefix + k: v for k, v in small_state().items()}, tmp_path / "p.pth")
        result = cli("migrate", tmp_path / "p.pth", tmp_path / "q.pth", "--spec", spec_file, "--force")
        assert result.exit_code == 0, result.output
        assert prefix + "up.conv.weight" in torch.load(tmp_path / "q.pth", weights_only=True)


def test_verification_failure_writes_nothing(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file, "--tolerance", "-1")
    assert result.exit_code == 1 and "nothing was written" in result.output
    assert listing(tmp_path) == ["old.pth", "spec.toml"]


def test_nothing_says_which_layers(tmp_path, cli):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth")
    assert result.exit_code == 2
    assert "a checkpoint alone cannot" in result.output and "--spec" in result.output


def test_markdown_report_and_dry_run(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    before = sha(tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", "--spec", spec_file, "--dry-run", "--report", tmp_path / "r.md")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    assert "| `up` | `up.conv` | k4 s2 p1 |" in text and "k3 p1" in text
    assert sha(tmp_path / "old.pth") == before
    assert sorted(listing(tmp_path)) == ["old.pth", "r.md", "spec.toml"]


def test_weight_norm_hifigan_layer(tmp_path, cli):
    from torch.nn.utils import parametrizations, weight_norm

    torch.manual_seed(0)
    ups = nn.ModuleList(
        [
            weight_norm(nn.ConvTranspose1d(16, 8, 16, 8, 4)),
            parametrizations.weight_norm(nn.ConvTranspose1d(8, 4, 4, 2, 1)),
        ]
    )
    torch.save({"generator": ups.state_dict()}, tmp_path / "g.pth")
    spec = tmp_path / "g.toml"
    spec.write_text(
        'version = 1\n[[layers]]\nsource = "0"\nstride = 8\npadding = 4\n'
        '[[layers]]\nsource = "1"\nstride = 2\npadding = 1\n'
    )
    result = cli("migrate", tmp_path / "g.pth", tmp_path / "n.pth", "--spec", spec, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [x["weight_norm_folded"] for x in report["layers"]] == [True, True]
    new = torch.load(tmp_path / "n.pth", weights_only=True)["generator"]
    assert set(new) == {"0.conv.weight", "0.conv.bias", "1.conv.weight", "1.conv.bias"}
    from deconv2shuffle import convert_model

    conv = convert_model(ups, geometry="symmetric")
    conv.load_state_dict(new)
    x = torch.randn(1, 16, 12)
    with torch.no_grad():
        assert _relative(conv[1](conv[0](x)), ups[1](ups[0](x))) <= 1e-5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('version = 1\n[[layers]]\nsource = "up"\n', r"spec.toml:2: layers\[0\].stride is required"),
        (
            'version = 1\n[[layers]]\nsource = "up"\nstride = 2\npaddin = 1\n',
            r"layers\[0\].paddin: unknown key; did you mean 'padding'",
        ),
        ('version = 1\n[[layers]]\nsource = "up"\nstride = 0\n', r"layers\[0\].stride must be >= 1"),
        ("version = 2\n", "version = 2 is not supported"),
        ('version = 1\n[[layers]]\nsource = "up"\nstride = "2"\n', "must be an integer"),
        ('version = 1\n[rename]\n"(" = "x"\n', "not a valid regular expression"),
        ('version = 1\n[rename]\n"a" = "\\\\1"\n', r"'\\\\1' is not a valid replacement for 'a'"),
        ("version = 1\nlayers = 3\n", "array of tables"),
        ("version = \n", "invalid TOML"),
        ('version = 1\n[[layers]]\nsource = "a"\nstride = 2\n[[layers]]\nsource = "a"\nstride = 2\n', "listed twice"),
    ],
)
def test_spec_errors_name_the_line_and_key(tmp_path, text, match):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_spec_command_round_trips(tmp_path, cli, models_py):
    result = cli("spec", "--source-model", f"{models_py}:Old", "--target-model", f"{models_py}:New")
    assert result.exit_code == 0, result.output
    spec = parse_spec(result.stdout)
    assert [(x.source, x.target, x.stride, x.padding) for x in spec.layers] == [("up", "up.0", 2, 1)]
    assert spec.models == {"source": f"{models_py}:Old", "target": f"{models_py}:New"}
    none = cli("spec", "--source-model", f"{models_py}:New")
    assert none.exit_code == 2 and "no ConvTranspose layers" in none.output
    with_args = cli("spec", "--source-model", f"{models_py}:Old", "--source-args", '{"ch": 4}')
    assert parse_spec(with_args.stdout).models["source_args"] == {"ch": 4}


def test_ambiguous_pairing_asks_for_a_spec(tmp_path):
    from deconv2shuffle import pair_layers
    from deconv2shuffle.core.models import source_layers

    src = nn.Module()
    src.a = nn.ConvTranspose2d(4, 4, 4, 2, 1)
    src.b = nn.ConvTranspose2d(4, 4, 4, 2, 1)
    dst = nn.Module()
    dst.x = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
    dst.y = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
    dst.z = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
    with pytest.raises(SpecError, match="write a spec"):
        pair_layers(source_layers(src), src, dst)
    del dst.z
    paired = pair_layers(source_layers(src), src, dst)
    assert [p.target for p in paired] == ["x.0", "y.0"]


def test_json_and_report_on_failure(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli(
        "migrate",
        tmp_path / "old.pth",
        tmp_path / "new.pth",
        "--spec",
        spec_file,
        "--tolerance",
        "-1",
        "--json",
        "--report",
        tmp_path / "r.json",
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["exit_code"] == 1 and "differs" in data["error"]
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False
    assert not (tmp_path / "new.pth").exists()


def test_verbose_lists_every_key(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file, "--verbose")
    assert result.exit_code == 0, result.output
    for key in small_state():
        assert key in result.stdout
    assert "up.conv.weight" in result.stdout and "copied" in result.stdout


def test_safetensors_metadata_into_a_torch_file_is_reported(tmp_path, cli, spec_file):
    from safetensors.torch import save_file

    save_file(small_state(), tmp_path / "old.safetensors", metadata={"author": "lab"})
    result = cli("migrate", tmp_path / "old.safetensors", tmp_path / "new.pth", "--spec", spec_file, "--json")
    assert result.exit_code == 0, result.output
    assert any("author" in n for n in json.loads(result.stdout)["notes"])


def test_no_hash_leaves_the_sha_out(tmp_path, cli, spec_file):
    from safetensors import safe_open
    from safetensors.torch import save_file

    save_file(small_state(), tmp_path / "old.safetensors")
    result = cli(
        "migrate", tmp_path / "old.safetensors", tmp_path / "new.safetensors", "--spec", spec_file, "--no-hash"
    )
    assert result.exit_code == 0, result.output
    with safe_open(tmp_path / "new.safetensors", "pt") as f:
        meta = f.metadata()
    assert "deconv2shuffle.source_sha256" not in meta and meta["deconv2shuffle.version"]


def test_converted_values_are_read_back_even_when_a_prefix_is_removed(tmp_path, old_model, models_py):
    from deconv2shuffle import LayerSpec, Target, convert_state_dict

    state = {f"model.{k}": v for k, v in old_model.Old().state_dict().items()}
    target = Target.from_model(old_model.New())
    conv = convert_state_dict(state, [LayerSpec("up", 2, "up.0", 1)], target=target)
    assert conv.converted_keys == {"up.0.weight", "up.0.bias"}
    assert set(conv.state_dict) == set(target.shapes)


def test_hook_weight_norm_source_model_end_to_end(tmp_path, cli):
    (tmp_path / "voc.py").write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn.utils import weight_norm\n\n"
        "class Voc(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.up = weight_norm(nn.ConvTranspose1d(8, 4, 16, 8, 4))\n"
        "    def forward(self, x):\n"
        "        return self.up(x)\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("voc_mod", tmp_path / "voc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.Voc().state_dict(), tmp_path / "v.pth")
    result = cli(
        "migrate",
        tmp_path / "v.pth",
        tmp_path / "n.pth",
        "--source-model",
        f"{tmp_path / 'voc.py'}:Voc",
        "--input-shape",
        "1,8,10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layers"][0]["weight_norm_folded"] and report["end_to_end"]["max_rel_error"] < 1e-5


def test_target_without_bias_is_explained(tmp_path, cli, old_model):
    (tmp_path / "nb.py").write_text(
        "from torch import nn\n\nclass NoBias(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(64, 1024, 3, padding=1, bias=False)\n        self.shuffle = nn.PixelShuffle(2)\n"
        "    def forward(self, x):\n        return self.shuffle(self.conv(x))\n"
    )
    _, path = _forum_checkpoint(tmp_path, old_model)
    (tmp_path / "s.toml").write_text(
        'version = 1\n[[layers]]\nsource = "up"\ntarget = "conv"\nstride = 2\npadding = 1\n'
    )
    result = cli(
        "migrate",
        path,
        tmp_path / "n.pth",
        "--spec",
        tmp_path / "s.toml",
        "--target-model",
        f"{tmp_path / 'nb.py'}:NoBias",
    )
    assert result.exit_code == 2 and "bias=False" in result.output, result.output


def test_prefixes_unknown_and_ambiguous(tmp_path):
    from deconv2shuffle.core.keys import find_prefix

    assert find_prefix(["net_g.up.weight", "net_g.up.bias"], "up") == "net_g."
    with pytest.raises(SpecError, match="several prefixes"):
        find_prefix(["a.up.weight", "b.up.weight"], "up")
    with pytest.raises(SpecError, match="closest keys: upper.weight"):
        find_prefix(["upper.weight"], "up")


def test_spec_with_unicode_round_trips_through_dump_and_parse(tmp_path):
    from deconv2shuffle import LayerSpec, Spec, dump_spec

    spec = Spec(
        layers=[LayerSpec("décodeur.up😀", (2, 1), padding=(1, 0), target_kernel_size=(3, 2), target_padding=(1, 0))],
        rename=[("^backbone😀\\.", "encoder🚀."), ('"(quoted)"', "\\1")],
        drop=["^loss\\.", "😀$"],
        models={"source": "m.py:Old", "source_args": {"name": "🚀", "ch": 4}, "input_shape": [1, 3, 8, 8]},
    )
    text = dump_spec(spec, ["made for a test", "second line: 😀"])
    assert text.startswith("# made for a test\n# second line: 😀\n")
    assert (
        text.count("\n[[layers]]\n") == 1
        and parse_spec(text).layers[0].line == text.splitlines().index("[[layers]]") + 1
    )
    back = parse_spec(text)
    assert back.layers == [
        LayerSpec(
            "décodeur.up😀",
            (2, 1),
            "décodeur.up😀.conv",
            (1, 0),
            target_kernel_size=(3, 2),
            target_padding=(1, 0),
            line=back.layers[0].line,
        )
    ]
    assert back.rename == spec.rename and back.drop == spec.drop and back.models == spec.models
    (tmp_path / "s.toml").write_text(text, encoding="utf-8")
    assert load_spec(tmp_path / "s.toml").rename == spec.rename


def test_tolerance_policy():
    from deconv2shuffle import Tolerance

    assert Tolerance().layer_ok(1e-10) and not Tolerance().layer_ok(2e-10)
    assert not Tolerance(1.0).layer_ok(float("nan"))
    assert Tolerance().end_to_end() == 1e-8
    assert Tolerance(1e-6).end_to_end() == 1e-6
    assert Tolerance().end_to_end([torch.float32]) == 16 * torch.finfo(torch.float32).eps
    assert Tolerance().end_to_end([torch.float64]) == 1e-8


def test_a_failed_migration_reports_itself_from_the_library(tmp_path, spec_file):
    from deconv2shuffle import migrate
    from deconv2shuffle.errors import VerificationError

    torch.save(small_state(), tmp_path / "old.pth")
    with pytest.raises(VerificationError, match="nothing was written") as info:
        migrate(tmp_path / "old.pth", tmp_path / "new.pth", spec=spec_file, tolerance=-1, report_path=tmp_path / "r.md")
    assert info.value.report["ok"] is False and info.value.report["exit_code"] == 1
    assert info.value.report["source_file"] == str(tmp_path / "old.pth")
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("# deconv2shuffle migration: FAILED") and "differs by" in text
    assert not (tmp_path / "new.pth").exists()


def test_sources_and_model_references_together_are_refused(tmp_path, spec_file):
    from deconv2shuffle import load_sources, migrate
    from deconv2shuffle.errors import UsageError

    torch.save(small_state(), tmp_path / "old.pth")
    with pytest.raises(UsageError, match="not both"):
        migrate(tmp_path / "old.pth", None, sources=load_sources(spec_file), spec=spec_file)
    with pytest.raises(UsageError, match=r"input_shape='1,3,8,8'"):
        migrate(tmp_path / "old.pth", None, spec=spec_file, input_shape="1,3,8,8")
    report = migrate(tmp_path / "old.pth", None, spec=spec_file)
    assert report.ok and [x.source for x in report.layers] == ["up"] and report.written == []
