"""--report is checked like an output: never an input or the output, never a non-regular file,
never an existing file without --force, and a failed run never replaces what it refused."""

import json
import os

import pytest
import torch
from conftest import SPEC, sha, small_state

from deconv2shuffle.errors import OutputExistsError, UsageError
from deconv2shuffle.pipeline import migrate


@pytest.fixture
def run(tmp_path):
    torch.save(small_state(), tmp_path / "old.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    return tmp_path


def _state(tmp_path):
    return {p.name: sha(p) for p in sorted(tmp_path.iterdir()) if p.is_file()}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize(
    ("report", "match"),
    [
        ("old.pth", "would replace an input of this run"),
        ("s.toml", "would replace an input of this run"),
        ("new.pth", "would replace an output of this run"),
    ],
)
def test_report_never_replaces_an_input_or_the_output(run, cli, report, match, force):
    before = _state(run)
    extra = ["--force"] if force else []
    result = cli(
        "migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / report, *extra
    )
    assert result.exit_code == 2, result.output
    assert match in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert _state(run) == before  # nothing written, nothing replaced
    assert not (run / "new.pth").exists()


def test_report_refuses_an_existing_file_without_force_before_any_work(run, cli, monkeypatch):
    (run / "r.json").write_text("my notes")
    import deconv2shuffle.pipeline.files as files

    monkeypatch.setattr(files, "load_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was read"))
    result = cli("migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / "r.json")
    assert result.exit_code == 2 and "r.json: already exists; pass --force" in result.output, result.output
    assert (run / "r.json").read_text() == "my notes" and not (run / "new.pth").exists()


def test_report_replaces_an_existing_file_with_force(run, cli):
    (run / "r.json").write_text("old report")
    argv = ["migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / "r.json"]
    result = cli(*argv, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "r.json").read_text())["ok"] is True


def test_a_failed_run_never_replaces_the_file_it_refused(run, cli):
    """new.pth exists: the run refuses it; the report names new.pth too and must not replace it."""
    (run / "new.pth").write_bytes(b"precious")
    result = cli("migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / "new.pth")
    assert result.exit_code == 2, result.output
    assert (run / "new.pth").read_bytes() == b"precious"
    # a report elsewhere records the refusal, and still leaves new.pth alone
    result = cli("migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / "r.json")
    assert result.exit_code == 2 and "already exists" in result.output
    assert (run / "new.pth").read_bytes() == b"precious"
    assert json.loads((run / "r.json").read_text())["ok"] is False


def test_report_refuses_a_fifo_and_a_folder_even_with_force(run, cli):
    os.mkfifo(run / "pipe")
    (run / "dir").mkdir()
    for place, match in (("pipe", "not a regular file"), ("dir", "is a folder")):
        argv = ["migrate", run / "old.pth", run / "new.pth", "--spec", run / "s.toml", "--report", run / place]
        result = cli(*argv, "--force")
        assert result.exit_code == 2 and match in result.output, result.output
        assert not (run / "new.pth").exists()
    assert (run / "pipe").is_fifo() and (run / "dir").is_dir()


def test_report_refuses_a_shard_of_a_sharded_input(tmp_path):
    from safetensors.torch import save_file

    state = small_state()
    keys = list(state)
    save_file({k: state[k] for k in keys[:2]}, tmp_path / "m-1.safetensors")
    save_file({k: state[k] for k in keys[2:]}, tmp_path / "m-2.safetensors")
    weight_map = {k: "m-1.safetensors" if i < 2 else "m-2.safetensors" for i, k in enumerate(keys)}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "s.toml").write_text(SPEC)
    before = sha(tmp_path / "m-2.safetensors")
    with pytest.raises(UsageError, match="would replace an input"):
        migrate(
            tmp_path / "m.safetensors.index.json",
            tmp_path / "new.safetensors",
            spec=tmp_path / "s.toml",
            report_path=tmp_path / "m-2.safetensors",
            force=True,
        )
    assert sha(tmp_path / "m-2.safetensors") == before and not (tmp_path / "new.safetensors").exists()


def test_report_refuses_the_model_file(run, models_py):
    before = sha(models_py)
    with pytest.raises(UsageError, match="would replace an input"):
        migrate(
            run / "old.pth",
            run / "new.pth",
            source_model=f"{models_py}:Old",
            report_path=models_py,
            force=True,
        )
    assert sha(models_py) == before


def test_publish_file_checks_again_just_before_the_rename(tmp_path, monkeypatch):
    """A file that appears while the report is being written is not replaced."""
    import deconv2shuffle.pipeline.files as files
    from deconv2shuffle.pipeline.files import publish_file

    target = tmp_path / "r.json"
    real = files.atomic_file

    def racing(path, check=None):
        target.write_text("appeared meanwhile")
        return real(path, check)

    monkeypatch.setattr(files, "atomic_file", racing)
    with pytest.raises(OutputExistsError, match="already exists"):
        publish_file(target, b"{}")
    assert target.read_text() == "appeared meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_check_new_file_sees_through_symlinks(tmp_path):
    from deconv2shuffle.pipeline.files import check_new_file

    (tmp_path / "in.pth").write_bytes(b"x")
    (tmp_path / "link.json").symlink_to(tmp_path / "in.pth")
    with pytest.raises(UsageError, match="would replace an input"):
        check_new_file(tmp_path / "link.json", inputs=[tmp_path / "in.pth"], force=True)
    assert check_new_file(tmp_path / "free.json", inputs=[tmp_path / "in.pth"]) == tmp_path / "free.json"
