"""What reaches the terminal: tables that fit narrow terminals, escaped names, clean lines, help and completion."""

import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest
import torch
from conftest import small_state
from rich.console import Console
from torch import nn

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BOX = re.compile("[│┃┏┗┡└┌━─]")
LONG = ["decoder.stage_four.upsample_block", "decoder.stage_three.upsample_block", "head_refine.final_upsample"]


def _table_lines(text):
    return [line for line in text.splitlines() if BOX.search(line)]


_SESSION = """
import sys, json
from deconv2shuffle.cli import app
for name, args in json.loads(sys.argv[1]).items():
    print("=== " + name, flush=True)
    try:
        app(args, prog_name="deconv2shuffle", standalone_mode=False)
    except SystemExit:
        pass
    sys.stdout.flush()
"""


def _run_in_terminal(commands, cwd, columns=80):
    """Run commands (name -> argv) in one process whose stdout is a pseudo-terminal COLUMNS wide.

    Returns each command's text, without colour codes.
    """
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SESSION, json.dumps(commands)], stdout=slave, stderr=subprocess.PIPE, cwd=cwd, env=env
    )
    os.close(slave)
    chunks = []
    while select.select([master], [], [], 120)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n"))
    parts = re.split(r"^=== (\w+)\n", text, flags=re.M)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def at_80_columns(tmp_path_factory):
    """migrate, inspect and batch on long names, and migrate on short ones, in an 80-column terminal."""
    folder = tmp_path_factory.mktemp("terminal")
    torch.manual_seed(0)
    state, spec = {}, ["version = 1"]
    for name in LONG:
        layer = nn.ConvTranspose2d(4, 4, 4, 2, 1)
        state.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
        spec += ["[[layers]]", f'source = "{name}"', "stride = 2", "padding = 1"]
    torch.save(state, folder / "long.pth")
    (folder / "long.toml").write_text("\n".join(spec) + "\n")
    torch.save(small_state(), folder / "small.pth")
    (folder / "small.toml").write_text('version = 1\n[[layers]]\nsource = "up"\nstride = 2\npadding = 1\n')
    src = folder / "sample_checkpoints_with_a_long_folder_name"
    src.mkdir()
    for name in FILES:
        torch.save(small_state(), src / name)
        (src / name.replace(".pth", ".toml")).write_text('version = 1\n[[layers]]\nsource = "up"\nstride = 2\n')
    commands = {
        "migrate": ["migrate", "long.pth", "new.pth", "--spec", "long.toml"],
        "small": ["migrate", "small.pth", "small_new.pth", "--spec", "small.toml"],
        "inspect": ["inspect", "long.pth"],
        "batch": ["batch", src.name, "out"],
    }
    return _run_in_terminal(commands, folder)


FILES = ["generator_after_forty_epochs.pth", "generator_after_fifty_epochs.pth"]


def test_migrate_at_80_columns_keeps_every_layer_name_whole(at_80_columns):
    for name in LONG:
        assert name in at_80_columns["migrate"] and f"{name}.conv" in at_80_columns["migrate"], at_80_columns
    small = at_80_columns["small"]
    assert "│ up " in small and "up.conv" in small and "wrote small_new.pth" in small, small
    for out in at_80_columns.values():
        assert max((len(line) for line in _table_lines(out)), default=0) <= 80, out
    assert _table_lines(small), small  # a short key still gets a table


def test_inspect_at_80_columns_keeps_every_module_name_whole(at_80_columns):
    out = at_80_columns["inspect"]
    for name in LONG:
        assert name in out, out
    assert "its name suggests upsampling" in out  # the guess's note, not one word per line


def test_batch_table_at_80_columns_keeps_every_file_name_whole(at_80_columns):
    for name in FILES:
        assert f"sample_checkpoints_with_a_long_folder_name/{name}" in at_80_columns["batch"], at_80_columns["batch"]


