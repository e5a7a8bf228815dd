"""batch planning: output collisions, up to date by recorded identity, outputs it did not write,
sidecar models never imported when models are given, --report checks, migrate's options per file."""

import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from conftest import MODELS_PY, SPEC, listing, sha, small_state


def _folder(tmp_path, names=("a.pth",)):
    src = tmp_path / "in"
    src.mkdir()
    for name in names:
        torch.save(small_state(), src / name)
    (tmp_path / "s.toml").write_text(SPEC)
    return src


def _batch(cli, src, out, *extra):
    result = cli("batch", src, out, "--spec", src.parent / "s.toml", "--json", *extra)
    return result, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else None)


def test_output_collisions_are_refused_with_both_names(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    torch.save(small_state(), src / "gen.pth")
    torch.save({"state_dict": small_state()}, src / "gen.ckpt")
    torch.save(small_state(), src / "other.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    result, data = _batch(cli, src, tmp_path / "out", "--to", "safetensors")
    assert result.exit_code == 1, result.output
    status = {os.path.basename(f["input"]): (f["status"], f["error"]) for f in data["files"]}
    assert status["other.pth"] == ("converted", None)
    for name in ("gen.pth", "gen.ckpt"):
        state, error = status[name]
        assert state == "failed" and "\n" not in error
        assert str(src / "gen.pth") in error and str(src / "gen.ckpt") in error and "neither was converted" in error
    assert not (tmp_path / "out" / "gen.safetensors").exists()
    assert data["converted"] == 1 and data["failed"] == 2


def test_an_input_replaced_with_the_same_mtime_is_converted_again(tmp_path, cli):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    torch.save({k: v.clone() for k, v in small_state().items()}, src / "a.pth")
    assert _batch(cli, src, out)[1]["converted"] == 1
    old = os.stat(src / "a.pth")
    state = {k: v.clone() + 1 for k, v in small_state().items()}
    torch.save(state, tmp_path / "b.pth")
    os.replace(tmp_path / "b.pth", src / "a.pth")
    os.utime(src / "a.pth", ns=(old.st_atime_ns, old.st_mtime_ns))  # cp -p, rsync -t: the same mtime
    assert os.stat(src / "a.pth").st_size == old.st_size  # same size, same mtime, other content
    _, data = _batch(cli, src, out)
    assert data["converted"] == 1 and data["skipped"] == 0
    new = torch.load(out / "a.pth", weights_only=True)
    torch.testing.assert_close(new["head.weight"], state["head.weight"])


def test_an_input_replaced_during_its_conversion_is_redone_next_run(tmp_path, cli, monkeypatch):
    """The input is swapped while the batch reads it: the output holds the old content, and the
    next run must not call it up to date (the old mtime rule did: the output is newer)."""
    import deconv2shuffle.pipeline.files as files

    src = _folder(tmp_path)
    out = tmp_path / "out"
    state = {k: v * 3 for k, v in small_state().items()}
    torch.save(state, tmp_path / "new.pth")
    real, swapped = files.ReadOptions.load, []

    def load_then_swap(self, path):
        ckpt = real(self, path)
        if not swapped:
            os.replace(tmp_path / "new.pth", src / "a.pth")
            swapped.append(path)
        return ckpt

    monkeypatch.setattr(files.ReadOptions, "load", load_then_swap)
    assert _batch(cli, src, out)[1]["converted"] == 1
    assert swapped
    monkeypatch.undo()
    _, data = _batch(cli, src, out)
    assert data["converted"] == 1, data
    torch.testing.assert_close(torch.load(out / "a.pth", weights_only=True)["head.weight"], state["head.weight"])
    assert _batch(cli, src, out)[1]["skipped"] == 1  # and now it is up to date


@pytest.mark.parametrize(
    ("change", "extra"),
    [("options", ["--drop", "^tail\\."]), ("spec", []), ("output", [])],
)
def test_changed_options_spec_or_output_make_an_output_stale(tmp_path, cli, change, extra):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    assert _batch(cli, src, out)[1]["converted"] == 1
    assert _batch(cli, src, out)[1]["skipped"] == 1
    if change == "spec":
        (tmp_path / "s.toml").write_text(SPEC + "# edited\n")
    if change == "output":
        (out / "a.pth").write_bytes(b"damaged")
    _, data = _batch(cli, src, out, *extra)
    assert data["converted"] == 1, data
    keys = set(torch.load(out / "a.pth", weights_only=True))
    assert ("tail.weight" in keys) == (change != "options")


def test_an_output_the_batch_did_not_write_is_replaced_only_with_force(tmp_path, cli):
    src = _folder(tmp_path, ("a.pth", "b.pth"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.pth").write_bytes(b"someone else's file")
    result, data = _batch(cli, src, out)
    assert result.exit_code == 1
    failed = next(f for f in data["files"] if f["status"] == "failed")
    assert failed["input"] == str(src / "a.pth") and "no record says this batch wrote it" in failed["error"]
    assert (out / "a.pth").read_bytes() == b"someone else's file"
    assert data["converted"] == 1  # b.pth
    result, data = _batch(cli, src, out, "--force")
    assert result.exit_code == 0 and data["converted"] == 2
    assert "up.conv.weight" in torch.load(out / "a.pth", weights_only=True)


def test_records_live_in_one_hidden_folder_and_are_never_inputs(tmp_path, cli):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    _batch(cli, src, out)
    record = json.loads((out / ".deconv2shuffle" / "a.pth.json").read_text())
    assert record["inputs"][str(src / "a.pth")][0] == os.path.getsize(src / "a.pth")
    assert record["output"][0] == os.path.getsize(out / "a.pth")
    # the output folder used as an input folder: the records are not checkpoints
    result, data = _batch(cli, out, tmp_path / "again", "--recursive")
    assert [os.path.basename(f["input"]) for f in data["files"]] == ["a.pth"]


def test_explicit_models_override_a_sidecar_models_table_without_importing_it(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "models.py").write_text(MODELS_PY)
    marker = tmp_path / "imported"
    (src / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n{MODELS_PY}")
    torch.manual_seed(0)
    ns: dict = {}
    exec(MODELS_PY, ns)
    torch.save(ns["Old"]().state_dict(), src / "gen.pth")
    sidecar = SPEC + 'target = "up.0"\n[models]\nsource = "evil.py:Old"\ntarget = "evil.py:New"\n'
    (src / "gen.toml").write_text(sidecar)
    models = tmp_path / "models.py"
    for i, given in enumerate([["--source-model", f"{models}:Old"], ["--target-model", f"{models}:New"], []]):
        both = ["--source-model", f"{models}:Old", "--target-model", f"{models}:New"]
        result = cli("batch", src, tmp_path / f"out{i}", "--json", *(given or both))
        assert not marker.exists(), f"the sidecar's model file was imported ({given or both})"
        if not given:
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["converted"] == 1
    result = cli("batch", src, tmp_path / "out9", "--json")  # no models given: the sidecar's are used
    assert marker.exists() and json.loads(result.stdout)["converted"] == 1


@pytest.mark.parametrize("where", ["input", "spec", "output", "record"])
def test_batch_report_never_replaces_a_file_the_batch_reads_or_writes(tmp_path, cli, where):
    src = _folder(tmp_path, ("a.pth", "b.pth"))
    out = tmp_path / "out"
    _batch(cli, src, out, "--glob", "b.pth")  # b is converted: its output and record exist
    target = {
        "input": src / "a.pth",
        "spec": tmp_path / "s.toml",
        "output": out / "b.pth",
        "record": out / ".deconv2shuffle" / "b.pth.json",
    }[where]
    before = sha(target)
    result, _ = _batch(cli, src, out, "--report", target, "--force")
    assert result.exit_code == 2, result.output
    assert "would replace an" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert json.loads(result.stdout)["ok"] is False
    assert sha(target) == before
    assert not (out / "a.pth").exists()  # refused before any work


def test_batch_report_refuses_an_existing_file_before_any_work(tmp_path, cli):
    src = _folder(tmp_path)
    (tmp_path / "r.json").write_text("notes")
    result, _ = _batch(cli, src, tmp_path / "out", "--report", tmp_path / "r.json")
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    assert (tmp_path / "r.json").read_text() == "notes" and not (tmp_path / "out").exists()


def test_dry_run_checks_every_file_and_writes_nothing(tmp_path, cli):
    src = _folder(tmp_path, ("a.pth", "b.pth"))
    result, data = _batch(cli, src, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert [f["status"] for f in data["files"]] == ["checked", "checked"] and data["checked"] == 2
    assert all(f["layers"] == 1 and f["exact"] for f in data["files"])
    assert not (tmp_path / "out").exists()


def test_rename_and_drop_apply_to_every_file(tmp_path, cli):
    src = _folder(tmp_path, ("a.pth", "b.pth"))
    result, data = _batch(cli, src, tmp_path / "out", "--rename", "^head\\.=stem.", "--drop", "^tail\\.")
    assert result.exit_code == 0 and data["converted"] == 2, result.output
    for name in ("a.pth", "b.pth"):
        keys = set(torch.load(tmp_path / "out" / name, weights_only=True))
        assert keys == {"stem.weight", "stem.bias", "up.conv.weight", "up.conv.bias"}


# option -> (the migrate keyword it becomes, the value migrate gets)
FORWARDED = {
    "--approx": ("approx", True),
    "--allow-missing": ("allow_missing", True),
    "--drop-unexpected": ("drop_unexpected", True),
    "--no-hash": ("hash_source", False),
    "--trust-pickle": ("trust_pickle", True),
    "--allow-global=argparse.Namespace": ("allow_globals", ["argparse.Namespace"]),
    "--tolerance=1e-3": ("tolerance", 1e-3),
    "--input-shape=1,3,8,8": ("input_shape", [1, 3, 8, 8]),
    "--rename=^a=b": ("rename", [("^a", "b")]),
    "--drop=^x": ("drop", ["^x"]),
    "--state-dict-key=sd": ("state_dict_key", "sd"),
    "--accept-guesses": ("accept_guesses", True),
    "--example-inputs=pkg.mod:make_inputs": ("example_inputs", "pkg.mod:make_inputs"),
}


def test_training_checkpoints_named_pth_tar_are_found_and_keep_their_name(tmp_path, cli):
    src = _folder(tmp_path, ("model_best.pth.tar", "b.pth"))
    result, data = _batch(cli, src, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(Path(f["output"]).name for f in data["files"]) == ["b.pth", "model_best.pth.tar"]
    assert (tmp_path / "out" / "model_best.pth.tar").is_file()


@pytest.mark.parametrize("option", FORWARDED)
def test_every_per_file_option_reaches_migrate(tmp_path, cli, monkeypatch, option):
    import deconv2shuffle.pipeline.batch_work as work

    seen = []

    def fake_migrate(src, dst, **kwargs):
        seen.append(kwargs)
        raise work.Deconv2ShuffleError("stop here")

    monkeypatch.setattr(work, "migrate", fake_migrate)
    src = _folder(tmp_path)
    _batch(cli, src, tmp_path / "out", option)
    name, value = FORWARDED[option]
    assert seen and seen[0][name] == value, seen


def test_shard_help_says_it_counts_from_zero(cli):
    result = cli("batch", "--help")
    assert "0-based" in result.output and "0 <= I < N" in result.output


def test_resume_command_drops_force_and_picks_a_free_report(tmp_path):
    from deconv2shuffle.cli.batch import resume_command

    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "r.2.json").write_text("{}")
    params = {
        "in_dir": tmp_path / "in dir",
        "out_dir": tmp_path / "out",
        "force": True,
        "jobs": 2,
        "drop": ["^x", "^y"],
        "recursive": True,
        "tolerance": 1e-10,
        "to": "same",
    }
    argv = shlex.split(resume_command(params, tmp_path / "r.json"))
    assert argv[:4] == ["deconv2shuffle", "batch", str(tmp_path / "in dir"), str(tmp_path / "out")]
    assert "--force" not in argv and "--to" not in argv and "--tolerance" not in argv
    assert argv[4:] == [
        "--recursive",
        "--jobs",
        "2",
        "--drop",
        "^x",
        "--drop",
        "^y",
        "--report",
        str(tmp_path / "r.3.json"),
    ]


def test_listing_of_out_shows_only_outputs_and_the_record_folder(tmp_path, cli):
    src = _folder(tmp_path, ("a.pth", "b.pth"))
    _batch(cli, src, tmp_path / "out")
    assert listing(tmp_path / "out") == [".deconv2shuffle", "a.pth", "b.pth"]
