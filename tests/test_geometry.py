import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv2shuffle.errors import GeometryError
from deconv2shuffle.geometry import (
    TargetGeometry,
    TransposedConv,
    explain_mismatch,
    fit,
    smallest,
    subpixel_to_transposed,
)


@pytest.mark.parametrize(
    ("k", "s", "p", "op", "kernel", "pad"),
    [
        (4, 2, 1, 0, 3, 1),
        (2, 2, 0, 0, 1, 0),
        (6, 2, 2, 0, 3, 1),
        (8, 4, 2, 0, 3, 1),
        (4, 2, 0, 0, 2, 1),
        (9, 2, 4, 1, 5, 2),  # FSRCNN x2
        (3, 2, 1, 1, 3, 1),  # CycleGAN / pix2pix
    ],
)
def test_published_equivalences(k, s, p, op, kernel, pad):
    plan = smallest(TransposedConv.make((k, k), s, p, op))
    assert plan.exact
    assert plan.target.kernel_size == (kernel, kernel)
    assert plan.target.pad_before == plan.target.pad_after == (pad, pad)


def test_macs_ratio_and_crop_for_k4_s2_p1():
    plan = smallest(TransposedConv.make((4, 4), 2, 1))
    assert plan.macs_ratio == pytest.approx(4 * 9 / 16)
    assert plan.crop == (0, 0)


def test_crop_when_output_length_is_not_a_multiple_of_stride():
    # k3 s2 p1 (no output_padding): L = 2H - 1, so one cell is cropped per axis.
    plan = smallest(TransposedConv.make(3, 2, 1))
    assert plan.output_length([5]) == (9,)
    assert plan.conv_length([5])[0] * 2 - plan.crop[0] == 9


def test_tight_geometry_is_smaller_for_k3_s2_p1_op1():
    sym = smallest(TransposedConv.make((3, 3), 2, 1, 1))
    tight = smallest(TransposedConv.make((3, 3), 2, 1, 1), "tight")
    assert tight.exact and not tight.target.symmetric
    assert tight.target.kernel_size == (2, 2)
    assert tight.macs_ratio < sym.macs_ratio


def test_fit_one_by_one_conv_for_k4_s2_p1_says_why():
    plan = fit(TransposedConv.make((4, 4), 2, 1), (1, 0))
    assert not plan.exact
    assert plan.outside
    msg = explain_mismatch(plan)
    assert "exact needs a 3x3 conv with padding 1" in msg
    assert "land outside" in msg


def test_fit_reports_too_few_cells():
    plan = fit(TransposedConv.make(4, 2, 0), (1, 0))
    assert not plan.exact
    assert plan.short_axes == ((0, 0, 1),)


def test_fit_larger_window_is_exact():
    plan = fit(TransposedConv.make((4, 4), 2, 1), (5, 2))
    assert plan.exact


def test_invalid_geometry_is_refused():
    with pytest.raises(GeometryError, match="output_padding"):
        TransposedConv.make(3, 2, 1, 2)
    with pytest.raises(GeometryError, match="axes"):
        TransposedConv.make((3, 3), (2, 2, 2))


def test_reverse_geometry():
    src = subpixel_to_transposed(3, 1, 2, rank=2)
    assert src.kernel_size == (6, 6) and src.padding == (2, 2)
    plan = fit(src, (3, 1))
    assert plan.exact
    # every (phase, position) of the conv is hit exactly once
    assert len(plan.axes[0].taps) == 6


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 9),
    r=st.integers(1, 5),
    p=st.integers(0, 6),
    d=st.integers(1, 3),
    op_frac=st.integers(0, 4),
    h=st.integers(1, 12),
)
def test_smallest_is_exact_and_minimal(k, r, p, d, op_frac, h):
    op = op_frac % max(r, d)
    src = TransposedConv.make(k, r, p, op, d)
    out = src.output_length([h])[0]
    plan = smallest(src)
    assert plan.exact
    K, P = plan.target.kernel_size[0], plan.target.pad_before[0]
    if out >= 1:
        assert plan.conv_length([h])[0] * r >= out
        assert plan.conv_length([h])[0] * r - plan.crop[0] == out
    # no smaller symmetric kernel is exact, whatever its padding
    for smaller in range(1, K):
        for pad in range(0, smaller + 2 * K):
            assert not fit(src, (smaller, pad)).exact
    assert plan.macs_ratio == pytest.approx(r * K / k)
    assert math.ceil(max(out, 0) / r) <= max(h + 2 * P - K + 1, 0) or out < 1


def test_target_geometry_describe():
    assert TargetGeometry((3, 3), (1, 1), (1, 1)).describe() == "3x3 pad 1"