@pytest.mark.parametrize("width", [30, 45, 60, 80, 100, 200])
def test_layout_fits_the_width_and_never_breaks_an_identifier(width):
    from deconv2shuffle.cli._tables import Col, Grid, layout

    grid = Grid("t", [Col("key", whole=True), Col("shape"), Col("note", free=True)])
    for name in LONG:
        grid.add(f"{name} -> {name}.conv", "(1024, 64, 3, 3)", "a note " * 12)
    fitted = layout(grid, width)
    if isinstance(fitted, list):  # too narrow for a table: one block per row
        text = "\n".join(fitted)
    else:
        console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(fitted)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width, text
    for name in LONG:
        assert name in text, text


def test_every_user_string_is_escaped_before_the_terminal(tmp_path, cli, spec_file):
    state = small_state()
    evil = {"title\x1b]0;pwned\x07.weight": torch.zeros(2), "clear\x1b[2J.weight": torch.zeros(2)}
    evil["[bold]loud[/bold].weight"] = torch.zeros(2)
    torch.save({**state, **evil}, tmp_path / "old.pth")
    inspect = cli("inspect", tmp_path / "old.pth")
    migrate = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file, "--verbose")
    for result in (inspect, migrate):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "title\\x1b]0;pwned\\x07" in result.output and "clear\\x1b[2J" in result.output
        assert "[bold]loud[/bold]" in result.output
    missing = cli("inspect", tmp_path / "gone\x1b[2J.pth")
    assert missing.exit_code == 2 and "\x1b" not in missing.output and "gone\\x1b[2J.pth" in missing.output


def test_visible_escapes_controls_and_keeps_printable_unicode():
    from deconv2shuffle.cli._tables import visible

    assert visible("a\x1b[2Jb\x07\tc\x9b\u202e\nd") == "a\\x1b[2Jb\\x07\\tc\\x9b\\u202e\\nd"
    assert visible("décodeur.上采样.weight") == "décodeur.上采样.weight"


def test_piped_output_has_no_trailing_spaces_and_errors_have_no_blank_line_above(tmp_path, cli, spec_file):
    torch.save(small_state(), tmp_path / "old.pth")
    result = cli("migrate", tmp_path / "old.pth", tmp_path / "new.pth", "--spec", spec_file)
    assert result.exit_code == 0 and result.stdout.startswith("deconv2shuffle migrate\n"), result.output
    assert all(line == line.rstrip() for line in result.stdout.splitlines()), result.stdout
    (tmp_path / "in").mkdir()
    bad = cli("batch", tmp_path / "in", tmp_path / "in")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{tmp}/nope.pth", "--json"],
        ["explain", "--kernel", "4", "--json"],
        ["explain", "-k", "4", "-s", "2", "-p", "x", "--json"],
        ["migrate", "{tmp}/nope.pth", "{tmp}/new.pth", "--json"],
    ],
)
def test_every_json_command_prints_json_on_failure(tmp_path, cli, args):
    result = cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["exit_code"] == 2 and data["error"]


def test_usage_and_help_show_plain_metavars(cli):
    for command, usage in (("migrate", "migrate [OPTIONS] OLD [NEW]"), ("batch", "batch [OPTIONS] IN_DIR OUT_DIR")):
        text = cli(command, "--help").output
        assert usage in text, text
        assert "{" not in text.split("\n")[0] and "<list[str]>" not in text and "<str>" not in text
    text = cli("migrate", "--help").output
    assert "--rename REGEX=REPL" in text and "--allow-global MODULE.NAME" in text and "--spec FILE" in text


def test_shell_completion_through_typer():
    env = {**os.environ, "SHELL": "/bin/bash"}
    run = [sys.executable, "-m", "deconv2shuffle"]
    script = subprocess.run([*run, "--show-completion", "bash"], capture_output=True, text=True, env=env)
    assert script.returncode == 0, script.stderr
    assert "_DECONV2SHUFFLE_COMPLETE" in script.stdout and "complete" in script.stdout
    env.update(_DECONV2SHUFFLE_COMPLETE="complete_bash", COMP_WORDS="deconv2shuffle mig", COMP_CWORD="1")
    words = subprocess.run(run, capture_output=True, text=True, env=env)
    assert words.stdout.split() == ["migrate"]
