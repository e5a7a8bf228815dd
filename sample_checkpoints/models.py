"""Small versions of published architectures that upsample with ConvTranspose, and their sub-pixel twins.

Each ``*Source`` model is what a user trained; each ``*Target`` is the hand-written new model with
``Conv + PixelShuffle`` in place of every ConvTranspose, under the same module names otherwise.
Hyperparameters of the upsampling layers follow the papers; widths are cut down to keep the
checkpoints small.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from deconv2shuffle.nn import PixelShuffle


def subpixel(conv: nn.Module, factor: int | tuple[int, ...], rank: int = 2) -> nn.Sequential:
    """Conv followed by a pixel shuffle: ``nn.PixelShuffle`` for 2D, deconv2shuffle's for 1D/3D."""
    shuffle = nn.PixelShuffle(factor) if rank == 2 and isinstance(factor, int) else PixelShuffle(factor, rank=rank)
    return nn.Sequential(conv, shuffle)


# -- DCGAN generator (Radford et al. 2016): ConvT k4 s1 p0 from 1x1, then k4 s2 p1 -----------------------


class DCGANSource(nn.Module):
    def __init__(self, nz: int = 32, ngf: int = 16) -> None:
        super().__init__()
        self.project = nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False)
        self.bn0 = nn.BatchNorm2d(ngf * 4)
        self.up1 = nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ngf * 2)
        self.up2 = nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ngf)
        self.up3 = nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.project(z)))
        x = torch.relu(self.bn1(self.up1(x)))
        x = torch.relu(self.bn2(self.up2(x)))
        return torch.tanh(self.up3(x))


class DCGANTarget(nn.Module):
    def __init__(self, nz: int = 32, ngf: int = 16) -> None:
        super().__init__()
        # stride 1: no shuffle, a "full" 4x4 convolution with padding 3
        self.project = nn.Sequential(nn.Conv2d(nz, ngf * 4, 4, padding=3, bias=False))
        self.bn0 = nn.BatchNorm2d(ngf * 4)
        self.up1 = subpixel(nn.Conv2d(ngf * 4, ngf * 2 * 4, 3, padding=1, bias=False), 2)
        self.bn1 = nn.BatchNorm2d(ngf * 2)
        self.up2 = subpixel(nn.Conv2d(ngf * 2, ngf * 4, 3, padding=1, bias=False), 2)
        self.bn2 = nn.BatchNorm2d(ngf)
        self.up3 = subpixel(nn.Conv2d(ngf, 3 * 4, 3, padding=1, bias=False), 2)

    forward = DCGANSource.forward


# -- U-Net decoder (Ronneberger et al. 2015): ConvT k2 s2 -------------------------------------------------


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU()
    )


class UNetSource(nn.Module):
    def __init__(self, ch: int = 8) -> None:
        super().__init__()
        self.enc1 = _double_conv(1, ch)
        self.enc2 = _double_conv(ch, ch * 2)
        self.bottom = _double_conv(ch * 2, ch * 4)
        self.up2 = nn.ConvTranspose2d(ch * 4, ch * 2, 2, 2)
        self.dec2 = _double_conv(ch * 4, ch * 2)
        self.up1 = nn.ConvTranspose2d(ch * 2, ch, 2, 2)
        self.dec1 = _double_conv(ch * 2, ch)
        self.head = nn.Conv2d(ch, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        b = self.bottom(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class UNetTarget(UNetSource):
    def __init__(self, ch: int = 8) -> None:
        super().__init__(ch)
        self.up2 = subpixel(nn.Conv2d(ch * 4, ch * 2 * 4, 1), 2)  # type: ignore[assignment]
        self.up1 = subpixel(nn.Conv2d(ch * 2, ch * 4, 1), 2)  # type: ignore[assignment]


# -- FSRCNN (Dong et al. 2016): ConvT k9, stride = scale, padding 4, output_padding = scale - 1 --------------


class FSRCNNSource(nn.Module):
    def __init__(self, scale: int = 2, d: int = 16, s: int = 8, m: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, 1, 9, scale, 4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))


class FSRCNNTarget(FSRCNNSource):
    def __init__(self, scale: int = 2, d: int = 16, s: int = 8, m: int = 2) -> None:
        super().__init__(scale, d, s, m)
        self.deconv = subpixel(nn.Conv2d(d, scale * scale, 5, padding=2), scale)  # type: ignore[assignment]


# -- CycleGAN / pix2pix ResNet generator (Zhu et al. 2017): ConvT k3 s2 p1 op1 ------------------------------


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class CycleGANSource(nn.Module):
    def __init__(self, ngf: int = 8, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(ngf, ngf * 2, 3, 2, 1),
            nn.InstanceNorm2d(ngf * 2),
            nn.ReLU(),
            nn.Conv2d(ngf * 2, ngf * 4, 3, 2, 1),
            nn.InstanceNorm2d(ngf * 4),
            nn.ReLU(),
        )
        self.res = nn.Sequential(*[_ResBlock(ngf * 4) for _ in range(blocks)])
        self.up1 = nn.ConvTranspose2d(ngf * 4, ngf * 2, 3, 2, 1, output_padding=1)
        self.norm1 = nn.InstanceNorm2d(ngf * 2)
        self.up2 = nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, output_padding=1)
        self.norm2 = nn.InstanceNorm2d(ngf)
        self.out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res(self.down(self.stem(x)))
        x = torch.relu(self.norm1(self.up1(x)))
        x = torch.relu(self.norm2(self.up2(x)))
        return self.out(x)


