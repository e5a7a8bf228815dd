"""The README's recipes for real models, run as written when their library is installed.

Each recipe is the README text after a ``<!-- recipe: NAME -->`` marker, up to the next marker or
heading: ``bash`` blocks hold ``deconv2shuffle`` commands (run through the app), ``python`` blocks
whose first line is ``# name.py`` are files the user writes, other ``python`` blocks run. Before,
the test writes what the user starts from (a trained model saved the library's way); after, it
checks that the converted model gives the original's output (float32).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from real_models_helpers import need, trained

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!-- recipe: (\w+) -->$", re.M)
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```$", re.S | re.M)

pytestmark = pytest.mark.filterwarnings("ignore")


def recipe(name: str) -> list[tuple[str, str]]:
    """The ``(language, code)`` blocks of the README's recipe ``name``."""
    text = README.read_text()
    found = {m.group(1): m.end() for m in MARKER.finditer(text)}
    assert name in found, f"README has no recipe {name!r}"
    start = found[name]
    ends = [m.start() for m in MARKER.finditer(text) if m.start() > start]
    ends += [m.start() for m in re.finditer(r"^## ", text, re.M) if m.start() > start]
    return BLOCK.findall(text[start : min(ends, default=len(text))])


def run_recipe(name: str, folder: Path, monkeypatch) -> dict:
    """Run recipe ``name`` in ``folder``; returns the scope its Python left behind."""
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    scope: dict = {}
    for language, code in recipe(name):
        first = code.splitlines()[0]
        if language == "python" and re.fullmatch(r"# [\w/]+\.py", first):
            (folder / first[2:]).write_text(code)
        elif language == "python":
            exec(compile(code, f"README recipe {name}", "exec"), scope)
        else:
            for line in code.splitlines():
                args = shlex.split(line)
                assert args[0] == "deconv2shuffle", line
                result = CliRunner().invoke(app, args[1:])
                assert result.exit_code == 0, f"{line}\n{result.output}"
    return scope


def close(want, got) -> None:
    from deconv2shuffle.compare import compare_outputs

    result = compare_outputs(want, got)
    assert result.within(1e-5), result.as_dict()


def test_every_recipe_has_a_test():
    names = set(MARKER.findall(README.read_text()))
    tested = {n.removeprefix("test_recipe_") for n in globals() if n.startswith("test_recipe_")}
    assert names == tested and len(names) >= 4


def test_recipe_monai(tmp_path, monkeypatch):
    nets = need("monai.networks.nets")
    torch.manual_seed(0)
    model = trained(nets.UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2))).eval()
    (tmp_path / "models").mkdir()
    torch.save({"net": model.state_dict()}, tmp_path / "models" / "model.pt")  # CheckpointSaver's layout
    scope = run_recipe("monai", tmp_path, monkeypatch)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        close(model(x), scope["net"](x))
    assert set(torch.load(tmp_path / "models" / "model_subpixel.pt", weights_only=True)) == {"net"}


def test_recipe_diffusers(tmp_path, monkeypatch):
    diffusers = need("diffusers")
    unet1d = need("diffusers", "UNet1DModel")
    from test_real_models import UNET1D_ARGS

    torch.manual_seed(0)
    model = trained(diffusers.UNet1DModel(**UNET1D_ARGS)).eval()
    model.save_pretrained(tmp_path / "unet")
    scope = run_recipe("diffusers", tmp_path, monkeypatch)
    x, t = torch.randn(2, 4, 16), torch.tensor([10])
    with torch.no_grad():
        close(model(x, t), scope["unet"](x, t))
    with pytest.raises(OSError, match="diffusion_pytorch_model"):
        unet1d.from_pretrained(tmp_path / "unet_subpixel")  # never silently re-initialised


DECODER_PY = """
import torch
from torch import nn


class Decoder(nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.up = nn.ConvTranspose2d(channels, channels, 4, 2, 1)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(torch.relu(self.up(torch.relu(self.head(x)))))
"""


def test_recipe_training(tmp_path, monkeypatch):
    (tmp_path / "decoder.py").write_text(DECODER_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("decoder", None)
    from decoder import Decoder

    torch.manual_seed(0)
    model = Decoder()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    torch.save(  # the layout of timm's train.py
        {
            "epoch": 3,
            "arch": "decoder",
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "version": 2,
            "args": argparse.Namespace(lr=1e-3, model="decoder"),
            "metric": 0.5,
        },
        tmp_path / "checkpoint.pth.tar",
    )
    scope = run_recipe("training", tmp_path, monkeypatch)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        close(model.eval()(x), scope["model"](x))
    from deconv2shuffle import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "checkpoint_subpixel.pth.tar", allow_globals=["argparse.Namespace"])
    assert ckpt.container["epoch"] == 3 and ckpt.container["args"].lr == 1e-3
    moments = ckpt.container["optimizer"]["state"]
    assert any(tuple(s["exp_avg"].shape) == tuple(ckpt.state_dict["up.conv.weight"].shape) for s in moments.values())
    sys.modules.pop("decoder", None)


def test_recipe_speechbrain(tmp_path, monkeypatch):
    hifigan = need("speechbrain.lobes.models.HifiGAN")
    vocoders = need("speechbrain.inference.vocoders")
    torch.manual_seed(0)
    generator = trained(hifigan.HifiganGenerator(8, 1, "1", [[1, 3, 5]], [3], [8, 4], 16, [4, 2])).eval()
    original = hifigan.HifiganGenerator(8, 1, "1", [[1, 3, 5]], [3], [8, 4], 16, [4, 2]).eval()
    original.load_state_dict(generator.state_dict())

    class Interface:  # what from_hparams returns, without a download: the generator and the first-use flag
        def __init__(self):
            self.hparams = argparse.Namespace(generator=generator)
            self.infer = generator.inference
            self.first_call = True

    monkeypatch.setattr(vocoders.HIFIGAN, "from_hparams", staticmethod(lambda **_: Interface()))
    scope = run_recipe("speechbrain", tmp_path, monkeypatch)
    assert scope["hifi_gan"].first_call is False
    mel = torch.randn(1, 8, 10)
    with torch.no_grad():
        close(original(mel), scope["hifi_gan"].infer(mel))
