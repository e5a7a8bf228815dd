"""Sharded safetensors: names from the output, index published last, nothing left on failure, bounded reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import listing, sha, small_state
from safetensors.torch import load_file, save_file

from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint
from deconv2shuffle.errors import CheckpointError
from deconv2shuffle.io import tempfiles

ROOT = Path(__file__).resolve().parents[1]


def _sharded(folder: Path, name: str = "model", parts: int = 2) -> Path:
    state = small_state()
    keys = list(state)
    weight_map = {}
    for i in range(parts):
        shard = f"{name}-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: state[k] for k in keys[i::parts]}
        save_file(chunk, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, shard))
    index = folder / f"{name}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def _changed(state: dict) -> dict:
    return {k: v + 1 for k, v in state.items()}


def _fingerprint(folder: Path) -> dict[str, str]:
    return {n: sha(folder / n) for n in listing(folder)}


def test_shard_names_come_from_the_output_not_the_input(tmp_path):
    index = _sharded(tmp_path)
    before = _fingerprint(tmp_path)
    ck = load_checkpoint(index)
    written = save_checkpoint(tmp_path / "new.safetensors.index.json", _changed(ck.state_dict), like=ck, force=True)
    assert [p.name for p in written] == [
        "new.safetensors.index.json",
        "new-00001-of-00002.safetensors",
        "new-00002-of-00002.safetensors",
    ]
    assert {n: h for n, h in _fingerprint(tmp_path).items() if n in before} == before  # the input untouched
    back = load_checkpoint(tmp_path / "new.safetensors.index.json").state_dict
    assert all(torch.equal(back[k], v + 1) for k, v in ck.state_dict.items())
    assert load_checkpoint(index).state_dict.keys() == ck.state_dict.keys()


def test_in_place_force_replaces_the_index_last_and_removes_the_old_shards(tmp_path):
    index = _sharded(tmp_path)
    ck = load_checkpoint(index)
    new = _changed(ck.state_dict)
    written = save_checkpoint(index, new, like=ck, force=True)
    names = sorted(p.name for p in written)
    assert listing(tmp_path) == names  # the old shards are gone, nothing else is left
    assert all(n.startswith("model-0000") for n in names if n.endswith(".safetensors"))
    back = load_checkpoint(index).state_dict
    assert all(torch.equal(back[k], v) for k, v in new.items())
    # and once more in place: the names alternate back, the folder stays clean
    ck2 = load_checkpoint(index)
    save_checkpoint(index, _changed(ck2.state_dict), like=ck2, force=True)
    assert len(listing(tmp_path)) == 3 and not [n for n in listing(tmp_path) if n.endswith(".partial")]


@pytest.mark.parametrize("fail_at", ["second shard", "index"])
def test_a_failure_leaves_the_input_loading_and_no_new_file(tmp_path, monkeypatch, fail_at):
    import deconv2shuffle.io.publish as publish

    index = _sharded(tmp_path)
    before = _fingerprint(tmp_path)
    ck = load_checkpoint(index)
    real = publish.FileSet._publish
    calls = []

    def failing(self, dest, tmp, protect, inputs):
        calls.append(dest.name)
        if (fail_at == "index" and dest.name.endswith(".json")) or (fail_at == "second shard" and len(calls) == 2):
            raise OSError(28, "No space left on device")
        return real(self, dest, tmp, protect, inputs)

    monkeypatch.setattr(publish.FileSet, "_publish", failing)
    with pytest.raises(CheckpointError, match="No space left on device.*nothing was written"):
        save_checkpoint(index, _changed(ck.state_dict), like=ck, force=True)
    assert _fingerprint(tmp_path) == before  # every new shard and temporary file removed, the input intact
    assert load_checkpoint(index).state_dict.keys() == ck.state_dict.keys()


def test_a_dead_runs_published_shards_are_removed_by_the_next_run(tmp_path):
    """SIGKILL after shards were published but before the index: the journal lets the next run undo them."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    orphan = tmp_path / "new-00001-of-00001.safetensors"
    orphan.write_bytes(b"published by a run that died")
    kept = tmp_path / "kept-00001-of-00001.safetensors"
    kept.write_bytes(b"its index made it")
    (tmp_path / "kept.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": kept.name}}))
    for index, shard in (("new.safetensors.index.json", orphan), ("kept.safetensors.index.json", kept)):
        journal = tmp_path / f".{index}.{child.pid}.0123abcd.journal.partial"
        tempfiles.write_journal(journal, index, {shard.name: shard.stat().st_ino})
    removed = tempfiles.sweep(tmp_path)
    assert orphan in removed and not orphan.exists()
    assert kept.exists() and kept not in removed
    assert listing(tmp_path) == ["kept-00001-of-00001.safetensors", "kept.safetensors.index.json"]


