import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv2shuffle.errors import GeometryError
from deconv2shuffle.geometry import (
    MODES,
    TargetGeometry,
    TransposedConv,
    cheapest,
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
    # every tap lands inside the kernel, by the rule in DESIGN.md (not the geometry module's own plan):
    # tap t feeds phase s when (s + p - t*d) % r == 0, at target tap j = (s + p - t*d) / r + P
    landed = [(s + p - t * d) // r + P for t in range(k) for s in range(r) if (s + p - t * d) % r == 0]
    assert len(landed) == k and all(0 <= j < K for j in landed)


def test_target_geometry_describe():
    assert TargetGeometry((3, 3), (1, 1), (1, 1)).describe() == "3x3 pad 1"


# --- the minimal form: phase shift, narrowest window, crop at both ends ---


@pytest.mark.parametrize(
    ("k", "s", "p", "op", "kernel", "shift", "ratio"),
    [
        (4, 2, 1, 0, 2, 1, 1.00),  # DCGAN, pix2pix
        (16, 8, 4, 0, 2, 4, 1.00),  # HiFi-GAN
        (8, 4, 2, 0, 2, 2, 1.00),
        (9, 3, 4, 2, 3, 1, 1.00),  # FSRCNN x3
        (3, 2, 1, 1, 2, 0, 1.78),  # CycleGAN
        (9, 2, 4, 1, 5, 0, 1.23),  # FSRCNN x2
    ],
)
def test_minimal_form_of_published_layers(k, s, p, op, kernel, shift, ratio):
    plan = smallest(TransposedConv.make((k, k), s, p, op), "minimal")
    assert plan == cheapest(TransposedConv.make((k, k), s, p, op))
    assert plan.exact
    assert plan.target.kernel_size == (kernel, kernel)
    assert plan.shift == (shift, shift) and plan.crop_start == (shift, shift)
    assert round(plan.macs_ratio, 2) == ratio


def test_minimal_k4_s2_p1_crops_one_cell_at_each_end():
    plan = cheapest(TransposedConv.make((4, 4), 2, 1))
    assert plan.target.pad_before == plan.target.pad_after == (1, 1)
    assert plan.crop_start == plan.crop_end == (1, 1)
    assert plan.crop == plan.crop_end
    assert plan.target.describe() == "2x2 pad 1, crop 1 at start"
    assert smallest(TransposedConv.make((4, 4), 2, 1)).crop_start == (0, 0)  # symmetric keeps the old form


def test_minimal_moves_whole_cells_into_the_start_crop():
    # k1 s1 p3 reads x[Y + 3]: no shift helps, but cropping 3 cells beats a 4-wide kernel
    sym, least = smallest(TransposedConv.make(1, 1, 3)), cheapest(TransposedConv.make(1, 1, 3))
    assert sym.target.kernel_size == (4,)
    assert least.target == TargetGeometry((1,), (0,), (0,), (3,))
    assert least.crop_end == (3,)


def test_minimal_prefers_symmetric_padding_among_equal_windows():
    # k2 s2 p1 op1 d2 with nothing cropped at the end: shifts 0 and 1 both give a 2-tap window
    plan = cheapest(TransposedConv.make(2, 2, 1, 1, 2, padding_end=0))
    assert plan.target == TargetGeometry((2,), (1,), (1,), (1,))


def test_unequal_end_padding_changes_length_not_taps():
    even = TransposedConv.make(4, 2, 1)
    odd = TransposedConv.make(4, 2, 1, padding_end=3)
    assert odd.padding_end == (3,) and even.padding_end == (1,) and not odd.symmetric_padding
    assert odd.output_length([5]) == (8,) and even.output_length([5]) == (10,)
    assert odd.describe() == "k4 s2 p1/3"
    assert cheapest(odd).target.kernel_size == cheapest(even).target.kernel_size
    # two cells fewer at the end: one conv cell fewer (pad after 1 -> 0), and a crop of 1 either way
    assert cheapest(odd).target == TargetGeometry((2,), (1,), (0,), (1,)) and cheapest(odd).crop_end == (1,)
    assert TransposedConv.make(4, 2, 1, padding_end=1) == even
    with pytest.raises(GeometryError, match="padding_end"):
        TransposedConv.make(4, 2, 1, padding_end=-1)


def test_fit_with_a_start_crop_and_unknown_mode():
    src = TransposedConv.make(4, 2, 1)
    assert not fit(src, TargetGeometry((2,), (1,), (1,))).exact  # no shift: phases 0 and 1 need 3 taps
    assert fit(src, TargetGeometry((2,), (1,), (1,), (1,))).exact
    assert fit(src, TargetGeometry((2,), (1,), (1,), (3,))).short_axes  # a cell more cropped, a cell short
    with pytest.raises(GeometryError, match="minimal"):
        smallest(src, "cheap")  # type: ignore[arg-type]
    assert "cheapest, a 2 conv with padding 1, cropping 1 cell(s) at the start and 1 cell(s) at the end" in (
        explain_mismatch(fit(src, (1, 0)))
    )


def simulated_terms(src: TransposedConv, h: int) -> list[set[tuple[int, int]]]:
    """Per output cell of a 1-axis transposed conv: the (input index, tap) products it sums."""
    (k,), (r,), (p,), (d,) = src.kernel_size, src.stride, src.padding, src.dilation
    out: list[set[tuple[int, int]]] = [set() for _ in range(src.output_length([h])[0])]
    for i in range(h):
        for t in range(k):
            y = i * r + t * d - p
            if 0 <= y < len(out):
                out[y].add((i, t))
    return out


def planned_terms(plan, h: int) -> list[set[tuple[int, int]]]:
    """The same, read off the plan: conv cell q of phase s, shuffled to q*r + s, minus the start crop."""
    (ax,), (K,), (pb,), (c,) = plan.axes, plan.target.kernel_size, plan.target.pad_before, plan.crop_start
    weight = {(tap.phase, tap.offset + pb): tap.source for tap in ax.taps}
    cells = plan.conv_length([h])[0]
    shuffled = [set() for _ in range(cells * ax.stride)]
    for q in range(cells):
        for s in range(ax.stride):
            for j in range(K):
                i = q + j - pb
                if (s, j) in weight and 0 <= i < h:
                    shuffled[q * ax.stride + s].add((i, weight[(s, j)]))
    assert len(shuffled) - c - plan.crop_end[0] == plan.output_length([h])[0]
    return shuffled[c : len(shuffled) - plan.crop_end[0]]


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 10),
    r=st.integers(1, 6),
    p=st.integers(0, 7),
    pe=st.integers(0, 7),
    d=st.integers(1, 3),
    op_frac=st.integers(0, 5),
    h=st.integers(1, 9),
)
def test_every_mode_is_exact_term_by_term(k, r, p, pe, d, op_frac, h):
    """Integers only: every output cell sums exactly the products the transposed conv sums."""
    src = TransposedConv.make(k, r, p, op_frac % max(r, d), d, padding_end=pe)
    if src.output_length([h])[0] < 1:
        return
    want = simulated_terms(src, h)
    for mode in MODES:
        plan = smallest(src, mode)
        assert plan.exact
        assert all(n >= 0 for n in (*plan.crop_start, *plan.crop_end))
        assert planned_terms(plan, h) == want, mode
    assert cheapest(src).macs_ratio <= smallest(src, "tight").macs_ratio <= smallest(src).macs_ratio


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 9),
    r=st.integers(1, 5),
    p=st.integers(0, 6),
    pe=st.integers(0, 6),
    d=st.integers(1, 3),
    op_frac=st.integers(0, 4),
)
def test_minimal_kernel_is_the_smallest_of_any_exact_form(k, r, p, pe, d, op_frac):
    """No shift, start crop, padding or window gives an exact form with a smaller K*r."""
    src = TransposedConv.make(k, r, p, op_frac % max(r, d), d, padding_end=pe)
    plan = cheapest(src)
    K = plan.target.kernel_size[0]
    if d == 1:
        assert K >= -(-k // r)
    for smaller in range(1, K):
        for crop in range(0, 3 * r):
            for before in range(0, smaller + 3):  # more padding after only adds cells, so the most is enough
                assert not fit(src, TargetGeometry((smaller,), (before,), (smaller + 9,), (crop,))).exact
    # and the window it found is the narrowest over every phase shift
    windows = [fit(src, TargetGeometry((1,), (0,), (0,), (c,))).axes[0].window for c in range(r)]
    assert K == min(windows)
