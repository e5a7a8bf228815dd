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
        and layer["target_weight_shape"] == [64, 8, 2, 2]
        and layer["target_kernel_size"] == [2, 2]
        and layer["crop_start"] == layer["crop_end"] == [1, 1]
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
        q, phase = divmod(Y + ax["crop_start"], s)  # the conv computes the output shifted by the start crop
        assert drawn[(phase, t)] == i0 - q + P
    text = cli("explain", "-k", k, "-s", s, "-p", p, "--output-padding", op)
    assert "exact" in text.output and "w[0]" in text.output


def test_explain_a_checkpoint_layer(tmp_path, cli):
    torch.save(small_state(), tmp_path / "m.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    result = cli("explain", tmp_path / "m.pth", "--layer", "up", "--spec", tmp_path / "s.toml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "2x2 pad 1, crop 1 at start"


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
    assert listing(out) == [".deconv2shuffle", "a.pth", "sub"] and listing(out / "sub") == ["b.safetensors", "c.ckpt"]
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
    forms = {f["form"]: f for f in row["forms"]}
    assert forms["symmetric"]["target"] == "3x3 pad 1" and forms["tight"]["target"] == "2x2 pad 0/1,0/1"
    assert forms["minimal"]["same_as"] == "tight" and forms["minimal"]["macs_ratio"] == pytest.approx(16 / 9)
    assert forms["symmetric"]["macs_ratio"] == 4 and row["runtime"] == "torch" and row["repeats"] == 10
    assert row["max_rel_error"] < 1e-5 and row["transposed_ms"] > 0
    _check_verdict(row)
    result = cli(
        "bench", "--source-model", f"{models_py}:Old", "--input-shape", "1,3,8,8", "--min-time", "0.01", "--json"
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["layer"] == "up" and row["input_shape"] == [1, 8, 8, 8]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["migrate"], "error: Missing argument 'OLD'. See 'deconv2shuffle migrate --help'."),
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
        ".deconv2shuffle",
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
    from deconv2shuffle import parse_spec

    torch.save(small_state(), tmp_path / "m.pth")
    result = cli("spec", tmp_path / "m.pth")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# DRAFT") and "GUESS" in result.stdout
    spec = parse_spec(result.stdout)
    assert [(x.source, x.stride, x.padding, x.guessed) for x in spec.layers] == [("up", 2, 1, True)]
    (tmp_path / "d.toml").write_text(result.stdout)
    refused = cli("migrate", tmp_path / "m.pth", tmp_path / "n.pth", "--spec", tmp_path / "d.toml")
    assert refused.exit_code == 2 and "guessed = true" in refused.output and not (tmp_path / "n.pth").exists()
    (tmp_path / "d.toml").write_text(result.stdout.replace("guessed = true\n", ""))  # checked by the user
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


@pytest.mark.parametrize(
    ("option", "value", "flag_text"),
    [("--rename", "(=x", "--rename '(=x'"), ("--drop", "[", "--drop '['"), ("--rename", "a=\\9", "--rename")],
)
def test_bad_rename_or_drop_pattern_is_a_usage_error(tmp_path, cli, spec_file, option, value, flag_text):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file, option, value)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag_text in lines[0], result.output
    assert "unexpected" not in result.output and not (tmp_path / "new.pth").exists()


def test_bad_pattern_in_the_library_names_the_parameter(tmp_path, spec_file):
    from deconv2shuffle import migrate
    from deconv2shuffle.errors import UsageError

    torch.save(small_state(), tmp_path / "old.pth")
    with pytest.raises(UsageError, match=r"^drop=\['\['\]: '\[' is not a valid regular expression") as info:
        migrate(tmp_path / "old.pth", None, spec=spec_file, drop=["["])
    assert "--" not in str(info.value)
    assert info.value.report["ok"] is False and info.value.report["exit_code"] == 2


