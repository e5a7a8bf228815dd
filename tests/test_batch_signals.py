"""Stopping a batch: SIGINT and SIGTERM on a real `batch --jobs 2` process, SIGKILL of the batch
process, and the same stop inside one process."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SPEC, small_state

from deconv2shuffle.pipeline import run_batch

ROOT = Path(__file__).resolve().parents[1]
FILES = 40


def _inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(FILES):
        torch.save(small_state(), src / f"m{i:02d}.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    return src


def _children(pid):
    """(pid, command line) of every process whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry), cmdline))
    return found


def _running(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_stops_a_parallel_batch_at_once_and_a_rerun_converts_the_rest(tmp_path, cli, sig):
    src, out, report = _inputs(tmp_path), tmp_path / "out", tmp_path / "r.json"
    argv = [sys.executable, "-m", "deconv2shuffle", "batch", str(src), str(out), "--spec", str(tmp_path / "s.toml")]
    argv += ["--jobs", "2", "--report", str(report)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # mid-run: both workers up and a few files written (the first results have reached the batch: an output
        # published by a worker an instant before the signal is rightly reported as interrupted and redone)
        started = _wait_until(lambda: len(list(out.glob("*.pth"))) >= 3 or proc.poll() is not None, 180)
        workers = [pid for pid, cmd in _children(proc.pid) if "spawn_main" in cmd]
        assert started and proc.poll() is None and len(workers) == 2, (workers, proc.poll())
        helpers = [pid for pid, _ in _children(proc.pid)]
        sent = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    if sig == signal.SIGKILL:
        assert proc.returncode == -9
        # the workers learn that the batch died (PR_SET_PDEATHSIG), clean up and exit
        assert _wait_until(lambda: not any(map(_running, workers)), 5), "workers kept running without the batch"
    else:
        assert proc.returncode == 128 + sig, stderr
        assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
        assert not any(map(_running, workers)), "a worker outlived the batch"
        assert f"interrupted by {sig.name}" in stderr and "no partial output" in stderr
        data = json.loads(report.read_text())
        assert data["stopped_by"] == sig.name and data["ok"] is False
        done = [f for f in data["files"] if f["status"] == "converted"]
        assert done and data["interrupted"] == FILES - len(done), data
        for f in done:
            assert "up.conv.weight" in torch.load(f["output"], weights_only=True)
    assert _wait_until(lambda: not any(map(_running, helpers)), 5), "a helper process outlived the batch"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    for path in out.glob("*.pth"):  # every output there is complete
        assert "up.conv.weight" in torch.load(path, weights_only=True)
    if sig == signal.SIGKILL:
        return  # no report, no resume line; what a killed worker leaves is its own claim (tested below)
    line = next(x for x in stderr.splitlines() if "to resume: " in x)
    rerun = shlex.split(line.split("to resume: ", 1)[1])[1:]  # the printed command, run here
    assert "--report" in rerun and str(report) not in rerun
    result = cli(*rerun, "--json", "--jobs", "1")  # in this process: no second start of the workers
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["converted"] + again["skipped"] == FILES and again["converted"] < FILES
    assert len(list(out.glob("*.pth"))) == FILES


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_stops_a_batch_in_one_process(tmp_path, sig):
    """jobs=1: the file being converted unwinds (its temporary file goes), the rest never start."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        torch.save(small_state(), src / f"m{i}.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop_after_first(r):
        os.kill(os.getpid(), sig)

    result = run_batch(
        src, tmp_path / "out", spec=tmp_path / "s.toml", report_path=tmp_path / "r.json", on_file=stop_after_first
    )
    assert result.stopped_by == sig.name and not result.ok
    assert [f.status for f in result.files] == ["converted", "interrupted", "interrupted", "interrupted"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".deconv2shuffle", "m0.pth"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["converted"] == 1 and data["interrupted"] == 3 and data["stopped_by"] == sig.name
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are put back


def test_a_signal_during_a_conversion_leaves_no_partial_file(tmp_path, monkeypatch):
    """The signal lands while the output is being written: the temporary file is removed."""
    import deconv2shuffle.checkpoint as checkpoint

    src = tmp_path / "in"
    src.mkdir()
    torch.save(small_state(), src / "m.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    real_save = checkpoint.torch.save

    def save_then_signal(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint.torch, "save", save_then_signal)
    result = run_batch(src, tmp_path / "out", spec=tmp_path / "s.toml")
    assert result.stopped_by == "SIGTERM" and [f.status for f in result.files] == ["interrupted"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".deconv2shuffle"]
    monkeypatch.undo()
    again = run_batch(src, tmp_path / "out", spec=tmp_path / "s.toml")
    assert again.count("converted") == 1  # the claim left behind is the batch's own: no force needed
