"""guess: ranked stride/padding/output_padding guesses from a ConvTranspose weight's kernel size."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deconv2shuffle.geometry import smallest
from deconv2shuffle.guess import axis_candidates, guess_from_weight, guess_geometry

# (kernel, stride, padding, output_padding): the geometries DESIGN.md publishes, and the most common
# ones in real models (U-Net k2 s2, k6 s2 p2, DAC/Oobleck k10 s5 p3, CycleGAN/MONAI k3 s2 p1 op1)
FIRST_GUESS = [
    (4, 2, 1, 0),  # DCGAN, pix2pix, HiFi-GAN's last layers
    (2, 2, 0, 0),  # U-Net, MONAI UNETR/VNet/DynUNet, torchvision Mask R-CNN
    (6, 2, 2, 0),
    (8, 4, 2, 0),
    (9, 2, 4, 1),  # FSRCNN x2
    (3, 2, 1, 1),  # CycleGAN, MONAI UNet
    (10, 5, 3, 0),  # diffusers AutoencoderOobleck / DAC with stride 5
    (16, 8, 4, 0),  # HiFi-GAN v1
    (12, 6, 3, 0),
    (15, 5, 5, 0),  # diffusers LTX2 vocoder
    (11, 5, 3, 0),  # HiFi-GAN unit vocoder
    (1, 1, 0, 0),  # MONAI MedNeXt's 1x1 transposed conv
    (5, 2, 2, 1),
]

# a kernel shared by two published geometries: the other one is listed as an alternative
ALTERNATIVE = [
    (4, 2, 0, 0),  # DESIGN.md: k4 s2 p0 -> 2x2 pad 1
    (4, 1, 0, 0),  # DCGAN's projection from 1x1
    (4, 4, 0, 0),
    (9, 3, 4, 2),  # FSRCNN x3
    (3, 2, 1, 0),  # speechbrain L2I / Cnn14 decoders
    (10, 5, 3, 1),  # MelGAN stride 5
    (16, 6, 5, 0),  # diffusers LTX2 vocoder
    (7, 2, 3, 0),  # MONAI MedNeXt up-block
]


def _axes(guesses):
    return [(g.stride[0], g.padding[0], g.output_padding[0]) for g in guesses]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(("k", "s", "p", "op"), FIRST_GUESS)
def test_the_first_guess_is_the_published_geometry(k, s, p, op, rank):
    guesses = guess_geometry((k,) * rank)
    first = guesses[0]
    assert (first.stride, first.padding, first.output_padding) == ((s,) * rank, (p,) * rank, (op,) * rank), [
        g.describe() for g in guesses
    ]
    assert first.kernel_size == (k,) * rank and first.reasons


@pytest.mark.parametrize(("k", "s", "p", "op"), ALTERNATIVE)
def test_the_other_geometry_of_a_shared_kernel_is_listed(k, s, p, op):
    axes = _axes(guess_geometry((k, k)))
    assert (s, p, op) in axes[1:], axes


def test_guesses_are_distinct_sorted_by_score_and_valid_layers():
    for k in range(1, 33):
        guesses = guess_geometry((k, k), limit=10)
        assert guesses and len({(g.stride, g.padding, g.output_padding) for g in guesses}) == len(guesses)
        scores = [g.score for g in guesses]
        assert scores == sorted(scores, reverse=True)
        for g in guesses:
            layer = g.transposed()
            assert min(layer.output_length((4, 4))) >= 1
            assert not smallest(layer).short_axes


def test_limit_cuts_the_list():
    assert len(guess_geometry(9, limit=2)) == 2
    assert len(guess_geometry(9, limit=1)) == 1


def test_a_mixed_kernel_keeps_the_odd_axis_at_stride_one():
    # speechbrain's DiffWave upsampler: ConvTranspose2d(1, 1, (3, 32), stride=(1, 16), padding=(1, 8))
    first = guess_geometry((3, 32))[0]
    assert (first.stride, first.padding, first.output_padding) == ((1, 16), (1, 8), (0, 0))
    assert first.describe() == "k(3, 32) s(1, 16) p(1, 8)"
    # MONAI DynUNet with an anisotropic upsample kernel (1, 2, 2)
    first = guess_geometry((1, 2, 2))[0]
    assert (first.stride, first.padding) == ((1, 2, 2), (0, 0, 0))


def test_guess_from_weight_reads_the_kernel_from_a_tensor_or_shape():
    weight = torch.nn.ConvTranspose2d(8, 4, 4, 2, 1).weight
    assert guess_from_weight(weight)[0].describe() == "k4 s2 p1"
    assert guess_from_weight((8, 4, 9))[0].describe() == "k9 s2 p4 op1"
    with pytest.raises(ValueError, match=r"3 to 5 axes .* got shape \(8, 4\)"):
        guess_from_weight((8, 4))


def test_bad_kernel_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        guess_geometry((0, 2))
    with pytest.raises(ValueError, match="positive"):
        axis_candidates(0)


def test_as_dict_is_plain_data():
    d = guess_geometry((4, 4))[0].as_dict()
    assert d["geometry"] == "k4 s2 p1" and d["stride"] == [2, 2] and isinstance(d["score"], float)


@given(st.integers(1, 40), st.sampled_from([1, 2, 3]))
def test_every_kernel_gets_a_guess_whose_kernel_matches(k, rank):
    guesses = guess_geometry(k, rank=rank)
    assert guesses and all(g.kernel_size == (k,) * rank for g in guesses)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "output_padding"),
    [(2, 2, 0, 0), (4, 2, 1, 0), (6, 2, 2, 0), (8, 4, 2, 0), (10, 5, 3, 0), (3, 2, 1, 1), (9, 2, 4, 1)],
)
def test_draft_from_a_checkpoint_takes_the_first_guess(kernel, stride, padding, output_padding):
    from deconv2shuffle.core.draft import draft_from_state

    layer = torch.nn.ConvTranspose2d(6, 3, kernel, stride, padding, output_padding)
    spec, comments = draft_from_state({f"up.{k}": v for k, v in layer.state_dict().items()})
    (got,) = spec.layers
    assert (got.stride, got.padding, got.output_padding) == ((stride,) * 2, (padding,) * 2, (output_padding,) * 2)
    assert any("GUESS" in line for line in comments)