class CycleGANTarget(CycleGANSource):
    def __init__(self, ngf: int = 8, blocks: int = 2) -> None:
        super().__init__(ngf, blocks)
        self.up1 = subpixel(nn.Conv2d(ngf * 4, ngf * 2 * 4, 3, padding=1), 2)  # type: ignore[assignment]
        self.up2 = subpixel(nn.Conv2d(ngf * 2, ngf * 4, 3, padding=1), 2)  # type: ignore[assignment]


# -- HiFi-GAN-style generator (Kong et al. 2020): weight-normed ConvTranspose1d k16 s8 p4, k4 s2 p1 ----------


class _ResBlock1d(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [parametrizations.weight_norm(nn.Conv1d(ch, ch, 3, dilation=d, padding=d)) for d in (1, 3)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(nn.functional.leaky_relu(x, 0.1))
        return x


class HiFiGANSource(nn.Module):
    def __init__(self, mels: int = 20, ch: int = 32) -> None:
        super().__init__()
        self.conv_pre = parametrizations.weight_norm(nn.Conv1d(mels, ch, 7, padding=3))
        self.ups = nn.ModuleList(
            [
                parametrizations.weight_norm(nn.ConvTranspose1d(ch, ch // 2, 16, 8, 4)),
                parametrizations.weight_norm(nn.ConvTranspose1d(ch // 2, ch // 4, 4, 2, 1)),
            ]
        )
        self.resblocks = nn.ModuleList([_ResBlock1d(ch // 2), _ResBlock1d(ch // 4)])
        self.conv_post = parametrizations.weight_norm(nn.Conv1d(ch // 4, 1, 7, padding=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for up, res in zip(self.ups, self.resblocks, strict=True):
            x = res(up(nn.functional.leaky_relu(x, 0.1)))
        return torch.tanh(self.conv_post(nn.functional.leaky_relu(x)))


class HiFiGANTarget(HiFiGANSource):
    def __init__(self, mels: int = 20, ch: int = 32) -> None:
        super().__init__(mels, ch)
        self.ups = nn.ModuleList(
            [
                subpixel(nn.Conv1d(ch, ch // 2 * 8, 3, padding=1), 8, rank=1),
                subpixel(nn.Conv1d(ch // 2, ch // 4 * 2, 3, padding=1), 2, rank=1),
            ]
        )


# -- 3D U-Net decoder (Cicek et al. 2016): ConvTranspose3d k2 s2 -------------------------------------------


class UNet3DSource(nn.Module):
    def __init__(self, ch: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, ch, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.Conv3d(ch, ch * 2, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(ch * 2, ch, 2, 2)
        self.dec = nn.Sequential(nn.Conv3d(ch * 2, ch, 3, padding=1), nn.ReLU(), nn.Conv3d(ch, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        b = self.bottom(nn.functional.max_pool3d(e, 2))
        return self.dec(torch.cat([self.up(b), e], 1))


class UNet3DTarget(UNet3DSource):
    def __init__(self, ch: int = 8) -> None:
        super().__init__(ch)
        self.up = subpixel(nn.Conv3d(ch * 2, ch * 8, 1), 2, rank=3)  # type: ignore[assignment]


# -- The forum case: ConvTranspose2d(64, 256, 4, 2, 1) and the new model someone wrote by hand ---------------


class ForumSource(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 64, 3, padding=1)
        self.up = nn.ConvTranspose2d(64, 256, 4, 2, 1)
        self.tail = nn.Conv2d(256, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.relu(self.up(torch.relu(self.head(x)))))


class ForumTarget(nn.Module):
    """The new model: ConvTranspose2d(64, 256, 4, 2, 1) becomes Conv2d(64, 1024, 3, padding=1) + PixelShuffle(2)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 64, 3, padding=1)
        self.up_conv = nn.Conv2d(64, 256 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.tail = nn.Conv2d(256, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.relu(self.shuffle(self.up_conv(torch.relu(self.head(x))))))
