"""`migrate` on an ONNX model: sniffed from its bytes, no spec, ConvTranspose nodes rewritten."""

import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

SAMPLE = Path(__file__).resolve().parents[1] / "sample_checkpoints" / "forum.onnx"


def test_migrate_rewrites_the_bundled_onnx_sample(tmp_path, cli):
    out = tmp_path / "forum_subpixel.onnx"
    result = cli("migrate", SAMPLE, out, "--json", "--report", tmp_path / "r.md")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "ConvTranspose" not in ops and "Conv" in ops
    assert "converted" in (tmp_path / "r.md").read_text()


def test_migrate_dry_run_on_onnx_writes_nothing(tmp_path, cli):
    result = cli("migrate", SAMPLE, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nodes"][0]["status"] == "convertible"


def test_inspect_lists_the_onnx_nodes(cli):
    result = cli("inspect", SAMPLE, "--json")
    assert result.exit_code == 0, result.output
    (node,) = json.loads(result.stdout)["nodes"]
    assert node["status"] == "convertible" and node["macs_ratio"] == 1.0
    assert node["new_weight_shape"] == [1024, 64, 2, 2]
