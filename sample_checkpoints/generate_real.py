"""Regenerate the samples built from real library classes: ``python sample_checkpoints/generate_real.py [OUT]``.

Writes into ``sample_checkpoints/real`` (or OUT), each saved the way its library saves it:

* ``monai_unet.pt``: MONAI ``UNet`` (ConvTranspose2d k3 s2 p1 op1), as MONAI's ``CheckpointSaver``
  writes ``save_dict={"net": net, "opt": opt}``: ``{"net": state_dict, "opt": Adam state}``.
* ``diffusers_unet1d/``: diffusers ``UNet1DModel`` (ConvTranspose1d k4 s2 p1; forward takes a
  timestep), a ``save_pretrained`` folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``.
* ``diffusers_ltx2_vocoder/``: diffusers ``LTX2Vocoder`` (ConvTranspose1d k16 s6 p5, k15 s5 p5,
  k8 s2 p3), a ``save_pretrained`` folder.

A library that is not installed is skipped with a note; the others are still written. The spec
beside each weights file (``NAME.toml``) is kept in the repository. As in ``generate.py``, every
model is built and trained in float64 (a few Adam steps on synthetic data, fixed seeds, one
thread) and stored in float32, so every CPU writes the same weights.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "real"

MONAI_UNET = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
}
UNET1D = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "extra_in_channels": 0,
    "block_out_channels": [8, 16, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownResnetBlock1D", "DownResnetBlock1D", "DownResnetBlock1D"],
    "up_block_types": ["UpResnetBlock1D", "UpResnetBlock1D"],
    "mid_block_type": "MidResTemporalBlock1D",
    "out_block_type": "OutConv1DBlock",
    "time_embedding_type": "positional",
    "use_timestep_embedding": True,
    "act_fn": "mish",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_num_groups": 8,
}
LTX2_VOCODER = {
    "in_channels": 4,
    "hidden_channels": 16,
    "out_channels": 1,
    "upsample_kernel_sizes": [16, 15, 8],
    "upsample_factors": [6, 5, 2],
    "resnet_kernel_sizes": [3],
    "resnet_dilations": [[1, 3]],
}


def _optional(module: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except Exception as e:  # not installed, or installed but unable to load beside this torch
        print(f"skipped: {module} is not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None


def train(
    model: torch.nn.Module,
    batch: Callable[[torch.Generator], tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    output: Callable[[Any], torch.Tensor] = lambda y: y,
    steps: int = 10,
    lr: float = 2e-3,
) -> torch.optim.Optimizer:
    """A few Adam steps in float64, then the model in float32 (eval mode) and its optimizer state alike."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        inputs, target = batch(gen)
        loss = torch.nn.functional.mse_loss(output(model(*inputs)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.float().eval()
    for state in opt.state.values():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                state[name] = value.float()
    return opt


def monai_unet(out: Path) -> list[Path]:
    nets = _optional("monai.networks.nets")
    if nets is None:
        return []
    torch.manual_seed(0)
    net = nets.UNet(**MONAI_UNET)

    def batch(g: torch.Generator) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        x = torch.randn(4, 1, 16, 16, generator=g)
        return (x,), torch.cat([x.relu(), (-x).relu()], 1)

    opt = train(net, batch)
    path = out / "monai_unet.pt"
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, path)
    return [path]


def _save_diffusers(model: Any, folder: Path) -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return [folder / "config.json", folder / "diffusion_pytorch_model.safetensors"]


def diffusers_unet1d(out: Path) -> list[Path]:
    diffusers = _optional("diffusers")
    if diffusers is None:
        return []
    torch.manual_seed(0)
    unet = diffusers.UNet1DModel(**UNET1D)

    def batch(g: torch.Generator) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        x = torch.randn(4, 4, 16, generator=g)
        t = torch.randint(0, 100, (4,), generator=g)
        return (x, t), torch.tanh(x.flip(-1))

    train(unet, batch, output=lambda y: y.sample)
    return _save_diffusers(unet, out / "diffusers_unet1d")


def diffusers_ltx2_vocoder(out: Path) -> list[Path]:
    vocoder = _optional("diffusers.pipelines.ltx2.vocoder")
    if vocoder is None:
        return []
    torch.manual_seed(0)
    model = vocoder.LTX2Vocoder(**LTX2_VOCODER)

    def batch(g: torch.Generator) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        mel = torch.randn(2, 1, 6, 4, generator=g)
        return (mel,), torch.tanh(torch.randn(2, 1, 360, generator=g))

    train(model, batch)
    return _save_diffusers(model, out / "diffusers_ltx2_vocoder")


def build(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        return [*monai_unet(out), *diffusers_unet1d(out), *diffusers_ltx2_vocoder(out)]
    finally:
        torch.set_default_dtype(previous)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    for path in build(target):
        print(f"{path.stat().st_size:>9,d}  {path}")
