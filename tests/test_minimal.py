"""The minimal (phase-shifted) form against torch's conv_transpose, over random configurations, in float64."""

import random

import pytest
import torch
import torch.nn.functional as F

from deconv2shuffle.geometry import MODES, TransposedConv, cheapest, smallest
from deconv2shuffle.nn import pixel_shuffle
from deconv2shuffle.rewrite import subpixel_to_transposed_weights, transposed_to_subpixel

TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def random_config(rng: random.Random) -> dict:
    rank = rng.choice([1, 1, 2, 2, 3])
    max_k = {1: 10, 2: 6, 3: 4}[rank]
    k = tuple(rng.randint(1, max_k) for _ in range(rank))
    r = tuple(rng.randint(1, 5) for _ in range(rank))
    d = tuple(rng.choice([1, 1, 1, 2, 3]) for _ in range(rank))
    p = tuple(rng.randint(0, 5) for _ in range(rank))
    # a third of the layers crop the two ends differently (ONNX pads begin != end)
    pe = tuple(rng.randint(0, 5) for _ in range(rank)) if rng.random() < 0.35 else p
    op = tuple(rng.randint(0, max(ri, di) - 1) for ri, di in zip(r, d))
    groups = rng.choice([1, 1, 2, 3])
    return {
        "rank": rank,
        "k": k,
        "r": r,
        "d": d,
        "p": p,
        "pe": pe,
        "op": op,
        "groups": groups,
        "c_in": groups * rng.randint(1, 3),
        "c_out": groups * rng.randint(1, 3),
        "h": tuple(rng.randint(1, {1: 9, 2: 6, 3: 4}[rank]) for _ in range(rank)),
        "bias": rng.random() < 0.6,
    }


def geometry(c: dict) -> TransposedConv:
    return TransposedConv.make(c["k"], c["r"], c["p"], c["op"], c["d"], c["groups"], padding_end=c["pe"])


def configs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        c = random_config(rng)
        if min(geometry(c).output_length(c["h"])) >= 1:
            out.append(c)
    return out


def reference(x, w, b, c):
    """torch's conv_transpose with padding 0, then each axis cropped ``p`` at the start and ``pe`` at the end.

    ``output_padding`` lengthens the end; past the full extent those cells only hold the bias.
    """
    full = TRANSPOSED[c["rank"]](x, w, None, c["r"], 0, 0, c["groups"], c["d"])
    lengths = geometry(c).output_length(c["h"])
    grow = [max(p + n - f, 0) for p, n, f in zip(c["p"], lengths, full.shape[2:])]
    full = F.pad(full, [v for g in reversed(grow) for v in (0, g)])
    y = full[(slice(None), slice(None), *(slice(p, p + n) for p, n in zip(c["p"], lengths)))]
    return y if b is None else y + b.reshape(-1, *([1] * c["rank"]))


def subpixel(x, new, plan):
    pads = [v for pb, pa in zip(reversed(plan.target.pad_before), reversed(plan.target.pad_after)) for v in (pb, pa)]
    z = CONV[plan.rank](F.pad(x, pads), new.weight, new.bias, groups=plan.source.groups)
    y = pixel_shuffle(z, plan.factors)
    lengths = plan.output_length(x.shape[2:])
    for start, end, n, have in zip(plan.crop_start, plan.crop_end, lengths, y.shape[2:]):
        assert start + n + end == have  # both crops are exact, not just enough
    return y[(slice(None), slice(None), *(slice(s, s + n) for s, n in zip(plan.crop_start, lengths)))]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def test_configurations_cover_the_hard_cases():
    cs = configs(600, 11)
    assert {c["rank"] for c in cs} == {1, 2, 3}
    assert any(c["groups"] > 1 for c in cs)
    assert any(max(c["d"]) > 1 for c in cs)
    assert any(max(c["op"]) > 0 for c in cs)
    assert any(len(set(c["r"])) > 1 for c in cs)
    assert any(min(k - r for k, r in zip(c["k"], c["r"])) < 0 for c in cs)
    assert any(c["pe"] != c["p"] for c in cs)
    assert any(not c["bias"] for c in cs) and any(c["bias"] for c in cs)
    shifted = [c for c in cs if any(cheapest(geometry(c)).shift)]
    assert len(shifted) > 100  # the phase shift is exercised, not just the crop-free cases


def test_reference_matches_torch_for_symmetric_padding():
    gen = torch.Generator().manual_seed(0)
    for c in [c for c in configs(100, 12) if c["pe"] == c["p"]][:40]:
        w = torch.randn(c["c_in"], c["c_out"] // c["groups"], *c["k"], dtype=torch.float64, generator=gen)
        b = torch.randn(c["c_out"], dtype=torch.float64, generator=gen)
        x = torch.randn(1, c["c_in"], *c["h"], dtype=torch.float64, generator=gen)
        want = TRANSPOSED[c["rank"]](x, w, b, c["r"], c["p"], c["op"], c["groups"], c["d"])
        torch.testing.assert_close(reference(x, w, b, c), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", range(6))
def test_minimal_form_matches_torch(chunk):
    """600 random configurations (100 per chunk) in the minimal form, and the reverse rewrite bit for bit."""
    gen = torch.Generator().manual_seed(100 + chunk)
    for c in configs(600, 11)[chunk * 100 : (chunk + 1) * 100]:
        w = torch.randn(c["c_in"], c["c_out"] // c["groups"], *c["k"], dtype=torch.float64, generator=gen)
        b = torch.randn(c["c_out"], dtype=torch.float64, generator=gen) if c["bias"] else None
        x = torch.randn(2, c["c_in"], *c["h"], dtype=torch.float64, generator=gen)
        want = reference(x, w, b, c)
        plan = cheapest(geometry(c))
        new = transposed_to_subpixel(w, b, plan)
        got = subpixel(x, new, plan)
        assert got.shape == want.shape, c
        assert relative_error(got, want) <= 1e-10, c
        back = subpixel_to_transposed_weights(new.weight, new.bias, plan)
        assert torch.equal(back.weight, w), c


def test_every_mode_matches_torch_with_unequal_end_padding():
    gen = torch.Generator().manual_seed(5)
    for c in [c for c in configs(300, 13) if c["pe"] != c["p"]][:60]:
        w = torch.randn(c["c_in"], c["c_out"] // c["groups"], *c["k"], dtype=torch.float64, generator=gen)
        x = torch.randn(1, c["c_in"], *c["h"], dtype=torch.float64, generator=gen)
        want = reference(x, w, None, c)
        for mode in MODES:
            plan = smallest(geometry(c), mode)
            assert relative_error(subpixel(x, transposed_to_subpixel(w, None, plan), plan), want) <= 1e-10, (c, mode)
