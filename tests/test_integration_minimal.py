"""The minimal form through the tool: planning, migrate's end-to-end check, explain, inspect, reports, bench."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SPEC, small_state

from deconv2shuffle import LayerSpec, convert_model, convert_state_dict, migrate, parse_spec
from deconv2shuffle.core.planning import fit_conv, forward_crop, plan_layer
from deconv2shuffle.errors import SpecError, UsageError, VerificationError
from deconv2shuffle.geometry import TransposedConv, smallest

TARGETS_PY = '''
import torch
from torch import nn
from deconv2shuffle import convert_model


class Two(nn.Module):
    """Two k4 s2 p1 layers: a spec may give each its own form."""

    def __init__(self):
        super().__init__()
        self.a = nn.ConvTranspose2d(3, 4, 4, 2, 1)
        self.b = nn.ConvTranspose2d(4, 2, 4, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Forum(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 4, 2, 1)

    def forward(self, x):
        return self.up(x)


class ForumMinimal(nn.Module):
    """The minimal form written by hand: 2x2 conv, padding 1, shuffle, crop one cell at both ends."""

    def __init__(self, crop=True):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 2, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.crop = crop

    def forward(self, x):
        y = self.shuffle(self.conv(x))
        return y[..., 1:-1, 1:-1] if self.crop else y


def converted(geometry="minimal"):
    return convert_model(Forum(), geometry=geometry)
'''


@pytest.fixture
def targets_py(tmp_path):
    path = tmp_path / "targets.py"
    path.write_text(TARGETS_PY)
    return path


def _module(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"targets_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _save_forum(tmp_path, targets_py):
    torch.manual_seed(0)
    model = _module(targets_py, "Forum")()
    torch.save(model.state_dict(), tmp_path / "old.pth")
    return model


# -- planning: a given conv decides, with the start crop it needs ------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "padding", "crop_start", "slice_"),
    [(2, 1, 1, "y[..., 1:-1, 1:-1]"), (3, 1, 0, "")],  # the minimal form written by hand, and the usual one
)
def test_a_given_conv_gets_the_crop_its_forward_applies(kernel, padding, crop_start, slice_):
    plan = fit_conv(TransposedConv.make(4, 2, 1, rank=2), (kernel,) * 2, (padding,) * 2, (padding,) * 2)
    assert plan.exact and plan.crop_start == (crop_start,) * 2 and forward_crop(plan) == slice_


@pytest.mark.parametrize(
    ("k", "r", "p", "op", "d"), [(4, 2, 1, 0, 1), (9, 3, 4, 2, 1), (16, 8, 4, 0, 1), (5, 3, 2, 1, 2)]
)
@pytest.mark.parametrize("mode", ["symmetric", "tight", "minimal"])
def test_the_conv_of_every_exact_form_is_recognised_and_computes_the_layer(k, r, p, op, d, mode):
    """fit_conv on a form's conv (kernel and padding only) finds a crop that makes it exact, in float64."""
    from deconv2shuffle.rewrite import transposed_to_subpixel
    from deconv2shuffle.subpixel import subpixel_forward

    source = TransposedConv.make(k, r, p, op, d, rank=1)
    want_plan = smallest(source, mode)
    t = want_plan.target
    plan = fit_conv(source, t.kernel_size, t.pad_before, t.pad_after)
    assert plan.exact, plan.reasons
    torch.manual_seed(0)
    w, b = torch.randn(3, 2, k, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    new = transposed_to_subpixel(w, b, plan)
    got = subpixel_forward(x, new.weight, new.bias, plan)
    torch.testing.assert_close(got, F.conv_transpose1d(x, w, b, r, p, op, 1, d), rtol=1e-12, atol=1e-12)


def test_plan_layer_geometry_and_the_spec_key():
    w = torch.zeros(4, 2, 4, 4)
    assert plan_layer(LayerSpec("up", 2, padding=1), w).target.kernel_size == (2, 2)
    assert plan_layer(LayerSpec("up", 2, padding=1), w, geometry="symmetric").target.kernel_size == (3, 3)
    spec = parse_spec(f'version = 1\ngeometry = "symmetric"\n{SPEC.removeprefix("version = 1")}')
    assert spec.layers[0].geometry == "symmetric"
    assert plan_layer(spec.layers[0], w).target.kernel_size == (3, 3)  # the spec's word beats the default


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (SPEC + 'geometry = "smallest"\n', r"s.toml:[0-9]+: layers\[0\].geometry must be one of 'minimal'"),
        ("version = 1\ngeometry = 3\n", r"s.toml: geometry must be one of"),
        (SPEC + 'geometry = "tight"\ntarget_kernel_size = 3\n', "give geometry or target_kernel_size, not both"),
    ],
)
def test_spec_geometry_errors_name_the_file_and_key(text, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(text, "s.toml")


# -- migrate: the form written is the form checked --------------------------------------------------------


def test_end_to_end_without_a_target_builds_convert_model_in_the_form_each_layer_was_written(tmp_path, targets_py):
    torch.manual_seed(0)
    model = _module(targets_py, "Two")()
    torch.save(model.state_dict(), tmp_path / "old.pth")
    (tmp_path / "s.toml").write_text(
        f'version = 1\n[models]\nsource = "{targets_py}:Two"\ninput_shape = [1, 3, 5, 6]\n'
        '[[layers]]\nsource = "a"\nstride = 2\npadding = 1\ngeometry = "symmetric"\n'
        '[[layers]]\nsource = "b"\nstride = 2\npadding = 1\n'
    )
    report = migrate(tmp_path / "old.pth", tmp_path / "new.pth", spec=tmp_path / "s.toml")
    assert [x.target_kernel_size for x in report.layers] == [[3, 3], [2, 2]]
    assert report.end_to_end["max_rel_error"] < 1e-12
    # a strict load into the minimal-everywhere model must fail: layer a was written symmetric
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert_model(model).load_state_dict(torch.load(tmp_path / "new.pth", weights_only=True))


def test_a_hand_written_minimal_target_is_taken_as_written(tmp_path, targets_py):
    _save_forum(tmp_path, targets_py)
    report = migrate(
        tmp_path / "old.pth",
        tmp_path / "new.pth",
        source_model=f"{targets_py}:Forum",
        target_model=f"{targets_py}:ForumMinimal",
        input_shape=(1, 8, 5, 7),
    )
    (layer,) = report.layers
    assert layer.target == "conv" and layer.target_kernel_size == [2, 2] and layer.crop_start == [1, 1]
    assert layer.macs_ratio == 1.0 and report.end_to_end["max_rel_error"] < 1e-12
    assert any("y[..., 1:-1, 1:-1]" in note for note in report.notes)


def test_a_hand_written_target_that_forgets_the_crop_is_told_which_crop(tmp_path, targets_py):
    _save_forum(tmp_path, targets_py)
    with pytest.raises(VerificationError, match=r"vs new .*forward crops the shuffled output.*y\[\.\.\., 1:-1, 1:-1\]"):
        migrate(
            tmp_path / "old.pth",
            tmp_path / "new.pth",
            source_model=f"{targets_py}:Forum",
            target_model=f"{targets_py}:ForumMinimal",
            target_args={"crop": False},
            input_shape=(1, 8, 5, 7),
        )
    assert not (tmp_path / "new.pth").exists()


@pytest.mark.parametrize(("geometry", "kernel", "crop"), [("minimal", [2, 2], [1, 1]), ("symmetric", [3, 3], [0, 0])])
def test_a_converted_model_as_target_keeps_its_own_form(tmp_path, targets_py, geometry, kernel, crop):
    """A target built by convert_model pads and crops as its plan says; that plan decides."""
    _save_forum(tmp_path, targets_py)
    report = migrate(
        tmp_path / "old.pth",
        tmp_path / "new.pth",
        source_model=f"{targets_py}:Forum",
        target_model=f"{targets_py}:converted",
        target_args={"geometry": geometry},
        input_shape=(1, 8, 5, 7),
    )
    (layer,) = report.layers
    assert layer.target == "up.conv" and layer.target_kernel_size == kernel and layer.crop_start == crop
    assert report.end_to_end["max_rel_error"] < 1e-12 and not report.notes  # no crop to write by hand


def test_reports_carry_both_crops_the_shift_and_the_old_keys():
    conv = convert_state_dict(small_state(), [LayerSpec("up", 2, padding=1)])
    data = conv.report.to_dict()["layers"][0]
    assert (data["crop_start"], data["crop_end"], data["shift"], data["crop"]) == ([1, 1], [1, 1], [1, 1], [1, 1])
    assert data["macs_ratio"] == 1.0 and data["target_kernel_size"] == [2, 2] and data["target_padding"] == [1, 1]
    md = conv.report.to_markdown()
    assert "| crop start | crop end |" in md and "| k2 p1 | 1 | 1 | yes |" in md
    assert conv.targets["up"] == smallest(TransposedConv.make(4, 2, 1, rank=2), "minimal").target


# -- explain, inspect ------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["minimal", "symmetric", "tight"])
@pytest.mark.parametrize(("k", "s", "p", "op"), [(4, 2, 1, 0), (9, 3, 4, 2), (16, 8, 4, 0), (3, 2, 1, 1)])
def test_explain_taps_match_impulse_responses_in_every_form(cli, k, s, p, op, geometry):
    """Each drawn tap is checked against torch, with the output shifted by the form's start crop."""
    result = cli("explain", "-k", k, "-s", s, "-p", p, "--output-padding", op, "--geometry", geometry, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ax = data["axes"][0]
    assert data["target"] == data[geometry] and ax["crop_start"] == data["crop_start"][0]
    assert data["macs_ratio"] == data[f"{geometry}_macs_ratio"] and ax["shift"] == ax["crop_start"] % s
    drawn = {(ph["phase"], t["source_tap"]): t["target_tap"] for ph in ax["phases"] for t in ph["taps"]}
    assert len(drawn) == k
    x = torch.zeros(1, 1, 12, dtype=torch.float64)
    x[0, 0, 5] = 1
    for t in range(k):
        w = torch.zeros(1, 1, k, dtype=torch.float64)
        w[0, 0, t] = 1
        hits = torch.nonzero(F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op)[0, 0]).flatten()
        for Y in hits.tolist():
            q, phase = divmod(Y + ax["crop_start"], s)
            assert drawn[(phase, t)] == 5 - q + ax["target_padding"][0]
            source_phase = next(ph["source_phase"] for ph in ax["phases"] if ph["phase"] == phase)
            assert source_phase == Y % s
    e = ax["example"]
    assert e["after_shuffle"] - e["crop_start"] - e["crop_end"] == e["transposed_output"]


def test_explain_a_hand_written_minimal_conv_says_how_to_crop(cli):
    result = cli("explain", "-k", "4", "-s", "2", "-p", "1", "--target-kernel", "2", "--target-padding", "1")
    assert result.exit_code == 0, result.output
    assert "y[..., 1:-1, 1:-1]" in result.output and "crop 1 at the start and 1 at the end" in result.output
    bad = cli("explain", "-k", "4", "-s", "2", "--geometry", "smallest")
    assert bad.exit_code == 2 and "--geometry" in bad.output


def test_inspect_entries_share_their_keys_guessed_or_listed(tmp_path, cli):
    from deconv2shuffle.core.shapes import ENTRY_KEYS

    torch.save(small_state(), tmp_path / "m.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    guessed = json.loads(cli("inspect", tmp_path / "m.pth", "--json").stdout)["conv_transpose"][0]
    listed = json.loads(cli("inspect", tmp_path / "m.pth", "--spec", tmp_path / "s.toml", "--json").stdout)
    listed = listed["conv_transpose"][0]
    assert list(guessed) == list(listed) == list(ENTRY_KEYS)
    for entry in (guessed, listed):
        assert entry["target_weight_shape"] == [64, 8, 2, 2] and entry["crop_start"] == [1, 1]
        assert entry["forward_crop"] == "y[..., 1:-1, 1:-1]" and entry["macs_ratio"] == 1.0
    assert guessed["assumed"] and guessed["origin"] == "guess" and listed["origin"] == "spec"
    symmetric = cli("inspect", tmp_path / "m.pth", "--geometry", "symmetric", "--json")
    assert json.loads(symmetric.stdout)["conv_transpose"][0]["target_weight_shape"] == [64, 8, 3, 3]
    text = cli("inspect", tmp_path / "m.pth", "--spec", tmp_path / "s.toml")
    assert text.exit_code == 0 and "k2 p1" in text.output and "1/1" in text.output


# -- bench -----------------------------------------------------------------------------------------------


def test_bench_times_every_exact_form_in_every_runtime():
    from deconv2shuffle.pipeline import run_bench
    from deconv2shuffle.pipeline.timing import has_onnxruntime

    rows = run_bench(kernel=[4], stride=[2], padding=[1], channels=(4, 2), size=5, min_time=0.01, runtime="all")
    assert [r.runtime for r in rows] == (["torch", "onnxruntime"] if has_onnxruntime() else ["torch"])
    for row in rows:
        forms = {f.form: f for f in row.forms}
        assert list(forms) == ["symmetric", "tight", "minimal"] and row.repeats == 10
        assert forms["tight"].same_as == "symmetric" and forms["minimal"].same_as is None
        assert [forms[f].macs_ratio for f in forms] == [2.25, 2.25, 1.0]
        assert forms["minimal"].target == "2x2 pad 1, crop 1 at start" and row.max_rel_error < 1e-5
        for f in forms.values():
            lo, hi = f.spread_ms
            assert lo <= f.median_ms <= hi and f.ratio == pytest.approx(f.median_ms / row.transposed_ms)
            overlap = not (hi < row.transposed_spread_ms[0] or row.transposed_spread_ms[1] < lo)
            assert (f.verdict == "no clear difference") == overlap


def test_bench_refuses_too_few_repeats_and_unknown_runtimes():
    from deconv2shuffle.pipeline import run_bench

    with pytest.raises(UsageError, match="repeats=3: at least 10"):
        run_bench(kernel=[4], stride=[2], repeats=3)
    with pytest.raises(UsageError, match="runtime='tvm'"):
        run_bench(kernel=[4], stride=[2], runtime="tvm")


def test_time_rounds_interleaves_the_variants_and_compares_spreads():
    from deconv2shuffle.pipeline.timing import Timing, compare, time_rounds

    events: list[str] = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    timings = time_rounds(fns, 10, 1e-4, sync=lambda: events.append("|"))
    assert all(t.low_ms <= t.median_ms <= t.high_ms for t in timings.values())
    blocks = [b[0] for b in "".join(events).split("|") if b]
    assert blocks[-20:] == list("ab" + "ba") * 5  # one block of each per round, the order rotating
    assert compare(Timing(10, 9, 11), Timing(5, 4, 6)) == "2.00x faster"
    assert compare(Timing(10, 9, 11), Timing(20, 19, 21)) == "2.00x slower"
    assert compare(Timing(10, 9, 11), Timing(7, 6, 9.5)) == "no clear difference"
