"""The engine against torch's own conv_transpose, over random configurations, in float64."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconv2shuffle import (
    PixelShuffle,
    SubPixelConvTranspose1d,
    SubPixelConvTranspose2d,
    SubPixelConvTranspose3d,
    TransposedConv,
    convert_model,
    fit,
    smallest,
    subpixel_to_transposed_weights,
    transposed_to_subpixel,
)
from deconv2shuffle.errors import ConversionError, GeometryError
from deconv2shuffle.nn import pixel_shuffle

TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MODULE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
SUBPIXEL = {1: SubPixelConvTranspose1d, 2: SubPixelConvTranspose2d, 3: SubPixelConvTranspose3d}


def random_config(rng: random.Random) -> dict:
    rank = rng.choice([1, 1, 2, 2, 3])
    max_k = {1: 9, 2: 6, 3: 4}[rank]
    k = tuple(rng.randint(1, max_k) for _ in range(rank))
    r = tuple(rng.randint(1, 4) for _ in range(rank))
    d = tuple(rng.choice([1, 1, 1, 2, 3]) for _ in range(rank))
    p = tuple(rng.randint(0, 4) for _ in range(rank))
    op = tuple(rng.randint(0, max(ri, di) - 1) for ri, di in zip(r, d))
    groups = rng.choice([1, 1, 2, 3])
    c_in = groups * rng.randint(1, 3)
    c_out = groups * rng.randint(1, 3)
    h = tuple(rng.randint(1, {1: 9, 2: 6, 3: 4}[rank]) for _ in range(rank))
    bias = rng.random() < 0.6
    return {
        "rank": rank,
        "k": k,
        "r": r,
        "d": d,
        "p": p,
        "op": op,
        "groups": groups,
        "c_in": c_in,
        "c_out": c_out,
        "h": h,
        "bias": bias,
    }


def configs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c = random_config(rng)
        geo = TransposedConv.make(c["k"], c["r"], c["p"], c["op"], c["d"], c["groups"])
        if min(geo.output_length(c["h"])) >= 1:
            out.append(c)
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


def test_configurations_cover_the_hard_cases():
    cs = configs(600, 0)
    assert {c["rank"] for c in cs} == {1, 2, 3}
    assert any(c["groups"] > 1 for c in cs)
    assert any(max(c["d"]) > 1 for c in cs)
    assert any(max(c["op"]) > 0 for c in cs)
    assert any(len(set(c["r"])) > 1 for c in cs)
    assert any(min(k - r for k, r in zip(c["k"], c["r"])) < 0 for c in cs)
    assert any(any(k % r for k, r in zip(c["k"], c["r"])) for c in cs)
    assert any(not c["bias"] for c in cs) and any(c["bias"] for c in cs)


@pytest.mark.parametrize("chunk", range(6))
def test_functional_rewrite_matches_torch(chunk):
    """600 random configurations (100 per chunk): conv + shuffle + crop == conv_transpose."""
    gen = torch.Generator().manual_seed(chunk)
    worst = 0.0
    for c in configs(600, 0)[chunk * 100 : (chunk + 1) * 100]:
        geo = TransposedConv.make(c["k"], c["r"], c["p"], c["op"], c["d"], c["groups"])
        w = torch.randn(c["c_in"], c["c_out"] // c["groups"], *c["k"], dtype=torch.float64, generator=gen)
        b = torch.randn(c["c_out"], dtype=torch.float64, generator=gen) if c["bias"] else None
        x = torch.randn(2, c["c_in"], *c["h"], dtype=torch.float64, generator=gen)
        want = TRANSPOSED[c["rank"]](x, w, b, c["r"], c["p"], c["op"], c["groups"], c["d"])
        for mode in ("symmetric", "tight", "minimal"):
            plan = smallest(geo, mode)
            new = transposed_to_subpixel(w, b, plan)
            pads = [
                v for pb, pa in zip(reversed(plan.target.pad_before), reversed(plan.target.pad_after)) for v in (pb, pa)
            ]
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[c["rank"]]
            y = pixel_shuffle(conv(F.pad(x, pads), new.weight, new.bias, groups=c["groups"]), plan.factors)
            y = y[(slice(None), slice(None), *(slice(a, a + n) for a, n in zip(plan.crop_start, want.shape[2:])))]
            assert y.shape == want.shape, (c, mode)
            err = relative_error(y, want)
            worst = max(worst, err)
            assert err <= 1e-10, (c, mode, err)
    assert worst <= 1e-10


@pytest.mark.parametrize("chunk", range(2))
def test_modules_match_torch(chunk):
    """200 random configurations through SubPixelConvTranspose*d.from_transposed."""
    torch.manual_seed(chunk)
    for c in configs(200, 1)[chunk * 100 : (chunk + 1) * 100]:
        old = MODULE[c["rank"]](
            c["c_in"], c["c_out"], c["k"], c["r"], c["p"], c["op"], c["groups"], c["bias"], c["d"], dtype=torch.float64
        )
        new = SUBPIXEL[c["rank"]].from_transposed(old)
        x = torch.randn(1, c["c_in"], *c["h"], dtype=torch.float64)
        with torch.no_grad():
            want, got = old(x), new(x)
        assert got.shape == want.shape
        assert relative_error(got, want) <= 1e-10, c
        keys = set(new.state_dict())
        assert keys == ({"conv.weight", "conv.bias"} if c["bias"] else {"conv.weight"})


@pytest.mark.parametrize(("k", "s", "p", "op", "kernel", "pad"), [(4, 2, 1, 0, 3, 1), (9, 2, 4, 1, 5, 2)])
def test_published_equivalences_run(k, s, p, op, kernel, pad):
    old = nn.ConvTranspose2d(3, 5, k, s, p, op, dtype=torch.float64)
    new = SubPixelConvTranspose2d.from_transposed(old, geometry="symmetric")
    assert new.conv.kernel_size == (kernel, kernel) and new.conv.padding == (pad, pad)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=1e-12, atol=1e-12)


def test_round_trip_is_bit_exact_for_random_configs():
    gen = torch.Generator().manual_seed(3)
    for c in configs(200, 2):
        geo = TransposedConv.make(c["k"], c["r"], c["p"], c["op"], c["d"], c["groups"])
        w = torch.randn(c["c_in"], c["c_out"] // c["groups"], *c["k"], generator=gen)
        b = torch.randn(c["c_out"], generator=gen) if c["bias"] else None
        for mode in ("symmetric", "tight", "minimal"):
            plan = smallest(geo, mode)
            fwd = transposed_to_subpixel(w, b, plan)
            back = subpixel_to_transposed_weights(fwd.weight, fwd.bias, plan)
            assert torch.equal(back.weight.view(torch.int32), w.view(torch.int32)), c
            if b is not None:
                assert torch.equal(back.bias, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_are_kept_and_values_copied(dtype):
    w = torch.randn(4, 3, 4, 4).to(dtype)
    w[0, 0, 0, 0] = float("nan")
    w[0, 0, 0, 1] = -0.0
    b = torch.randn(3).to(dtype)
    before = w.clone()
    out = transposed_to_subpixel(w, b, smallest(TransposedConv.make((4, 4), 2, 1)))
    assert out.weight.dtype == dtype and out.bias.dtype == dtype
    assert torch.equal(w.view(torch.uint8), before.view(torch.uint8)), "input mutated"
    # every non-zero bit pattern of the output is one of the input's, each input value used exactly once
    src = sorted(w.flatten().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]).tolist())
    flat = out.weight.flatten().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]).tolist()
    nonzero = sorted(v for v in flat if v != 0)
    assert nonzero == [v for v in src if v != 0]
    assert torch.equal(out.bias, b.repeat_interleave(4))


def test_fp8_weights_are_copied():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    w = torch.randn(2, 2, 2, 2).to(torch.float8_e4m3fn)
    out = transposed_to_subpixel(w, None, smallest(TransposedConv.make((2, 2), 2, 0)))
    assert out.weight.dtype == torch.float8_e4m3fn
    assert sorted(out.weight.view(torch.uint8).flatten().tolist()) == sorted(w.view(torch.uint8).flatten().tolist())


def test_inexact_target_needs_approx_and_reports_mass():
    w = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    plan = fit(TransposedConv.make((4, 4), 2, 1), (1, 0))
    with pytest.raises(ConversionError, match="outside"):
        transposed_to_subpixel(w, None, plan)
    out = transposed_to_subpixel(w, None, plan, approx=True)
    kept = out.weight.square().sum()
    expect = (1 - float(kept / w.square().sum())) ** 0.5
    assert out.dropped_mass == pytest.approx(expect)
    assert 0 < out.dropped_mass < 1
    assert out.weight.shape == (12, 4, 1, 1)


def test_reverse_of_a_trained_conv_uses_the_larger_kernel():
    from deconv2shuffle import subpixel_to_transposed

    conv_w = torch.randn(5 * 4, 3, 3, 3, dtype=torch.float64)
    conv_b = torch.randn(5, dtype=torch.float64).repeat_interleave(4)
    src = subpixel_to_transposed(3, 1, 2, rank=2)
    plan = fit(src, (3, 1))
    back = subpixel_to_transposed_weights(conv_w, conv_b, plan)
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64)
    want = F.pixel_shuffle(F.conv2d(x, conv_w, conv_b, padding=1), 2)
    got = F.conv_transpose2d(x, back.weight, back.bias, 2, src.padding)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reverse_refuses_weights_it_cannot_express():
    plan = smallest(TransposedConv.make((2, 2), 2, 0))  # 1x1 conv, every position mapped
    bias = torch.arange(8.0)
    with pytest.raises(ConversionError, match="bias"):
        subpixel_to_transposed_weights(torch.randn(8, 3, 1, 1), bias, plan)
    plan = smallest(TransposedConv.make((3, 3), 2, 1, 1))  # 3x3 conv with unused positions
    with pytest.raises(ConversionError, match="cannot express"):
        subpixel_to_transposed_weights(torch.randn(8, 3, 3, 3), None, plan)


def test_wrong_weight_shape_is_explained():
    with pytest.raises(ConversionError, match=r"\(4, 3, 3, 3\)"):
        transposed_to_subpixel(torch.randn(4, 3, 3, 3), None, smallest(TransposedConv.make((4, 4), 2, 1)))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_pixel_shuffle_matches_torch_and_per_axis(rank):
    x = torch.randn(2, 3 * 2**rank, *([3] * rank))
    y = PixelShuffle(2, rank=rank)(x)
    assert y.shape == (2, 3, *([6] * rank))
    if rank == 2:
        torch.testing.assert_close(y, nn.PixelShuffle(2)(x))
    # reference by index: channel c*R + phase holds output cell q*r + s
    for idx in [(0, 1, *([4] * rank)), (1, 2, *([1] * rank))]:
        n, c, *pos = idx
        phase = 0
        for p in pos:
            phase = phase * 2 + p % 2
        assert y[idx] == x[(n, c * 2**rank + phase, *(p // 2 for p in pos))]
    if rank == 2:  # per-axis factors (3, 2): channel c*6 + s_h*2 + s_w holds cell (q_h*3 + s_h, q_w*2 + s_w)
        x2 = torch.randn(1, 6 * 4, 5, 4)
        per_axis = pixel_shuffle(x2, (3, 2))
        assert per_axis.shape == (1, 4, 15, 8)
        for c, hh, ww in [(0, 0, 0), (1, 7, 3), (3, 14, 7), (2, 5, 6)]:
            assert per_axis[0, c, hh, ww] == x2[0, c * 6 + (hh % 3) * 2 + ww % 2, hh // 3, ww // 2]


def test_padding_mode_other_than_zeros_is_refused():
    old = nn.ConvTranspose2d(2, 2, 3, 2, 1)
    old.padding_mode = "circular"
    with pytest.raises(GeometryError, match="padding_mode"):
        SubPixelConvTranspose2d.from_transposed(old)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.ConvTranspose1d(4, 6, 16, 8, 4)
        self.b = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, (2, 1), 1, (1, 0), groups=1))
        self.c = nn.ConvTranspose3d(2, 4, 2, 2, groups=2, bias=False)
        self.lin = nn.Linear(3, 3)

    def forward(self, x1, x2, x3):
        return self.a(x1), self.b(x2), self.c(x3)


def test_convert_model_mixes_ranks_and_keeps_the_original():
    torch.manual_seed(0)
    model = Mixed().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = convert_model(model)
    assert not any(isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in new.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    xs = (
        torch.randn(2, 4, 11, dtype=torch.float64),
        torch.randn(2, 3, 5, 7, dtype=torch.float64),
        torch.randn(1, 2, 3, 2, 4, dtype=torch.float64),
    )
    with torch.no_grad():
        for got, want in zip(new(*xs), model(*xs)):
            assert relative_error(got, want) <= 1e-10
    assert set(new.state_dict()) >= {"a.conv.weight", "a.conv.bias", "b.0.conv.weight", "c.conv.weight", "lin.weight"}


@pytest.mark.parametrize("layout", ["hook", "parametrization"])
def test_weight_norm_is_folded(layout):
    from torch.nn.utils import parametrizations, weight_norm

    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(8, 4, 16, 8, 4).double()
    conv = weight_norm(conv) if layout == "hook" else parametrizations.weight_norm(conv)
    with torch.no_grad():
        (conv.weight_g if layout == "hook" else conv.parametrizations.weight.original0).mul_(1.7)
    x = torch.randn(2, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        want = conv(x)
    new = SubPixelConvTranspose1d.from_transposed(conv)
    with torch.no_grad():
        assert relative_error(new(x), want) <= 1e-10


def test_weight_norm_state_folding_matches_module():
    from torch.nn.utils import parametrizations

    from deconv2shuffle import fold_weight_norm_state

    conv = parametrizations.weight_norm(nn.ConvTranspose1d(8, 4, 4, 2, 1))
    state = {f"up.{k}": v for k, v in conv.state_dict().items()}
    folded, removed = fold_weight_norm_state(state, "up")
    assert removed == ["up.parametrizations.weight.original0", "up.parametrizations.weight.original1"]
    assert set(folded) == {"up.weight", "up.bias"}
    torch.testing.assert_close(folded["up.weight"], conv.weight.detach(), rtol=0, atol=0)
    assert "up.parametrizations.weight.original0" in state


def test_output_size_picks_a_longer_output_like_conv_transpose():
    torch.manual_seed(0)
    old = nn.ConvTranspose2d(3, 4, 3, 2, 1).double()  # k3 s2 p1: 2H-1, output_size may ask for 2H
    new = SubPixelConvTranspose2d.from_transposed(old)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        for size in [(9, 11), (10, 12), (9, 12)]:
            torch.testing.assert_close(new(x, output_size=size), old(x, output_size=size), rtol=1e-12, atol=1e-12)
        for layer in (new, old):  # the same rule and the same words as torch
            with pytest.raises(ValueError, match=r"valid sizes range from \[9, 11\] to \[10, 12\]"):
                layer(x, output_size=(11, 11))


def test_convert_model_on_random_models_mixing_ranks():
    """100 random models, each holding three ConvTranspose layers of random rank and geometry."""
    rng = random.Random(7)
    cs = configs(300, 5)
    for m in range(100):
        model = nn.ModuleList()
        picked = [cs[3 * m + i] for i in range(3)]
        for c in picked:
            model.append(
                MODULE[c["rank"]](
                    c["c_in"],
                    c["c_out"],
                    c["k"],
                    c["r"],
                    c["p"],
                    c["op"],
                    c["groups"],
                    c["bias"],
                    c["d"],
                    dtype=torch.float64,
                )
            )
        new = convert_model(model)
        assert not any(isinstance(x, tuple(MODULE.values())) for x in new.modules())
        for old_layer, new_layer, c in zip(model, new, picked):
            x = torch.randn(rng.randint(1, 2), c["c_in"], *c["h"], dtype=torch.float64)
            with torch.no_grad():
                assert relative_error(new_layer(x), old_layer(x)) <= 1e-10, c