@pytest.mark.parametrize(
    ("message", "expect"),
    [
        ("rerun with trust_pickle=True only if you trust it", "rerun with --trust-pickle only if you trust it"),
        ("choose one with state_dict_key='ema'", "choose one with --state-dict-key ema"),
        (
            "pass allow_globals=['argparse.Namespace', 'a.B'] to",
            "pass --allow-global argparse.Namespace --allow-global a.B to",
        ),
        ("drop=['[']: '[' is bad", "--drop '[': '[' is bad"),
        ("rename=[('(', 'x')]: bad", "--rename '(=x': bad"),
        ("or pass allow_missing=True / drop_unexpected=True", "or pass --allow-missing / --drop-unexpected"),
        ("pass input_shape=(N, C, H, W) with", "pass --input-shape N,C,H,W with"),
        ("input_shape=(1, 3, 8): bad", "--input-shape 1,3,8: bad"),
        ("(tolerance=1e-10)", "(--tolerance 1e-10)"),
        ("or pass approx=True.", "or pass --approx."),
        ("shard=(3, 3): need 0 <= i < n", "--shard 3/3: need 0 <= i < n"),
        (
            "give spec='spec.toml', or source_model='file.py:Name'",
            "give --spec spec.toml, or --source-model file.py:Name",
        ),
        ("kernel= needs stride= too", "--kernel needs --stride too"),
        ("my_drop=3, x.approx=True and hash_source=False stay", "my_drop=3, x.approx=True and hash_source=False stay"),
    ],
)
def test_api_parameters_become_flags(message, expect):
    from deconv2shuffle.cli._errors import to_flags

    assert to_flags(message) == expect


def test_library_advice_speaks_api_words_and_the_cli_turns_it_into_flags(tmp_path, cli, old_model, models_py):
    from deconv2shuffle import Sources, convert_state_dict
    from deconv2shuffle.errors import InexactTargetError, SpecError

    with pytest.raises(SpecError) as nothing:
        Sources().layers()
    assert "spec='spec.toml'" in str(nothing.value) and "--" not in str(nothing.value)
    state = small_state()
    from deconv2shuffle import LayerSpec

    with pytest.raises(InexactTargetError) as inexact:
        convert_state_dict(state, [LayerSpec("up", 2, padding=1, target_kernel_size=1)])
    assert str(inexact.value).endswith("or pass approx=True to truncate")
    torch.save(state, tmp_path / "old.pth")
    (tmp_path / "k1.toml").write_text(SPEC + "target_kernel_size = 1\n")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", tmp_path / "k1.toml")
    assert result.exit_code == 1 and result.output.rstrip().endswith("or pass --approx to truncate"), result.output


READERS = [
    ["migrate", "{ckpt}", "{tmp}/new.pth", "--spec", "{spec}"],
    ["inspect", "{ckpt}"],
    ["explain", "{ckpt}", "--spec", "{spec}", "--layer", "up"],
    ["bench", "{ckpt}", "--spec", "{spec}", "--size", "4", "--min-time", "0.001"],
    ["spec", "{ckpt}"],
    ["batch", "{tmp}/in", "{tmp}/out", "--spec", "{spec}"],
]


@pytest.mark.parametrize("args", READERS, ids=[a[0] for a in READERS])
def test_every_command_that_reads_checkpoints_passes_allow_global(tmp_path, cli, monkeypatch, args):
    import deconv2shuffle.pipeline.files as files

    (tmp_path / "in").mkdir()
    torch.save(small_state(), tmp_path / "in" / "m.pth")
    (tmp_path / "s.toml").write_text(SPEC)
    real, seen = files.load_checkpoint, []

    def loader(path, *, state_dict_key=None, trust_pickle=False, allow_globals=None):
        seen.append(allow_globals)
        return real(path, state_dict_key=state_dict_key, trust_pickle=trust_pickle)

    monkeypatch.setattr(files, "load_checkpoint", loader)
    where = {"ckpt": tmp_path / "in" / "m.pth", "tmp": tmp_path, "spec": tmp_path / "s.toml"}
    argv = [a.format(**where) for a in args]
    result = cli(*argv, "--allow-global", "argparse.Namespace", "--allow-global", "mod.Name")
    assert result.exit_code == 0, result.output
    assert seen and all(g == ["argparse.Namespace", "mod.Name"] for g in seen), seen
    seen.clear()
    assert cli(*argv, "--force").exit_code == 0 if args[0] in ("migrate", "batch") else cli(*argv).exit_code == 0
    assert seen and all(g is None for g in seen)  # nothing allowed: the keyword is not passed at all
    bad = cli(*argv, "--allow-global", "nodot")
    assert bad.exit_code == 2 and "--allow-global nodot" in bad.output, bad.output