def test_a_shard_linked_from_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file(small_state(), outside / "secret.safetensors")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "s.safetensors").symlink_to(outside / "secret.safetensors")
    index = folder / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(small_state(), "s.safetensors")}))
    with pytest.raises(CheckpointError, match="a link to a file outside the index's folder"):
        load_checkpoint(index)
    # a link that stays inside the folder is fine
    (folder / "s.safetensors").unlink()
    save_file(small_state(), folder / "real.safetensors")
    (folder / "s.safetensors").symlink_to("real.safetensors")
    assert load_checkpoint(index).state_dict.keys() == small_state().keys()


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (b"{" + b'"a":' * 1 + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a valid safetensors index"),
        (b'{"weight_map": {"a": "../x.safetensors"}}', "outside the index's folder"),
        (b'{"weight_map": {"a": "sub/x.safetensors"}}', "outside the index's folder"),
        (b'{"weight_map": {"a": "/etc/passwd"}}', "outside the index's folder"),
        (b'{"weight_map": {"a": "x\\nname.safetensors"}}', "outside the index's folder"),
        (b'{"weight_map": {"a": 3}}', "needs a 'weight_map'"),
        (b'{"weight_map": {"a": "."}}', "outside the index's folder"),
        (b'{"weight_map": [1]}', "needs a 'weight_map'"),
        (b'{"weight_map": {"a": "m.safetensors.index.json"}}', "is not a safetensors file"),
    ],
)
def test_malformed_indexes_are_one_line(tmp_path, index, match):
    path = tmp_path / "m.safetensors.index.json"
    path.write_bytes(index)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_more_shards_than_the_open_file_limit(tmp_path):
    """Each shard holds no descriptor once read: 150 shards load and write under a limit of 64 open files."""
    state = {f"layer.{i}.weight": torch.full((2,), float(i)) for i in range(150)}
    weight_map = {}
    for i, (key, t) in enumerate(state.items()):
        shard = f"m-{i:05d}.safetensors"
        save_file({key: t}, tmp_path / shard)
        weight_map[key] = shard
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint\n"
        "ck = load_checkpoint(sys.argv[1])\n"
        "save_checkpoint(sys.argv[2], ck.state_dict, like=ck)\n"
        "print(len(load_checkpoint(sys.argv[2]).state_dict))\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [tmp_path / "m.safetensors.index.json", out / "n.safetensors.index.json"]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "150"
    assert len(listing(out)) == 151
    assert torch.equal(load_file(out / "n-00150-of-00150.safetensors")["layer.149.weight"], state["layer.149.weight"])


def test_a_dead_runs_replaced_shards_are_removed_once_its_index_is_in_place(tmp_path):
    """SIGKILL after the new index was published but before the old shards were removed."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    new_shard, old_shard = tmp_path / "m-00001-of-00001.ab12cd34.safetensors", tmp_path / "m-00001-of-00001.safetensors"
    new_shard.write_bytes(b"new")
    old_shard.write_bytes(b"old")
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": new_shard.name}}))
    journal = tmp_path / f".{index.name}.{child.pid}.0123abcd.journal.partial"
    tempfiles.write_journal(
        journal, index.name, {new_shard.name: new_shard.stat().st_ino}, {old_shard.name: old_shard.stat().st_ino}
    )
    assert tempfiles.sweep(tmp_path) == [old_shard, journal]
    assert listing(tmp_path) == [new_shard.name, index.name]
