"""The hostile-input corpus, through the command line: each case exits 2 with one line naming the file, writes
nothing, leaves the input untouched, and costs well under a second of CPU and no memory to speak of."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_state
from hostile import safetensors_files, torch_files
from safetensors.torch import load_file, save_file

from deconv2shuffle.io.formats import show

ROOT = Path(__file__).resolve().parents[1]
SPEC = 'version = 1\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n'
CPU_LIMIT_S = 1.0
PEAK_LIMIT_MB = 100


def _case(root: Path, name: str) -> Path:
    folder = root / f"case{len(list(root.iterdir())):03d}"
    folder.mkdir()
    return folder


def _build(root: Path) -> tuple[list[dict], dict[str, Path]]:
    """Every case: (manifest entries, case name -> the path its message must name)."""
    spec = root.parent / "spec.toml"
    spec.write_text(SPEC)
    cases: list[dict] = []
    about: dict[str, Path] = {}

    def add(name: str, src: Path, out: Path, *extra: str, names: Path | None = None) -> None:
        cases.append({"name": name, "input": str(src), "output": str(out), "args": ["--spec", str(spec), *extra]})
        about[name] = names or src

    for name, (write, _) in torch_files.CASES.items():
        folder = _case(root, name)
        write(folder / "in.pth")
        add(f"torch: {name}", folder / "in.pth", folder / "out.pth")
    for name, build in safetensors_files.CASES.items():
        folder = _case(root, name)
        (folder / "in.safetensors").write_bytes(build())
        try:
            load_file(folder / "in.safetensors")
            continue  # the library loads it: not hostile (test_io_safetensors holds us to the same verdict)
        except Exception:
            pass
        add(f"safetensors: {name}", folder / "in.safetensors", folder / "out.safetensors")
    folder = _case(root, "huge header")
    safetensors_files.write_huge_header_claim(folder / "in.safetensors")
    add("safetensors: header over 100 MB", folder / "in.safetensors", folder / "out.safetensors")
    _indexes(root, add)
    _names(root, add)
    return cases, about


def _indexes(root: Path, add) -> None:
    outside = root / "outside.safetensors"
    save_file(small_state(), outside)
    folder = _case(root, "link")
    (folder / "s.safetensors").symlink_to(outside)
    (folder / "m.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(small_state(), "s.safetensors")})
    )
    add("index: shard linked from outside", folder / "m.safetensors.index.json", folder / "o.safetensors.index.json")
    folder = _case(root, "deep")
    (folder / "m.safetensors.index.json").write_bytes(b'{"weight_map":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    add("index: JSON nested 100k deep", folder / "m.safetensors.index.json", folder / "o.safetensors.index.json")
    folder = _case(root, "big")
    with (folder / "m.safetensors.index.json").open("wb") as f:  # sparse: no disk space used
        f.write(b'{"weight_map": {}, "pad": "')
        f.seek(101_000_000)
        f.write(b'"}')
    add("index: over 100 MB", folder / "m.safetensors.index.json", folder / "o.safetensors.index.json")
    folder = _case(root, "utf8")
    (folder / "m.safetensors.index.json").write_bytes(b'{"weight_map": {"a\xff": "x"}}')
    add("index: not UTF-8", folder / "m.safetensors.index.json", folder / "o.safetensors.index.json")


def _names(root: Path, add) -> None:
    def good(folder: Path, name: str = "in.pth") -> Path:
        torch.save(small_state(), folder / name)
        return folder / name

    folder = _case(root, "newline")
    add("name: newline in the output name", good(folder), folder / "bad\nname.pth", names=folder / "bad\nname.pth")
    folder = _case(root, "long")
    out = folder / ("n" * 252 + ".pth")
    add("name: 256-byte output name", good(folder), out, names=out)
    folder = _case(root, "fifo")
    os.mkfifo(folder / "out.pth")
    add("name: output is a FIFO, with --force", good(folder), folder / "out.pth", "--force", names=folder / "out.pth")
    folder = _case(root, "dir")
    (folder / "out.pth").mkdir()
    add("name: output is a folder, with --force", good(folder), folder / "out.pth", "--force", names=folder / "out.pth")
    folder = _case(root, "same")
    src = good(folder)
    add("name: output is the input, without --force", src, src, names=src)
    folder = _case(root, "fifo input")
    os.mkfifo(folder / "in.pth")
    add("name: input is a FIFO", folder / "in.pth", folder / "out.pth")
    folder = _case(root, "escape")
    src = folder / "in\x1b]0;pwned\x07\nput.pth"
    torch_files.CASES["os.system"][0](src)
    add("name: escape codes in the input name", src, folder / "out.pth")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "cases"
    root.mkdir()
    cases, about = _build(root)
    manifest = root.parent / "manifest.json"
    warm = root.parent / "warm"
    warm.mkdir()
    torch.save(small_state(), warm / "in.pth")
    torch.save({"x": torch_files.Call(os.system, "true")}, warm / "evil.pth")
    spec = str(root.parent / "spec.toml")
    warm_up = [["migrate", str(warm / n), str(warm / f"out-{n}"), "--spec", spec] for n in ("in.pth", "evil.pth")]
    manifest.write_text(json.dumps({"warm_up": warm_up, "cases": cases}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hostile" / "run.py"), str(manifest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = {r["name"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(found) == {c["name"] for c in cases}
    return found, about


def test_the_corpus_is_large(reports):
    found, _ = reports
    assert len(found) >= 60
    assert any(n.startswith("index:") for n in found) and any(n.startswith("name:") for n in found)


@pytest.mark.parametrize(
    "name",
    [f"torch: {n}" for n in torch_files.CASES]
    + ["safetensors: header over 100 MB", "index: shard linked from outside", "index: JSON nested 100k deep"]
    + ["index: over 100 MB", "index: not UTF-8", "name: newline in the output name", "name: 256-byte output name"]
    + ["name: output is a FIFO, with --force", "name: output is a folder, with --force"]
    + ["name: output is the input, without --force", "name: escape codes in the input name"]
    + ["name: input is a FIFO"],
)
def test_each_case_is_one_line_exit_2_nothing_written(reports, name):
    found, about = reports
    _check(found[name], about[name])


def test_every_malformed_safetensors_case_is_one_line_exit_2_nothing_written(reports):
    found, about = reports
    cases = [n for n in found if n.startswith("safetensors: ")]
    assert len(cases) >= 20
    for name in cases:
        _check(found[name], about[name])


def _check(report: dict, about: Path) -> None:
    name = report["name"]
    assert report["exception"] is None, (name, report["exception"])
    assert report["exit_code"] == 2, (name, report)
    assert len(report["lines"]) == 1, (name, report["lines"])
    line = report["lines"][0]
    assert show(about) in line or show(about.name) in line, (name, line)
    assert "\x1b" not in line and "\x07" not in line, (name, line)
    assert report["new_files"] == [], (name, report["new_files"])
    assert report["input_unchanged"], name
    assert report["cpu_s"] < CPU_LIMIT_S, (name, report["cpu_s"])
    assert report["peak_growth_mb"] < PEAK_LIMIT_MB, (name, report["peak_growth_mb"])


def test_the_fifo_and_the_folder_are_left_as_they_were(reports, tmp_path_factory):
    found, about = reports
    fifo = about["name: output is a FIFO, with --force"]
    assert fifo.exists() and not fifo.is_file() and os.stat(fifo).st_size == 0
    assert about["name: output is a folder, with --force"].is_dir()


def test_the_memory_measure_would_see_a_bomb():
    """The measure can fail: 300 MB allocated inside it shows, even in this (already large) process."""
    from hostile.run import measure

    _, _, grown = measure(lambda: len(b"x" * (300 * 2**20)))
    assert grown > PEAK_LIMIT_MB
    _, _, small = measure(lambda: len(b"x" * 2**20))
    assert small < PEAK_LIMIT_MB


def test_struct_layout_of_the_huge_claim():
    """The huge-header case claims a header the file really holds (only the cap refuses it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "h.safetensors"
        safetensors_files.write_huge_header_claim(p)
        with p.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        assert n > 100_000_000 and p.stat().st_size == 8 + n
