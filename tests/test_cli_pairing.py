"""Pairing source ConvTransposes with target convs: execution order, ambiguity, and specs that contradict the model."""

import json

import pytest
import torch
from torch import nn

from deconv2shuffle import parse_spec
from deconv2shuffle.errors import SpecError

MODELS = '''
import torch
from torch import nn


def _up():
    return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))


class Two(nn.Module):
    """Two equal ConvTransposes, one after the other."""

    def __init__(self):
        super().__init__()
        self.first = nn.ConvTranspose2d(4, 4, 4, 2, 1)
        self.second = nn.ConvTranspose2d(4, 4, 4, 2, 1)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


class RegisteredBackwards(nn.Module):
    """Registers its second layer first, and runs them in the source's order."""

    def __init__(self):
        super().__init__()
        self.late = _up()
        self.early = _up()

    def forward(self, x):
        return self.late(torch.relu(self.early(x)))


class SameNamesBackwards(nn.Module):
    """The layers keep their names, registered in the other order."""

    def __init__(self):
        super().__init__()
        self.second = _up()
        self.first = _up()

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


class Parallel(nn.Module):
    """Two equal ConvTransposes on the same input: nothing orders them."""

    def __init__(self):
        super().__init__()
        self.first = nn.ConvTranspose2d(4, 4, 4, 2, 1)
        self.second = nn.ConvTranspose2d(4, 4, 4, 2, 1)

    def forward(self, x):
        return self.first(x) + 2 * self.second(x)


class ParallelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _up()
        self.b = _up()

    def forward(self, x):
        return 2 * self.b(x) + self.a(x)
'''


@pytest.fixture
def pairs(tmp_path):
    (tmp_path / "pairs.py").write_text(MODELS)
    return tmp_path / "pairs.py"


def _checkpoint(tmp_path, pairs, name):
    from deconv2shuffle.core.models import load_model

    torch.manual_seed(0)
    model = load_model(f"{pairs}:{name}")
    torch.save(model.state_dict(), tmp_path / "old.pth")
    return model


@pytest.mark.parametrize(("target", "expect"), [("RegisteredBackwards", "late.0"), ("SameNamesBackwards", "second.0")])
def test_pairing_follows_execution_order(tmp_path, cli, pairs, target, expect):
    from deconv2shuffle import load_sources

    _checkpoint(tmp_path, pairs, "Two")
    sources = load_sources(None, f"{pairs}:Two", f"{pairs}:{target}")
    assert [(x.source, x.target) for x in sources.layers()][1] == ("second", expect)
    result = cli(
        "migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--source-model", f"{pairs}:Two", "--target-model",
        f"{pairs}:{target}", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["end_to_end"]["max_rel_error"] < 1e-12
    drafted = cli("spec", "--source-model", f"{pairs}:Two", "--target-model", f"{pairs}:{target}")
    assert drafted.exit_code == 0, drafted.output
    assert [x.target for x in parse_spec(drafted.stdout).layers][1] == expect


def test_ambiguous_pairing_names_the_candidates_and_writes_a_spec_to_edit(tmp_path, cli, pairs):
    from deconv2shuffle import load_sources
    from deconv2shuffle.core.sources import AmbiguousPairingError

    _checkpoint(tmp_path, pairs, "Parallel")
    with pytest.raises(AmbiguousPairingError, match=r"'first', 'second'.*'a\.0', 'b\.0'") as info:
        load_sources(None, f"{pairs}:Parallel", f"{pairs}:ParallelNew").layers()
    assert info.value.candidates == {"first": ["a.0", "b.0"], "second": ["a.0", "b.0"]}
    out = tmp_path / "out"
    out.mkdir()
    args = ["--source-model", f"{pairs}:Parallel", "--target-model", f"{pairs}:ParallelNew"]
    result = cli("migrate", tmp_path / "old.pth", out / "new.pth", *args)
    assert result.exit_code == 2, result.output
    draft = out / "new.pairing.toml"
    assert f"wrote a spec to edit: {draft}" in result.output and "--spec" in result.output
    assert not (out / "new.pth").exists()
    spec = parse_spec(draft.read_text())
    assert {x.source: x.target for x in spec.layers} == {"first": "b.0", "second": "a.0"}  # execution order: a guess
    # the guess is wrong here (second -> b is the truth); edited, the spec converts exactly, models and all
    draft.write_text(draft.read_text().replace('"b.0"', '"B"').replace('"a.0"', '"b.0"').replace('"B"', '"a.0"'))
    fixed = cli("migrate", tmp_path / "old.pth", out / "new.pth", "--spec", draft, "--json")
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)["end_to_end"]["max_rel_error"] < 1e-12
    again = cli("migrate", tmp_path / "old.pth", out / "new2.pth", *args)
    assert again.exit_code == 2 and (out / "new2.pairing.toml").is_file()
    drafted = cli("spec", *args)
    assert drafted.exit_code == 2 and "ambiguous pairing" in drafted.output
    assert "AMBIGUOUS" in drafted.stdout and parse_spec(drafted.stdout).layers


def test_untraceable_models_pair_in_registration_order():
    from deconv2shuffle import pair_layers
    from deconv2shuffle.core.models import source_layers

    src = nn.Module()  # no forward: torch.fx cannot trace it, registration order is all there is
    src.a = nn.ConvTranspose2d(4, 4, 4, 2, 1)
    src.b = nn.ConvTranspose2d(4, 4, 4, 2, 1)
    dst = nn.Module()
    dst.x = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
    dst.y = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.PixelShuffle(2))
    assert [p.target for p in pair_layers(source_layers(src), src, dst)] == ["x.0", "y.0"]


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (
            'source = "up"\nstride = 4\npadding = 1',
            r"spec\.toml:2: layers\[0\] 'up': the spec says stride 4 but the source model's layer has stride 2",
        ),
        ('source = "up"\nstride = 2\npadding = 0', r"the spec says padding 0 but .* padding 1"),
        ('source = "up"\nstride = 2\npadding = 1\ndilation = 2', r"the spec says dilation 2 but .* dilation 1"),
        ('source = "head"\nstride = 2', r"'head' is a Conv2d, not a ConvTranspose"),
    ],
)
def test_a_spec_that_contradicts_the_source_model_is_refused(tmp_path, cli, models_py, old_model, layer, match):
    from deconv2shuffle import load_sources

    (tmp_path / "spec.toml").write_text(f"version = 1\n[[layers]]\n{layer}\n")
    with pytest.raises(SpecError, match=match):
        load_sources(tmp_path / "spec.toml", f"{models_py}:Old").layers()
    torch.save(old_model.Old().state_dict(), tmp_path / "old.pth")
    result = cli(
        "migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", tmp_path / "spec.toml", "--source-model",
        f"{models_py}:Old",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "spec.toml:2: layers[0]" in result.output
