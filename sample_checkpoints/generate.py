"""Regenerate the sample checkpoints: ``python sample_checkpoints/generate.py``.

Each source model of ``models.py`` is trained for a few Adam steps on synthetic data (fixed
seeds, one thread), so its weights are not just initialisation, then saved the way its
training stack would: a bare state_dict, safetensors, a Lightning-style ``.ckpt`` with optimizer
state, or a HiFi-GAN-style ``{"generator": ...}`` dict. The spec beside each file
(``NAME.toml``) is written by hand and kept in the repository.

Everything runs in float64 (initialisation, data, training) and the weights are stored in
float32, so every CPU writes the same bits. In float32 the result depends on the CPU: kernels for
other instruction sets (AVX-512, AVX2, plain) round differently (``uniform_`` initialisation and
``randn`` already differ in the last bit), and a few Adam steps through BatchNorm/InstanceNorm
grow those 1e-8 differences to 1e-2 in the weights. Float64 noise stays far below float32's last
bit. ``ATEN_CPU_CAPABILITY=default`` and ``ONEDNN_MAX_CPU_ISA=SSE41`` emulate another CPU here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402


def smooth(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random smooth signals: low-resolution noise, upsampled."""
    n, c, *spatial = shape
    low = torch.randn(n, c, *[max(s // 4, 1) for s in spatial], generator=gen)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    return torch.nn.functional.interpolate(low, size=spatial, mode=mode, align_corners=False)


def train(
    model: torch.nn.Module,
    make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    steps: int = 25,
    lr: float = 2e-3,
) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, y = make_batch(gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.float().eval()  # parameters keep their identity, so the optimizer state still refers to them
    for state in opt.state.values():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                state[name] = value.float()
    return opt


def build(out: Path = HERE) -> list[Path]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _build(out)
    finally:
        torch.set_default_dtype(previous)


def _build(out: Path) -> list[Path]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    written = []

    def save_torch(obj: object, name: str) -> None:
        torch.save(obj, out / name)
        written.append(out / name)

    def save_st(state: dict[str, torch.Tensor], name: str) -> None:
        save_file({k: v.contiguous() for k, v in state.items()}, out / name, metadata={"format": "pt"})
        written.append(out / name)

    torch.manual_seed(0)
    dcgan = models.DCGANSource()
    train(dcgan, lambda g: (torch.randn(8, 32, 1, 1, generator=g), torch.tanh(smooth((8, 3, 32, 32), g))))
    save_torch(dcgan.state_dict(), "dcgan.pth")

    torch.manual_seed(0)
    unet = models.UNetSource()
    train(unet, lambda g: ((x := smooth((4, 1, 16, 16), g)), torch.cat([x.relu(), (-x).relu()], 1)))
    save_st(unet.state_dict(), "unet.safetensors")

    for scale, fmt in ((2, "pth"), (3, "safetensors")):
        torch.manual_seed(0)
        sr = models.FSRCNNSource(scale)

        def sr_batch(g: torch.Generator, scale: int = scale) -> tuple[torch.Tensor, torch.Tensor]:
            hi = smooth((4, 1, 8 * scale, 8 * scale), g)
            return torch.nn.functional.avg_pool2d(hi, scale), hi

        train(sr, sr_batch)
        if fmt == "pth":
            save_torch(sr.state_dict(), f"fsrcnn_x{scale}.pth")
        else:
            save_st(sr.state_dict(), f"fsrcnn_x{scale}.safetensors")

    torch.manual_seed(0)
    cyc = models.CycleGANSource()
    opt = train(cyc, lambda g: ((x := smooth((2, 3, 16, 16), g)), torch.tanh(x.flip(-1))), steps=15)
    save_torch(
        {
            "epoch": 3,
            "global_step": 15,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {f"model.{k}": v for k, v in cyc.state_dict().items()},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"ngf": 8, "blocks": 2, "lr": 2e-3},
        },
        "cyclegan.ckpt",
    )

    torch.manual_seed(0)
    voc = models.HiFiGANSource()
    train(voc, lambda g: (smooth((2, 20, 8), g), torch.tanh(smooth((2, 1, 128), g))), steps=15)
    save_torch({"generator": voc.state_dict(), "steps": 15, "epoch": 1}, "hifigan.pth")

    torch.manual_seed(0)
    u3 = models.UNet3DSource()
    train(u3, lambda g: ((x := smooth((2, 1, 8, 8, 8), g)), torch.cat([x.relu(), (-x).relu()], 1)), steps=15)
    save_st(u3.state_dict(), "unet3d.safetensors")

    torch.manual_seed(0)
    forum = models.ForumSource()
    train(
        forum, lambda g: ((x := smooth((2, 3, 8, 8), g)), torch.nn.functional.interpolate(x, scale_factor=2)), steps=10
    )
    save_torch(forum.state_dict(), "forum.pth")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    target.mkdir(parents=True, exist_ok=True)
    for path in build(target):
        print(f"{path.stat().st_size:>9,d}  {path}")
