"""Publication: temporary file beside the destination, fsync, check, then link (no force) or replace (force)."""

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import listing, sha, small_state

from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint
from deconv2shuffle.errors import CheckpointError, OutputExistsError
from deconv2shuffle.io.publish import FileSet, publish_bytes, publishing
from deconv2shuffle.io.tempfiles import Terminated, sweep, temp_path

ROOT = Path(__file__).resolve().parents[1]


def _partials(folder: Path) -> list[str]:
    return [n for n in listing(folder) if n.endswith(".partial")]


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("name", ["out.pth", "out.safetensors", "report.json"])
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path, umask, name, mask, mode):
    umask(mask)
    out = tmp_path / name
    if name == "report.json":
        publish_bytes(out, b"{}")
    else:
        save_checkpoint(out, small_state())
    assert stat.S_IMODE(out.stat().st_mode) == mode
    plain = tmp_path / "plain"
    with open(plain, "w"):
        pass
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_a_forced_overwrite_keeps_the_replaced_files_mode(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    save_checkpoint(out, small_state(), force=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_bytes() != b"old"


def test_without_force_an_existing_file_is_never_replaced(tmp_path):
    out = tmp_path / "report.md"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match=r"already exists; pass force=True"):
        publish_bytes(out, b"new")
    assert out.read_bytes() == b"keep" and _partials(tmp_path) == []
    publish_bytes(out, b"new", force=True)
    assert out.read_bytes() == b"new"


def test_protected_files_are_never_replaced_even_with_force(tmp_path):
    src = tmp_path / "in.pth"
    torch.save(small_state(), src)
    before = sha(src)
    with pytest.raises(OutputExistsError, match="is an input or an earlier output of this run"):
        publish_bytes(src, b"a report", force=True, protect=[src])
    link = tmp_path / "alias.pth"
    os.link(src, link)  # the same file under another name is still the input
    with pytest.raises(OutputExistsError, match="is an input"):
        publish_bytes(link, b"a report", force=True, protect=[src])
    assert sha(src) == before and _partials(tmp_path) == []


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink", "device"])
def test_non_regular_destinations_are_refused_even_with_force(tmp_path, kind):
    dest = tmp_path / "dest"
    if kind == "fifo":
        os.mkfifo(dest)
    elif kind == "folder":
        dest.mkdir()
    elif kind == "symlink":
        (tmp_path / "target").write_bytes(b"t")
        dest.symlink_to(tmp_path / "target")
    else:
        dest = Path("/dev/null")
    with pytest.raises(CheckpointError, match="refusing to replace it") as info:
        save_checkpoint(dest, small_state(), force=True)
    assert "\n" not in str(info.value)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(dest).st_mode)
    if kind == "symlink":
        assert os.path.islink(dest) and (tmp_path / "target").read_bytes() == b"t"
    if kind == "device":
        assert stat.S_ISCHR(os.lstat(dest).st_mode)
    assert _partials(tmp_path) == []


def test_the_race_without_force_is_lost_cleanly(tmp_path):
    """Deterministic: a competitor publishes the output while this run reads its temporary file back."""
    out = tmp_path / "out.safetensors"
    competitor = b"the other run's output"

    def race(key: str) -> bool:
        if not out.exists():
            publish_bytes(out, competitor)  # another run wins, between our check and our publication
        return True

    with pytest.raises(OutputExistsError, match="appeared while this run was writing it"):
        save_checkpoint(out, small_state(), check_values=race)
    assert out.read_bytes() == competitor
    assert _partials(tmp_path) == []


def test_a_file_set_is_published_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with FileSet(force=False) as files:
            for name in ("a", "b"):
                with files.write(tmp_path / name) as f:
                    f.write(name.encode())
            files.commit()
            raise RuntimeError("boom")  # after commit: the set stays
    assert listing(tmp_path) == ["a", "b"]
    (tmp_path / "d").write_bytes(b"in the way")
    with pytest.raises(OutputExistsError):
        with FileSet(force=False) as files:
            for name in ("c", "d"):
                with files.write(tmp_path / name) as f:
                    f.write(name.encode())
    assert listing(tmp_path) == ["a", "b", "d"]  # c was not published


