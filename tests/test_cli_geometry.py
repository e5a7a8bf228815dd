"""`migrate --geometry`: the exact form of layers no target model or spec fixes."""

import json
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.mark.parametrize(("geometry", "kernel", "ratio"), [("minimal", [2, 2], 1.0), ("symmetric", [3, 3], 2.25)])
def test_migrate_geometry_option_chooses_the_form(cli, geometry, kernel, ratio):
    root = SAMPLES
    result = cli(
        "migrate", root / "forum.pth", "--dry-run", "--json", "--geometry", geometry,
        "--source-model", f"{root / 'models.py'}:ForumSource",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (layer,) = json.loads(result.stdout)["layers"]
    assert (layer["target_kernel_size"], layer["macs_ratio"]) == (kernel, pytest.approx(ratio))
