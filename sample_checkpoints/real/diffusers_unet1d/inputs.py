"""Example inputs of the UNet1DModel sample: (sample, timestep), for the end-to-end check."""

import torch


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 16, generator=gen), torch.tensor([10])), {}
