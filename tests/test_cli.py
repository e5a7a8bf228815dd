import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import listing, sha, small_state
from safetensors.torch import save_file

SPEC = 'version = 1\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n'


def test_entry_point_help_does_not_import_torch(tmp_path):
    """The real console entry: --help answers without importing torch (what makes it instant)."""
    code = (
        "import sys; sys.argv = ['deconv2shuffle', '--help']\nfrom deconv2shuffle.cli import main\ntry:\n    main()\n"
        "except SystemExit as e:\n    assert e.code == 0\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "migrate" in out.stdout and "inspect" in out.stdout and "batch" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False"
    version = subprocess.run([sys.executable, "-m", "deconv2shuffle", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("deconv2shuffle ")


def test_piped_output_has_no_control_codes(tmp_path):
    torch.save(small_state(), tmp_path / "m.pth")
    env = {**os.environ, "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "deconv2shuffle", "inspect", str(tmp_path / "m.pth")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b[" not in out.stdout and "up" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "deconv2shuffle", "inspect", str(tmp_path / "nope.pth")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.pth'}: no such file"]


def test_inspect_json_groups_and_totals(tmp_path, cli):
    state = small_state()
    state["head.weight"] = state["head.weight"].half()
    torch.save({"state_dict": state, "epoch": 2}, tmp_path / "m.ckpt")
    (tmp_path / "s.toml").write_text(SPEC)
    result = cli("inspect", tmp_path / "m.ckpt", "--spec", tmp_path / "s.toml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["state_dict_key"] == "state_dict" and set(data["top_level"]) == {"state_dict", "epoch"}
    assert [m["module"] for m in data["modules"]] == ["head", "up", "tail"]
    assert data["totals"]["bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    assert data["totals"]["by_dtype"]["float16"]["tensors"] == 1
    (layer,) = data["conv_transpose"]
    assert (
        layer["origin"] == "spec"
        and layer["target_weight_shape"] == [64, 8, 3, 3]
        and layer["target_kernel_size"] == [3, 3]
    )


def test_inspect_guesses_without_a_spec(tmp_path, cli):
    torch.save(small_state(), tmp_path / "m.pth")
    result = cli("inspect", tmp_path / "m.pth", "--json")
    data = json.loads(result.stdout)
    assert [x["module"] for x in data["conv_transpose"]] == ["up"]
    assert data["conv_transpose_source"] == "guess" and "weight.shape[1]" in data["conv_transpose"][0]["reason"]
    text = cli("inspect", tmp_path / "m.pth")
    assert "GUESSES" in text.output


@pytest.mark.parametrize(("k", "s", "p", "op"), [(4, 2, 1, 0), (9, 2, 4, 1), (3, 2, 1, 1), (16, 8, 4, 0), (5, 3, 0, 2)])
def test_explain_table_matches_impulse_responses(cli, k, s, p, op):
    """Each drawn tap is checked against torch: a one-hot weight and a delta input show where it lands."""
    result = cli("explain", "-k", k, "-s", s, "-p", p, "--output-padding", op, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ax = data["axes"][0]
    P = ax["target_padding"][0]
    drawn = {(ph["phase"], tap["source_tap"]): tap["target_tap"] for ph in ax["phases"] for tap in ph["taps"]}
    assert len(drawn) == k
    i0 = 5
    x = torch.zeros(1, 1, 12, dtype=torch.float64)
    x[0, 0, i0] = 1
    for t in range(k):
        w = torch.zeros(1, 1, k, dtype=torch.float64)
        w[0, 0, t] = 1
        y = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op)[0, 0]
        hits = torch.nonzero(y).flatten().tolist()
        if not hits:
            continue  # the tap's output was cut off by padding for this input position
        (Y,) = hits
        q, phase = divmod(Y, s)
        assert drawn[(phase, t)] == i0 - q + P
    text = cli("explain", "-k", k, "-s", s, "-p", p, "--output-padding", op)
    assert "exact" in text.output and "w[0]" in text.output


def test_explain_a_checkpoint_layer(tmp_path, cli):
    torch.save(small_state(), tmp_path / "m.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    result = cli("explain", tmp_path / "m.pth", "--layer", "up", "--spec", tmp_path / "s.toml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "3x3 pad 1"


def _folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    state = small_state()
    torch.save(state, src / "a.pth")
    save_file(state, src / "sub" / "b.safetensors")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 1}, src / "sub" / "c.ckpt")
    for name in ("a", "sub/b", "sub/c"):
        (src / f"{name}.toml").write_text(SPEC)
    (src / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (src / "broken.toml").write_text(SPEC)
    return src


def test_batch_converts_mirrors_and_survives_a_bad_file(tmp_path, cli):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    before = {p: sha(src / p) for p in ("a.pth", "broken.pth")}
    result = cli("batch", src, out, "--recursive", "--report", tmp_path / "r.json")
    assert result.exit_code == 1, result.output  # one file is bad
    report = json.loads((tmp_path / "r.json").read_text())
    status = {os.path.relpath(f["input"], src): f["status"] for f in report["files"]}
    assert status == {
        "a.pth": "converted",
        "broken.pth": "failed",
        "sub/b.safetensors": "converted",
        "sub/c.ckpt": "converted",
    }
    assert listing(out) == ["a.pth", "sub"] and listing(out / "sub") == ["b.safetensors", "c.ckpt"]
    assert "model.up.conv.weight" in torch.load(out / "sub" / "c.ckpt", weights_only=True)["state_dict"]
    assert {p: sha(src / p) for p in before} == before
    failed = next(f for f in report["files"] if f["status"] == "failed")
    assert "broken.pth" in failed["error"]
    # a second run skips what is up to date; --force redoes it
    stamp = (out / "a.pth").stat().st_mtime_ns
    again = cli("batch", src, out, "--recursive", "--json")
    data = json.loads(again.stdout)
    assert data["skipped"] == 3 and data["converted"] == 0 and data["failed"] == 1
    assert (out / "a.pth").stat().st_mtime_ns == stamp
    forced = json.loads(cli("batch", src, out, "--recursive", "--force", "--json").stdout)
    assert forced["converted"] == 3


def test_batch_without_spec_says_what_is_missing(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    torch.save(small_state(), src / "x.pth")
    result = cli("batch", src, tmp_path / "out", "--json")
    assert result.exit_code == 1
    (f,) = json.loads(result.stdout)["files"]
    assert "x.toml" in f["error"]


def test_batch_refuses_out_equal_in(tmp_path, cli):
    src = _folder(tmp_path)
    result = cli("batch", src, src)
    assert result.exit_code == 2 and "must differ" in result.output


def test_batch_shards_partition_the_files(tmp_path, cli):
    src = _folder(tmp_path)
    seen = []
    for i in range(3):
        result = cli("batch", src, tmp_path / f"out{i}", "--recursive", "--shard", f"{i}/3", "--json")
        seen += [f["input"] for f in json.loads(result.stdout)["files"]]
    assert sorted(seen) == sorted(
        str(p) for p in [src / "a.pth", src / "broken.pth", src / "sub/b.safetensors", src / "sub/c.ckpt"]
    )
    assert cli("batch", src, tmp_path / "o", "--shard", "3/3").exit_code == 2


@pytest.mark.slow
def test_batch_with_parallel_workers(tmp_path, cli):
    src = _folder(tmp_path)
    (src / "broken.pth").unlink()
    result = cli("batch", src, tmp_path / "out", "--recursive", "--jobs", "2", "--json", "--to", "safetensors")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["converted"] == 3
    assert sorted(os.path.basename(f["output"]) for f in data["files"]) == [
        "a.safetensors",
        "b.safetensors",
        "c.safetensors",
    ]


def test_bench_times_both_geometries(cli, tmp_path, models_py):
    result = cli(
        "bench",
        "-k",
        "3",
        "-s",
        "2",
        "-p",
        "1",
        "--output-padding",
        "1",
        "--channels",
        "4,4",
        "--size",
        "8",
        "--min-time",
        "0.01",
        "--json",
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["symmetric_target"] == "3x3 pad 1" and row["tight_target"] == "2x2 pad 0/1,0/1"
    assert row["max_rel_error"] < 1e-5 and row["transposed_ms"] > 0 and "faster" in row["verdict"]
    result = cli(
        "bench", "--source-model", f"{models_py}:Old", "--input-shape", "1,3,8,8", "--min-time", "0.01", "--json"
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["layer"] == "up" and row["input_shape"] == [1, 8, 8, 8]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["migrate"], "error: Missing argument 'old'. See 'deconv2shuffle migrate --help'."),
        (["migrate", "a.pth", "--bogus"], "error: No such option: --bogus"),
        (["batch", "x", "y", "--jobs", "abc"], "error: Invalid value for '--jobs'"),
    ],
)
def test_usage_errors_are_one_line_from_the_real_entry_point(args, expect):
    code = f"import sys; sys.argv = ['deconv2shuffle', *{args!r}]\nfrom deconv2shuffle.cli import main\nmain()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), out.stderr


def test_batch_treats_an_index_and_its_shards_as_one_checkpoint(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    state = small_state()
    a = {k: v for k, v in state.items() if not k.startswith("tail")}
    b = {k: v for k, v in state.items() if k.startswith("tail")}
    save_file(a, src / "m-1.safetensors")
    save_file(b, src / "m-2.safetensors")
    index = {"weight_map": {**dict.fromkeys(a, "m-1.safetensors"), **dict.fromkeys(b, "m-2.safetensors")}}
    (src / "m.safetensors.index.json").write_text(json.dumps(index))
    (src / "m.toml").write_text(SPEC)
    result = cli("batch", src, tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [os.path.basename(f["input"]) for f in data["files"]] == ["m.safetensors.index.json"]
    assert listing(tmp_path / "out") == [
        "m-00001-of-00002.safetensors",
        "m-00002-of-00002.safetensors",
        "m.safetensors.index.json",
    ]


def test_batch_with_a_missing_shared_spec_fails_each_file_cleanly(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    torch.save(small_state(), src / "x.pth")
    result = cli("batch", src, tmp_path / "out", "--spec", tmp_path / "nope.toml", "--json")
    assert result.exit_code == 1
    (f,) = json.loads(result.stdout)["files"]
    assert f["error"] == f"{tmp_path / 'nope.toml'}: spec file not found"


def test_spec_draft_from_a_checkpoint_is_marked_and_usable(tmp_path, cli):
    from deconv2shuffle.spec import parse_spec

    torch.save(small_state(), tmp_path / "m.pth")
    result = cli("spec", tmp_path / "m.pth")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# DRAFT") and "GUESS" in result.stdout
    spec = parse_spec(result.stdout)
    assert [(x.source, x.stride, x.padding) for x in spec.layers] == [("up", 2, 1)]
    (tmp_path / "d.toml").write_text(result.stdout)
    assert cli("migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", tmp_path / "d.toml").exit_code == 0
    torch.save({"a.weight": torch.zeros(3, 3)}, tmp_path / "none.pth")
    assert cli("spec", tmp_path / "none.pth").exit_code == 2
    assert cli("spec").exit_code == 2


def test_bad_parameters_inside_commands_exit_2(tmp_path, cli):
    torch.save(small_state(), tmp_path / "m.pth")
    assert cli("migrate", tmp_path / "m.pth").exit_code == 2  # neither NEW nor --dry-run
    assert cli("migrate", tmp_path / "m.pth", "--dry-run", "--rename", "no-equals-sign").exit_code == 2
    assert cli("explain", "--kernel", "4").exit_code == 2
    assert cli("bench").exit_code == 2
