"""Converted layers behave like nn.ConvTranspose*d wherever torch's own layer is used."""

import itertools
import random

import pytest
import torch
from torch import nn

from deconv2shuffle import convert_model
from deconv2shuffle.errors import ConversionError
from deconv2shuffle.geometry import MODES, TransposedConv
from deconv2shuffle.nn import SUBPIXEL_CLASSES

MODULE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def random_layer(rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    while True:
        rank = rng.choice([1, 2, 3])
        k = tuple(rng.randint(1, {1: 8, 2: 5, 3: 3}[rank]) for _ in range(rank))
        r = tuple(rng.randint(1, 4) for _ in range(rank))
        d = tuple(rng.choice([1, 1, 2]) for _ in range(rank))
        p = tuple(rng.randint(0, 3) for _ in range(rank))
        op = tuple(rng.randint(0, max(ri, di) - 1) for ri, di in zip(r, d))
        groups = rng.choice([1, 2])
        h = tuple(rng.randint(1, {1: 7, 2: 5, 3: 3}[rank]) for _ in range(rank))
        if min(TransposedConv.make(k, r, p, op, d).output_length(h)) < 1:
            continue
        layer = MODULE[rank](
            2 * groups, groups * rng.randint(1, 2), k, r, p, op, groups, rng.random() < 0.5, d, dtype=torch.float64
        )
        return layer, h


@pytest.mark.parametrize("geometry", MODES)
def test_unbatched_input_and_every_legal_output_size_match_torch(geometry):
    """60 random layers per form: batched and unbatched, every output_size torch accepts, and what it refuses."""
    rng = random.Random(sorted(MODES).index(geometry))
    for _ in range(60):
        old, h = random_layer(rng)
        new = SUBPIXEL_CLASSES[len(h)].from_transposed(old, geometry=geometry)
        x = torch.randn(2, old.in_channels, *h, dtype=torch.float64)
        shortest = [n - op for n, op in zip(TransposedConv.make(*_args(old)).output_length(h), old.output_padding)]
        sizes = list(itertools.product(*[range(max(n, 1), n + s) for n, s in zip(shortest, old.stride)]))
        with torch.no_grad():
            for xi in (x, x[0]):
                torch.testing.assert_close(new(xi), old(xi), rtol=1e-12, atol=1e-12)
                for size in sizes[:8]:
                    torch.testing.assert_close(new(xi, size), old(xi, output_size=size), rtol=1e-12, atol=1e-12)
                for too_long in ([n + s for n, s in zip(shortest, old.stride)], [n - 1 for n in shortest]):
                    with pytest.raises(ValueError, match="valid sizes range"):
                        old(xi, output_size=too_long)
                    with pytest.raises(ValueError, match="valid sizes range"):
                        new(xi, output_size=too_long)
            # output_size may lead with batch and channel (channel alone when unbatched), as in torch
            for xi, full in ((x, [*x.shape[:2], *sizes[-1]]), (x[0], [x.shape[1], *sizes[-1]])):
                torch.testing.assert_close(new(xi, full), old(xi, output_size=full), rtol=1e-12, atol=1e-12)


def _args(m: nn.Module) -> tuple:
    return (m.kernel_size, m.stride, m.padding, m.output_padding, m.dilation)


def test_wrong_input_rank_is_refused_like_torch():
    new = convert_model(nn.Sequential(nn.ConvTranspose2d(2, 2, 4, 2, 1)))[0]
    with pytest.raises(ValueError, match="3D \\(unbatched\\) or 4D \\(batched\\)"):
        new(torch.randn(1, 1, 2, 4, 4))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 2, stride=2)  # 13 -> 6: the up layers need output_size to give 13 back
        self.up = nn.ConvTranspose2d(8, 3, 2, 2)
        self.up4 = nn.ConvTranspose2d(8, 3, 4, 2, 1)

    def forward(self, skip):
        h = self.down(skip)
        a = self.up(h, output_size=skip.shape[-2:])
        b = self.up4(h, output_size=skip.shape[-2:])
        return torch.cat([skip, a, b], 1)


