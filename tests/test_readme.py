"""The README's examples, run for real against the samples.

Every ```console block holds ``$ deconv2shuffle ...`` commands, each followed by what it prints
(stdout and stderr, as a terminal shows them when piped). They are run in a scratch folder that
sees ``sample_checkpoints/``, and compared with the README after normalising what differs from
machine to machine (floating-point errors in ``1.23e-16`` form, durations). The Python snippet
runs as written, there too.

When the output changes on purpose, rewrite the blocks from today's output with one command:

    python tests/test_readme.py --update
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLES = ROOT / "sample_checkpoints"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.S | re.M)
_FLOAT = re.compile(r"\b\d\.\d+e[-+]\d+\b")
_SECONDS = re.compile(r"\b\d+\.\d+ s\b")


def examples(text: str) -> list[list[tuple[str, str]]]:
    """Each console block as ``(command, expected output)`` pairs."""
    blocks = []
    for block in BLOCK.findall(text):
        pairs: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            elif pairs:
                pairs[-1][1].append(line)
        blocks.append([(cmd, "\n".join(out)) for cmd, out in pairs])
    return blocks


def normalise(text: str) -> str:
    """Output without what differs by machine: float errors and durations; no trailing blank lines."""
    return _SECONDS.sub("#.# s", _FLOAT.sub(lambda m: re.sub(r"\d", "#", m.group(0)), text)).rstrip()


def run(command: str, cwd: Path) -> str:
    """Run ``deconv2shuffle ...`` in ``cwd`` through the app, as a pipe sees it; stdout and stderr together."""
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    args = shlex.split(command)
    assert args[0] == "deconv2shuffle", f"README console commands start with deconv2shuffle: {command}"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    old, old_env = Path.cwd(), dict(os.environ)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, args[1:], prog_name="deconv2shuffle")
    finally:
        os.chdir(old)
        os.environ.clear()
        os.environ.update(old_env)
    return result.output


def scratch() -> Path:
    """A folder where ``sample_checkpoints/`` is the repository's and everything written stays."""
    folder = Path(tempfile.mkdtemp(prefix="deconv2shuffle-readme-"))
    (folder / "sample_checkpoints").symlink_to(SAMPLES, target_is_directory=True)
    return folder


def test_readme_console_blocks_match_real_output():
    folder = scratch()
    blocks = examples(README.read_text())
    assert len(blocks) >= 3 and sum(len(b) for b in blocks) >= 4
    for block in blocks:
        for command, expected in block:
            got = run(command, folder)
            if normalise(got) != normalise(expected):
                diff = "\n".join(
                    difflib.unified_diff(expected.splitlines(), got.splitlines(), "README", "today", lineterm="")
                )
                raise AssertionError(
                    f"README example `{command}` prints something else today; if that is intended, run "
                    f"`python tests/test_readme.py --update`\n{diff}"
                )


def test_normalise_keeps_everything_but_machine_noise():
    a = "max abs error 8.88e-16, relative 1.12e-15 in 0.5 s; crop 1 (2.25x)"
    b = "max abs error 6.66e-16, relative 9.99e-16 in 12.3 s; crop 1 (2.25x)"
    assert normalise(a) == normalise(b)
    assert normalise(a) != normalise(a.replace("crop 1", "crop 0")) != normalise(a.replace("2.25x", "1.00x"))


def test_readme_python_snippet_runs_as_written(monkeypatch):
    import torch

    text = README.read_text()
    (code,) = [
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "SubPixelConvTranspose2d.from_transposed" in b
    ]
    folder = scratch()
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["plan"].target.describe() == "5 pad 2"
    assert scope["report"].ok and all(Path(p).is_file() for p in scope["report"].written)
    x = torch.randn(1, 64, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(scope["new"](x), scope["model"](x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scope["layer"](x), scope["model"][0](x), rtol=1e-5, atol=1e-5)


def update() -> int:
    """Rewrite every console block of the README from what its commands print today."""
    text = README.read_text()
    folder = scratch()

    def fresh(match: re.Match[str]) -> str:
        lines = []
        for command, _ in examples(match.group(0))[0]:
            lines.append(f"$ {command}")
            lines += run(command, folder).rstrip("\n").splitlines()
        return "```console\n" + "\n".join(lines) + "\n```"

    new = BLOCK.sub(fresh, text)
    if new != text:
        README.write_text(new)
    print(f"{README}: {'updated' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] != ["--update"]:
        print(__doc__)
        sys.exit(2)
    sys.exit(update())
