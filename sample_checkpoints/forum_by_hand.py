"""A target for the forum case written by hand, with the conv's size as arguments: the README's classic
mistakes (``--target-args '{"kernel": 1, "padding": 0}'``, ``'{"out": 256}'``) are made with it."""

from __future__ import annotations

import torch
from torch import nn


class ForumByHand(nn.Module):
    """ForumSource with its ConvTranspose2d(64, 256, 4, 2, 1) replaced by Conv2d(64, out, kernel) + PixelShuffle(2)."""

    def __init__(self, kernel: int = 3, padding: int = 1, out: int = 1024) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 64, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(64, out, kernel, padding=padding), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(out // 4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.relu(self.up(torch.relu(self.head(x)))))