def test_allow_global_without_a_loader_that_supports_it_is_a_usage_error(tmp_path, cli, monkeypatch):
    import deconv2shuffle.pipeline.files as files

    torch.save(small_state(), tmp_path / "m.pth")

    def old_loader(path, *, state_dict_key=None, trust_pickle=False):
        raise AssertionError("must not be called")

    monkeypatch.setattr(files, "load_checkpoint", old_loader)
    result = cli("inspect", tmp_path / "m.pth", "--allow-global", "argparse.Namespace")
    assert result.exit_code == 2 and "--allow-global argparse.Namespace" in result.output, result.output


def _check_verdict(row):
    """The verdict agrees with the medians and spreads the row reports."""
    old_lo, old_hi = row["transposed_spread_ms"]
    forms = {f["form"]: (f["median_ms"], f["spread_ms"]) for f in row["forms"] if not f["same_as"]}
    kind = min(forms, key=lambda k: forms[k][0])
    best, (lo, hi) = forms[kind]
    assert old_lo <= row["transposed_ms"] <= old_hi and lo <= best <= hi
    if row["verdict"] == "no clear difference":
        assert not hi < old_lo and not old_hi < lo
    elif row["verdict"].startswith("sub-pixel"):
        assert hi < old_lo and row["verdict"] == f"sub-pixel ({kind}) {row['transposed_ms'] / best:.2f}x faster"
    else:
        assert old_hi < lo and row["verdict"] == f"transposed {best / row['transposed_ms']:.2f}x faster"


@pytest.mark.parametrize(
    ("old", "symmetric", "tight", "expect"),
    [
        ((10, 9, 11), (5, 4.5, 5.5), None, "sub-pixel (symmetric) 2.00x faster"),
        ((10, 9, 11), (8, 7, 9.5), (5, 4, 6), "sub-pixel (tight) 2.00x faster"),
        ((10, 9, 11), (20, 19, 21), None, "transposed 2.00x faster"),
        ((10, 9, 11), (20, 19, 21), (15, 12, 16), "transposed 1.50x faster"),
        ((10, 9, 11), (10.5, 10, 12), None, "no clear difference"),
        ((10, 8, 14), (7, 6, 9), None, "no clear difference"),  # medians differ, spreads overlap
        ((10, 9.9, 10.1), (9.8, 9.7, 9.85), None, "sub-pixel (symmetric) 1.02x faster"),
    ],
)
def test_bench_verdict_compares_spreads(old, symmetric, tight, expect):
    from deconv2shuffle.pipeline.bench import Timing, verdict

    forms = {"symmetric": Timing(*symmetric), **({"tight": Timing(*tight)} if tight else {})}
    assert verdict(Timing(*old), forms) == expect


def test_timing_spread_is_the_middle_half():
    from deconv2shuffle.pipeline.bench import Timing

    t = Timing.of([0.004, 0.001, 0.003, 0.002, 0.100])  # seconds, one outlier
    assert (t.median_ms, t.low_ms, t.high_ms) == pytest.approx((3.0, 2.0, 4.0))
    assert Timing.of([0.002]) == Timing(2.0, 2.0, 2.0)
