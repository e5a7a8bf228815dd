"""Hostile specs and patterns: bounded values, one line naming file:line and key, fast refusal."""

import subprocess
import sys
import time

import pytest
import torch
from conftest import sha, small_state

from deconv2shuffle import parse_spec
from deconv2shuffle.errors import SpecError, UsageError

HEAD = 'version = 1\n[[layers]]\nsource = "up"\n'

# (spec body after the [[layers]] header and source, the line and key the message must name)
HOSTILE_SPECS = [
    ("stride = [100000000, 100000000]\n", r"s\.toml:4: layers\[0\]\.stride must be <= 1024"),
    ("stride = 1000000\n", r"s\.toml:4: layers\[0\]\.stride must be <= 1024"),
    ("stride = [128, 128]\n", r"s\.toml:4: layers\[0\]\.stride: the product over the axes must be <= 4096"),
    ("stride = 2\npadding = 9223372036854775807\n", r"s\.toml:5: layers\[0\]\.padding must be <= 1024"),
    ("stride = 2\ndilation = 5000\n", r"s\.toml:5: layers\[0\]\.dilation must be <= 1024"),
    ("stride = 2\noutput_padding = 2\n", r"s\.toml:5: layers\[0\]\.output_padding = 2 must be smaller than the stride"),
    ("stride = 2\ngroups = 100000000\n", r"s\.toml:5: layers\[0\]\.groups must be an integer from 1 to 65536"),
    ("stride = 2\ntarget_kernel_size = 1000000\n", r"s\.toml:5: layers\[0\]\.target_kernel_size must be <= 1024"),
    (
        "stride = 2\ntarget_kernel_size = [100, 100]\n",
        r"s\.toml:5: layers\[0\]\.target_kernel_size: the product over the axes must be <= 4096",
    ),
    (
        "stride = 2\ntarget_kernel_size = 3\ntarget_padding = 99999\n",
        r"s\.toml:6: layers\[0\]\.target_padding must be <= 1024",
    ),
    ("stride = [1e8, 1e8]\n", r"s\.toml:4: layers\[0\]\.stride must be an integer"),
    (
        "stride = 2\n[models]\ninput_shape = [1, 3, 100000, 100000]\n",
        r"s\.toml:6: models\.input_shape must hold at most",
    ),
    ("stride = 2\n[models]\ninput_shape = [1, -3]\n", r"s\.toml:6: models\.input_shape must be 1 to 6 positive"),
]


@pytest.mark.parametrize(("body", "match"), HOSTILE_SPECS, ids=[m.split("\\.")[-1][:28] for _, m in HOSTILE_SPECS])
def test_hostile_spec_values_fail_fast_with_file_line_and_key(tmp_path, body, match):
    start = time.perf_counter()
    with pytest.raises(SpecError, match=match) as err:
        parse_spec(HEAD + body, "s.toml")
    assert time.perf_counter() - start < 0.5
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_real_large_layers_stay_within_the_bounds():
    """WaveGlow's upsampler (stride 256, kernel 1024) and a 3D x4 layer are accepted."""
    spec = parse_spec(HEAD + "stride = 256\npadding = 384\ntarget_kernel_size = 4\n", "s.toml")
    assert spec.layers[0].stride == 256
    spec = parse_spec(HEAD + "stride = [4, 4, 4]\noutput_padding = [1, 1, 1]\n", "s.toml")
    assert spec.layers[0].output_padding == (1, 1, 1)


def test_a_hostile_spec_through_the_command_line_is_one_line_and_no_output(tmp_path, cli):
    torch.save(small_state(), tmp_path / "old.pth")
    (tmp_path / "s.toml").write_text(HEAD + "stride = 2\npadding = 9223372036854775807\n")
    before = sha(tmp_path / "old.pth")
    start = time.perf_counter()
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", tmp_path / "s.toml")
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 's.toml'}:5: layers[0].padding must be <= 1024, got 9223372036854775807"
    ]
    assert not (tmp_path / "new.pth").exists() and sha(tmp_path / "old.pth") == before


def test_input_shape_option_is_bounded(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", "--dry-run", "--spec", spec_file, "--input-shape", "1,3,99999,99999")
    assert result.exit_code == 2 and "must hold at most 67108864 values" in result.output, result.output


PATHOLOGICAL = [r"^(a+)+$", r"(a|aa)+$", r"^(.*a){12}$", r"(x+x+)+y", r"^(\w+\s?)*$", r"((a)\2)+b"]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_patterns_are_refused_before_they_run(pattern, tmp_path, cli):
    from deconv2shuffle.core.keys import KeyRules

    start = time.perf_counter()
    with pytest.raises(UsageError, match="exponential time") as err:
        KeyRules.make(drop=[pattern])
    assert time.perf_counter() - start < 0.1
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match=r"s\.toml:3: rename\[.*exponential"):
        parse_spec(f"version = 1\n[rename]\n'{pattern}' = 'x'\n", "s.toml")


def test_the_pathological_pattern_returns_fast_from_the_command_line(tmp_path, spec_file):
    """On a 33-character key, ^(a+)+$ would run for minutes; refused, it returns at once."""
    state = {**small_state(), "a" * 33 + "!": torch.zeros(1)}
    torch.save(state, tmp_path / "old.pth")
    argv = [sys.executable, "-m", "deconv2shuffle", "migrate", str(tmp_path / "old.pth"), "--dry-run"]
    argv += ["--spec", str(spec_file), "--drop", "^(a+)+$"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the pattern ran against the key")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "exponential time" in out.stderr


SAFE = [
    r"^module\.",
    r"^backbone\.(.*)$",
    r"(\.\d+)+",
    r"(\w+\.)+weight$",
    r"([^.]+\.)*bias",
    r"^(?:model\.)?up\.",
    r"(ab)+",
]


@pytest.mark.parametrize("pattern", SAFE)
def test_ordinary_patterns_are_accepted(pattern):
    from deconv2shuffle.core.keys import KeyRules

    rules = KeyRules.make(rename=[(pattern, "x")], drop=[pattern])
    assert len(rules.drop) == 1