@pytest.mark.parametrize("size", [(13, 13), (13, 10), (7, 9), (3, 5)])
def test_unet_skip_pattern_on_odd_sizes(size):
    torch.manual_seed(0)
    model = UNet().double()
    new = convert_model(model)
    assert isinstance(new.up, SUBPIXEL_CLASSES[2])
    skip = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(skip), model(skip), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new(skip[0]), model(skip[0]), rtol=1e-12, atol=1e-12)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.ConvTranspose1d(3, 4, 16, 8, 4)
        self.b = nn.ConvTranspose2d(3, 4, 3, 2, 1, 1)
        self.c = nn.ConvTranspose3d(2, 2, 2, 2, groups=2)
        self.d = nn.ConvTranspose2d(3, 2, 3, 2, 1)

    def forward(self, x1, x2, x3):
        return self.a(x1), self.b(x2), self.c(x3), self.d(x2, output_size=[2 * x2.shape[-2], 2 * x2.shape[-1]])


def _mixed_inputs():
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 3, 5, generator=gen),
        torch.randn(2, 3, 4, 5, generator=gen),
        torch.randn(1, 2, 3, 2, 2, generator=gen),
    )


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_script_trace_and_fx_match_eager():
    torch.manual_seed(0)
    model = Mixed()
    new = convert_model(model).eval()
    xs = _mixed_inputs()
    with torch.no_grad():
        want = model(*xs)
        _assert_same(new(*xs), want)
        _assert_same(torch.jit.script(new)(*xs), want)
        _assert_same(torch.jit.trace(new, xs)(*xs), want)
        traced = torch.fx.symbolic_trace(new)
        _assert_same(traced(*xs), want)
        # the fx graph keeps the rank and output_size decisions for run time, like torch's own leaf layer
        layer = torch.fx.symbolic_trace(new.b)
        x = torch.randn(3, 4, 5)
        torch.testing.assert_close(layer(x), model.b(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x, [8, 10]), model.b(x, output_size=[8, 10]), rtol=1e-5, atol=1e-5)


def test_scripted_layer_takes_unbatched_input_and_output_size():
    old = nn.ConvTranspose2d(3, 2, 3, 2, 1)
    scripted = torch.jit.script(convert_model(nn.Sequential(old))[0])
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, [8, 10]), old(x, output_size=[8, 10]), rtol=1e-5, atol=1e-5)
        with pytest.raises(Exception, match="valid sizes range"):
            scripted(x, [9, 11])


def test_export_matches_eager():
    torch.manual_seed(0)
    model = Mixed()
    new = convert_model(model).eval()
    xs = _mixed_inputs()
    program = torch.export.export(new, xs)
    with torch.no_grad():
        _assert_same(program.module()(*xs), model(*xs))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("conv_transpose" in op for op in ops), ops


@pytest.mark.slow
def test_compile_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 4, 2, 1))
    new = convert_model(model).eval()
    x = torch.randn(1, 3, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(new)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [nn.LazyConvTranspose1d, nn.LazyConvTranspose2d, nn.LazyConvTranspose3d])
def test_lazy_layers_are_refused_before_their_first_forward(cls):
    rank = {nn.LazyConvTranspose1d: 1, nn.LazyConvTranspose2d: 2, nn.LazyConvTranspose3d: 3}[cls]
    model = nn.Sequential(cls(4, 3, 2))
    with pytest.raises(ConversionError, match=r"layer '0' is a Lazy.*has not run yet.*run the model once"):
        convert_model(model)
    with pytest.raises(ConversionError, match=r"Lazy.* has not run yet"):
        SUBPIXEL_CLASSES[rank].from_transposed(model[0])
    x = torch.randn(1, 2, *([3] * rank))
    want = model(x)  # materialized: now it converts
    with torch.no_grad():
        torch.testing.assert_close(convert_model(model)(x), want, rtol=1e-5, atol=1e-5)
