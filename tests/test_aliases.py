"""A ConvTranspose reachable under two names (MONAI DynUNet keeps its up blocks in two containers)."""

import json

import torch

ALIASED_PY = '''
import torch
from torch import nn


class Up(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 4, 2, 1)

    def forward(self, x):
        return self.up(x)


class Aliased(nn.Module):
    """One up block registered in a list and again inside a skip chain."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(2, 4, 3, padding=1)
        self.ups = nn.ModuleList([Up()])
        self.skip = nn.Module()
        self.skip.block = self.ups[0]

    def forward(self, x):
        return self.skip.block(torch.relu(self.head(x)))


class AliasedNew(nn.Module):
    """The same structure with a Conv + PixelShuffle up block (3x3 conv, crop-free)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(2, 4, 3, padding=1)
        block = nn.Module()
        block.up = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
        block.forward = lambda x: block.up(x)
        self.ups = nn.ModuleList([block])
        self.skip = nn.Module()
        self.skip.block = block

    def forward(self, x):
        return self.skip.block.up(torch.relu(self.head(x)))
'''


def _setup(tmp_path):
    py = tmp_path / "aliased.py"
    py.write_text(ALIASED_PY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("aliased_models", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.Aliased().eval()
    torch.save(model.state_dict(), tmp_path / "old.pth")
    return mod, model, py


def test_the_checkpoint_holds_both_names(tmp_path):
    _, model, _ = _setup(tmp_path)
    keys = set(torch.load(tmp_path / "old.pth", weights_only=True))
    assert {"ups.0.up.weight", "skip.block.up.weight"} <= keys


def test_migrate_with_the_source_model_converts_every_alias(tmp_path, cli):
    mod, model, py = _setup(tmp_path)
    out = tmp_path / "new.pth"
    result = cli("migrate", tmp_path / "old.pth", out, "--source-model", f"{py}:Aliased", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(x["source"] for x in report["layers"]) == ["skip.block.up", "ups.0.up"]
    assert report["end_to_end"]["max_rel_error"] < 1e-12
    new = torch.load(out, weights_only=True)
    assert not any(k.endswith("up.weight") for k in new), sorted(new)  # no old weight left under an alias
    from deconv2shuffle import convert_model

    converted = convert_model(mod.Aliased())
    converted.load_state_dict(new, strict=True)
    assert converted.skip.block is converted.ups[0]  # still shared
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-6)


def test_migrate_to_a_target_model_pairs_every_alias(tmp_path, cli):
    mod, model, py = _setup(tmp_path)
    out = tmp_path / "new.pth"
    result = cli(
        "migrate", tmp_path / "old.pth", out, "--source-model", f"{py}:Aliased", "--target-model", f"{py}:AliasedNew"
    )
    assert result.exit_code == 0, result.output
    new = mod.AliasedNew()
    new.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)


def test_spec_from_the_model_lists_every_alias(tmp_path, cli):
    _, _, py = _setup(tmp_path)
    result = cli("spec", "--source-model", f"{py}:Aliased")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert 'source = "ups.0.up"' in text and 'source = "skip.block.up"' in text
    assert "# ups.0.up = skip.block.up: one module reachable under 2 names" in text


def test_inspect_lists_every_alias(tmp_path, cli):
    _setup(tmp_path)
    result = cli("inspect", tmp_path / "old.pth", "--json")
    assert result.exit_code == 0, result.output
    names = {x["module"] for x in json.loads(result.stdout)["conv_transpose"]}
    assert {"ups.0.up", "skip.block.up"} <= names
