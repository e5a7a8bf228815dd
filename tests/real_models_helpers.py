"""Shared steps of the real-model tests: import a library or skip, and check a conversion end to end."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest
import torch
from torch import nn

from deconv2shuffle import SubPixelConvTranspose1d, SubPixelConvTranspose2d, SubPixelConvTranspose3d, convert_model
from deconv2shuffle.compare import OutputComparison, compare_outputs
from deconv2shuffle.examples import ExampleInputs

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
SUBPIXEL = (SubPixelConvTranspose1d, SubPixelConvTranspose2d, SubPixelConvTranspose3d)


def need(module: str, attribute: str | None = None) -> Any:
    """Import ``module`` (and get ``attribute``), or skip the test with the reason.

    Skips when the library is not installed, and when it is installed but cannot load beside
    this torch build: PyPI's torchvision and torchaudio wheels are CUDA builds whose compiled
    ops fail beside the CPU torch ('operator torchvision::nms does not exist', 'libc10_cuda.so'),
    and timm, segmentation-models-pytorch, speechbrain (and diffusers' models, which import
    torchvision when it is installed) fail with them.
    """
    try:
        mod = importlib.import_module(module)
        return getattr(mod, attribute) if attribute else mod
    except ImportError as e:
        pytest.skip(f"{module} is not importable here: {e}")
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        pytest.skip(
            f"{module} fails to import beside this torch build ({type(e).__name__}: {first}); "
            "torchvision/torchaudio wheels here are CUDA builds whose compiled ops do not load with CPU torch"
        )


def trained(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Move every parameter away from its initialisation, as training would.

    Some layers start at zero (DiffWave's output projection, zero-initialised residual branches):
    with them the output would not depend on the converted layers and the check would prove nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


def transposed_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, TRANSPOSED)]


def check_library_path(
    model: nn.Module, inputs: ExampleInputs, tolerance: float = 1e-10, jitter: float = 0.1
) -> OutputComparison:
    """``convert_model`` on a float64 model: no ConvTranspose left, every output tensor within ``tolerance``.

    Also checks that the converted layers matter: nudging their weights must move the output, or
    the inputs do not exercise them (a detector with no detections, a zero-initialised branch).
    """
    model = trained(model.double().eval(), scale=jitter)
    assert transposed_layers(model), "the model has no ConvTranspose layer: nothing is tested"
    converted = convert_model(model)
    assert not transposed_layers(converted), transposed_layers(converted)
    want = inputs.run(model)
    result = compare_outputs(want, inputs.run(converted))
    assert result.tensors, "the output holds no tensor"
    assert result.within(tolerance), result.as_dict()
    nudged = copy.deepcopy(converted)
    with torch.no_grad():
        for m in nudged.modules():
            if isinstance(m, SUBPIXEL):
                m.conv.weight.mul_(1.01)
    moved = compare_outputs(want, inputs.run(nudged))
    assert moved.max_rel_error > 1e3 * max(result.max_rel_error, 1e-15), (
        "the output does not depend on the converted layers; choose inputs that reach them"
    )
    return result
