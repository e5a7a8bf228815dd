"""A draft spec guessed from a checkpoint alone: every layer marked, and migrate refuses unchecked guesses."""

import json

import pytest
import torch
from conftest import sha, small_state

from deconv2shuffle import migrate, parse_spec
from deconv2shuffle.core.draft import draft_from_state
from deconv2shuffle.core.spec import dump_spec
from deconv2shuffle.errors import SpecError


def _draft(tmp_path, state=None):
    state = small_state() if state is None else state
    torch.save(state, tmp_path / "m.pth")
    spec, comments = draft_from_state(state, "m.pth")
    path = tmp_path / "draft.toml"
    path.write_text(dump_spec(spec, comments))
    return path


def test_every_drafted_layer_is_marked_and_the_mark_round_trips(tmp_path):
    path = _draft(tmp_path)
    text = path.read_text()
    assert text.count("\nguessed = true\n") == 1 and "--accept-guesses" in text
    assert all(x.guessed for x in parse_spec(text).layers)
    assert not any(x.guessed for x in parse_spec(text.replace("guessed = true\n", "")).layers)


def test_a_still_guessed_layer_without_models_is_refused_with_one_line(tmp_path, cli):
    path = _draft(tmp_path)
    before = sha(tmp_path / "m.pth")
    result = cli("migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", path)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and f"{path}:" in line and "'up'" in line
    assert "--accept-guesses" in line and "--source-model" in line
    assert not (tmp_path / "n.pth").exists() and sha(tmp_path / "m.pth") == before


def test_the_library_refuses_too(tmp_path):
    path = _draft(tmp_path)
    with pytest.raises(SpecError, match="guessed = true"):
        migrate(tmp_path / "m.pth", tmp_path / "n.pth", spec=path)
    assert not (tmp_path / "n.pth").exists()


def test_accept_guesses_converts_and_says_only_per_layer_checks_ran(tmp_path, cli):
    path = _draft(tmp_path)
    result = cli("migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", path, "--accept-guesses", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "ONLY THE PER-LAYER CHECKS RAN" in report["end_to_end"]["skipped"]
    human = cli("migrate", tmp_path / "m.pth", tmp_path / "n2.pth", "--spec", path, "--accept-guesses")
    assert "warning: end-to-end check skipped: ONLY THE PER-LAYER CHECKS RAN" in human.output
    assert "--source-model" in human.output


def test_a_source_model_that_checks_the_whole_model_lifts_the_refusal(tmp_path, cli, models_py, old_model):
    model = old_model.Old()
    state = model.state_dict()
    path = _draft(tmp_path, state)
    result = cli(
        "migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", path, "--source-model", f"{models_py}:Old"
    )
    assert result.exit_code == 0, result.output
    assert "end-to-end (float64" in result.output


def test_a_wrong_guess_is_caught_by_the_source_model(tmp_path, cli, models_py, old_model):
    """The draft guesses k4 s2 p1; a model trained with k4 s2 p0... is not what the draft says: refused."""
    path = _draft(tmp_path, old_model.Old().state_dict())
    wrong = path.read_text().replace("padding = 1", "padding = 0")
    path.write_text(wrong)
    result = cli(
        "migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", path, "--source-model", f"{models_py}:Old"
    )
    assert result.exit_code == 2 and "padding" in result.output, result.output
    assert not (tmp_path / "n.pth").exists()


def test_guessed_must_be_a_boolean(tmp_path):
    with pytest.raises(SpecError, match=r"layers\[0\]\.guessed must be true or false"):
        parse_spec('[[layers]]\nsource = "up"\nstride = 2\nguessed = "yes"\n')


def test_batch_refuses_guesses_per_file_and_warns_when_only_per_layer_checks_ran(tmp_path, cli):
    path = _draft(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "m.pth").rename(tmp_path / "in" / "m.pth")
    refused = cli("batch", tmp_path / "in", tmp_path / "out", "--spec", path, "--json")
    assert refused.exit_code == 1, refused.output
    (row,) = json.loads(refused.stdout)["files"]
    assert row["status"] == "failed" and "guessed = true" in row["error"]
    accepted = cli("batch", tmp_path / "in", tmp_path / "out", "--spec", path, "--accept-guesses", "--json")
    assert accepted.exit_code == 0, accepted.output
    (row,) = json.loads(accepted.stdout)["files"]
    assert row["status"] == "converted" and row["end_to_end_error"] is None
    assert row["note"] == "only per-layer checks: no source model"
    human = cli("batch", tmp_path / "in", tmp_path / "out2", "--spec", path, "--accept-guesses")
    assert "warning: 1 file(s) had ONLY THE PER-LAYER CHECKS" in human.output and "m.pth" in human.output


def test_batch_with_a_source_model_reports_the_end_to_end_error(tmp_path, cli, models_py, old_model):
    (tmp_path / "in").mkdir()
    torch.save(old_model.Old().state_dict(), tmp_path / "in" / "m.pth")
    result = cli("batch", tmp_path / "in", tmp_path / "out", "--source-model", f"{models_py}:Old", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["files"]
    assert row["end_to_end_error"] is not None and row["end_to_end_error"] < 1e-12 and row["note"] is None
    human = cli("batch", tmp_path / "in", tmp_path / "out2", "--source-model", f"{models_py}:Old")
    assert "PER-LAYER" not in human.output