def test_sigterm_while_publishing_raises_and_removes_the_temporary_file(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with publishing(tmp_path / "out.bin") as f:
            f.write(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    assert listing(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == previous
    assert isinstance(Terminated(), KeyboardInterrupt)


def test_temporary_names_are_recognisable_and_fit(tmp_path):
    tmp = temp_path(tmp_path / "model.pth")
    assert tmp.parent == tmp_path and tmp.name.startswith(".model.pth.") and tmp.name.endswith(".partial")
    assert f".{os.getpid()}." in tmp.name
    long = temp_path(tmp_path / ("x" * 250 + ".pth"))
    assert len(os.fsencode(long.name)) <= 255 and f".{os.getpid()}." in long.name


def test_only_dead_runs_leftovers_are_swept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: a leftover of a dead run
    dead = tmp_path / f".out.pth.{child.pid}.0123abcd.partial"
    alive = tmp_path / f".out.pth.{os.getpid()}.0123abcd.partial"  # a concurrent run (this one)
    other = tmp_path / ".out.pth.abc.partial"  # not our naming
    for p in (dead, alive, other):
        p.write_bytes(b"leftover")
    assert sweep(tmp_path) == [dead]
    assert sorted(listing(tmp_path)) == sorted([alive.name, other.name])
    dead.write_bytes(b"leftover")
    save_checkpoint(tmp_path / "out.pth", small_state())  # the next run sweeps too
    assert not dead.exists() and alive.exists()


def test_output_names_near_the_file_system_limit(tmp_path):
    ok = tmp_path / ("n" * 246 + ".pth")  # 250 bytes: its temporary name is shortened to fit
    save_checkpoint(ok, small_state())
    assert load_checkpoint(ok).state_dict.keys() == small_state().keys()
    for length in (256, 300):
        bad = tmp_path / ("n" * (length - 4) + ".pth")
        with pytest.raises(CheckpointError, match=f"name is {length} bytes, longer than this file system allows"):
            save_checkpoint(bad, small_state())
    assert _partials(tmp_path) == [] and listing(tmp_path) == [ok.name]


def test_a_control_character_in_an_output_name_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "evil\nname\x1b[2J.pth"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(bad, small_state())
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text and "control characters" in text
    assert listing(tmp_path) == []


def test_a_full_disk_on_torch_output_is_one_line_and_leaves_nothing(tmp_path):
    """A real short write (a file size limit makes the write fail like a full disk), in a subprocess."""
    src = tmp_path / "in.pth"
    torch.save({"w": torch.randn(300, 300)}, src)
    before = sha(src)
    script = (
        "import resource, signal, sys\n"
        "from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint\n"
        "from deconv2shuffle.errors import CheckpointError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "ck = load_checkpoint(sys.argv[1])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "for out in sys.argv[2:]:\n"
        "    try:\n"
        "        save_checkpoint(out, ck.state_dict, like=ck)\n"
        "    except CheckpointError as e:\n"
        "        print(e.exit_code, e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = [tmp_path / "out.pth", tmp_path / "out.safetensors"]
    done = subprocess.run([sys.executable, "-c", script, src, *outs], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(outs), done.stdout
    for out, line in zip(outs, lines, strict=True):
        assert line.startswith(f"2 {out}: write failed") and line.endswith("nothing was written"), line
    assert listing(tmp_path) == ["in.pth"] and sha(src) == before


def test_publication_without_force_is_a_link_that_fails_on_an_existing_name(tmp_path):
    """The last step itself cannot replace: even if the name appears after every check, link() refuses."""
    from deconv2shuffle.io.publish import _link_no_replace

    tmp, dest = tmp_path / ".x.partial", tmp_path / "x"
    tmp.write_bytes(b"ours")
    dest.write_bytes(b"theirs")
    with pytest.raises(OutputExistsError, match="appeared while this run was writing it"):
        _link_no_replace(tmp, dest)
    assert dest.read_bytes() == b"theirs" and tmp.read_bytes() == b"ours"
    dest.unlink()
    _link_no_replace(tmp, dest)
    assert dest.read_bytes() == b"ours" and not tmp.exists()


def test_publishing_does_not_import_torch():
    """The command line writes reports and specs through it at --help speed."""
    code = "import sys, deconv2shuffle.io.publish; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0
