"""Killed at random moments, a save leaves the old output, no output, or the complete new one; never a part.

One helper process imports torch once and forks a child per run; the test kills each child at a random
moment with SIGTERM or SIGKILL, then checks the files. Runs save_checkpoint on a 52 MB state dict: single file
and sharded, in place with force and to a new name without force, 24 kills in all.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import listing, sha
from safetensors.torch import save_file

from deconv2shuffle.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KILLS_PER_SCENARIO = 6

ZYGOTE = r"""
import os, sys, torch
torch.set_num_threads(1)
from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint
for line in sys.stdin:
    src, dst, force = line.rstrip("\n").split("\t")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ck = load_checkpoint(src)
            new = {k: v + 1 for k, v in ck.state_dict.items()}
            save_checkpoint(dst, new, like=ck, force=force == "1", check_values=lambda key: True)
            code = 0
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"block.{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(13)}  # 52 MiB


def _write_input(folder: Path, sharded: bool) -> Path:
    state = _state()
    if not sharded:
        path = folder / "model.safetensors"
        save_file(state, path)
        return path
    weight_map = {}
    keys = list(state)
    for i in range(3):
        shard = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: state[k] for k in keys[i::3]}, folder / shard)
        weight_map.update(dict.fromkeys(keys[i::3], shard))
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    return path


def _files_of(path: Path) -> list[Path]:
    """The checkpoint's files (an index and its shards), or [] when absent."""
    if not path.exists():
        return []
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        return [path] + sorted({path.parent / s for s in weight_map.values()})
    return [path]


def _digest(path: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in _files_of(path)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def _is(path: Path, expected: dict[str, torch.Tensor]) -> bool:
    got = load_checkpoint(path).state_dict
    return got.keys() == expected.keys() and all(torch.equal(_bits(got[k]), _bits(v)) for k, v in expected.items())


class Zygote:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, src: Path, dst: Path, force: bool, kill_after: float | None, sig: int) -> int:
        """Start a save in a fresh child; kill it after ``kill_after`` seconds (None: let it finish)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{src}\t{dst}\t{int(force)}\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # it finished (and was reaped) before the moment came
                pass
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place-force", "new-name"])
def test_random_kills_leave_old_none_or_complete(tmp_path, zygote, sharded, in_place):
    rng = random.Random(f"{sharded}{in_place}")
    src = _write_input(tmp_path, sharded)
    current = load_checkpoint(src).state_dict  # what the input holds now
    dst = src if in_place else tmp_path / src.name.replace("model", "new")
    # one undisturbed run, to know how long a run takes
    started = time.monotonic()
    assert zygote.run(src, dst, in_place, None, 0) == 0
    duration = time.monotonic() - started
    if in_place:
        current = {k: v + 1 for k, v in current.items()}
    assert _is(dst, {k: v + (0 if in_place else 1) for k, v in current.items()})
    outcomes = {"old": 0, "absent": 0, "complete": 0}
    for trial in range(KILLS_PER_SCENARIO):
        if not in_place:  # a user removing the finished output: the next run writes it anew, without force
            for p in _files_of(dst):
                p.unlink()
        before = _digest(src)
        sig = signal.SIGTERM if trial % 2 == 0 else signal.SIGKILL
        status = zygote.run(src, dst, in_place, rng.uniform(0.05, 1.1) * duration, sig)
        new = {k: v + 1 for k, v in current.items()}
        if in_place:
            if _digest(src) == before:
                outcomes["old"] += 1
            else:
                assert _is(src, new), f"trial {trial}: the in-place output is neither the old nor the new"
                outcomes["complete"] += 1
                current = new
        else:
            assert _digest(src) == before, f"trial {trial}: the input changed"
            if not dst.exists():
                outcomes["absent"] += 1
            else:
                assert _is(dst, new), f"trial {trial}: the output is incomplete"
                outcomes["complete"] += 1
        assert status == 0 or os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 1, status
    # the next run sweeps every leftover: afterwards the folder holds the checkpoints and nothing else
    if not in_place:
        for p in _files_of(dst):
            p.unlink()
    assert zygote.run(src, dst, in_place, None, 0) == 0
    expected = sorted({p.name for p in _files_of(src) + _files_of(dst)})
    assert listing(tmp_path) == expected, outcomes
    assert sum(outcomes.values()) == KILLS_PER_SCENARIO
