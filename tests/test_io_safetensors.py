"""Safetensors in and out, held against the safetensors library itself."""

import json
import math
import struct

import pytest
import torch
from conftest import listing
from hostile.safetensors_files import CASES, write_huge_header_claim
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deconv2shuffle.checkpoint import load_checkpoint, save_checkpoint
from deconv2shuffle.errors import CheckpointError


def _reference(path):
    """What the library loads from ``path`` (None: it refuses the file)."""
    try:
        return load_file(path)
    except Exception:
        return None


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_we_refuse_exactly_what_the_library_refuses_and_load_what_it_loads(tmp_path, case):
    path = tmp_path / "case.safetensors"
    path.write_bytes(CASES[case]())
    expected = _reference(path)
    if expected is None:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert text.startswith(f"{path}: ") and "\n" not in text, text
        return
    ours = load_checkpoint(path).state_dict
    assert list(ours) == list(expected) or set(ours) == set(expected)
    for key, t in expected.items():
        assert ours[key].dtype == t.dtype and ours[key].shape == t.shape, key
        assert torch.equal(_bits(ours[key]), _bits(t)), key


def test_the_corpus_has_both_verdicts():
    """The corpus exercises both sides of the library's judgement (else the test above proves little)."""
    import tempfile
    from pathlib import Path

    verdicts = set()
    with tempfile.TemporaryDirectory() as tmp:
        for case, build in CASES.items():
            p = Path(tmp) / "x.safetensors"
            p.write_bytes(build())
            verdicts.add((case, _reference(p) is not None))
    accepted = {c for c, ok in verdicts if ok}
    assert {"dtype F8_E4M3FNUZ", "float32 at an odd offset", "duplicate key, last entry fits"} <= accepted
    assert {"overlapping offsets", "gapped offsets", "JSON nested 100k deep", "non-UTF-8 header"}.isdisjoint(accepted)


def test_a_header_over_the_library_cap_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    write_huge_header_claim(path)
    assert _reference(path) is None
    with pytest.raises(CheckpointError, match="header too large"):
        load_checkpoint(path)


def _mixed_state():
    g = torch.Generator().manual_seed(0)
    return {
        "a.u8": torch.randint(0, 255, (3,), dtype=torch.uint8, generator=g),  # 3 bytes: would misalign what follows
        "b.f32": torch.randn(5, generator=g),
        "c.f16": torch.randn(3, generator=g).half(),
        "d.f64": torch.randn(3, generator=g).double(),
        "e.bf16": torch.randn(7, generator=g).bfloat16(),
        "f.i64": torch.arange(3),
        "g.bool": torch.tensor([True, False, True]),
        "h.fnuz": torch.randn(5, generator=g).to(torch.float8_e4m3fnuz),
        "i.c64": torch.randn(2, dtype=torch.complex64, generator=g),
        "j.empty": torch.zeros(0, 4),
        "k.scalar": torch.tensor(2.5),
        "l.strided": torch.randn(4, 6, generator=g)[:, ::2],  # not contiguous
    }


def test_what_we_write_is_what_the_library_reads_and_is_aligned(tmp_path):
    state = _mixed_state()
    out = tmp_path / "mixed.safetensors"
    save_checkpoint(out, state, metadata={"note": "ünïcode ✓"})
    back = load_file(out)
    assert back.keys() == state.keys()
    for key, t in state.items():
        assert back[key].dtype == t.dtype and back[key].shape == t.shape, key
        assert torch.equal(_bits(back[key]), _bits(t)), key
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", "note": "ünïcode ✓"}
    raw = out.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b" ", b"}")
    header = json.loads(raw[8 : 8 + n])
    for key, info in header.items():
        if key == "__metadata__":
            continue
        itemsize = state[key].element_size()
        start, end = info["data_offsets"]
        assert (8 + n + start) % itemsize == 0, f"{key} at offset {start} is not aligned to {itemsize}"
        assert end - start == math.prod(info["shape"]) * itemsize
    # and it is the library's own byte layout: the same bytes as save_file for the same tensors
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "lib.safetensors", metadata=meta)
    lib = (tmp_path / "lib.safetensors").read_bytes()
    (m,) = struct.unpack("<Q", lib[:8])
    assert raw[8 + n :] == lib[8 + m :]


def test_keys_that_collapse_to_one_name_are_an_error(tmp_path):
    path = tmp_path / "keys.pth"
    torch.save({1: torch.zeros(2), "1": torch.ones(2), "up.weight": torch.zeros(2, 2, 4, 4)}, path)
    with pytest.raises(CheckpointError, match=r"keys 1 and '1'.*both '1'"):
        load_checkpoint(path)


def test_a_tensor_named_like_the_metadata_entry_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="__metadata__"):
        save_checkpoint(tmp_path / "x.safetensors", {"__metadata__": torch.zeros(1)})
    assert listing(tmp_path) == []


def test_files_written_by_earlier_versions_keep_their_tied_keys(tmp_path):
    """Earlier versions wrote tied tensors once plus a private alias entry; loading still re-ties them."""
    t = torch.arange(4.0)
    path = tmp_path / "old.safetensors"
    save_file({"a": t}, path, metadata={"format": "pt", "deconv2shuffle.aliases": json.dumps({"b": "a"})})
    ck = load_checkpoint(path)
    assert set(ck.state_dict) == {"a", "b"} and torch.equal(ck.state_dict["b"], t)
    assert "deconv2shuffle.aliases" not in ck.metadata
    save_checkpoint(tmp_path / "new.safetensors", ck.state_dict, like=ck)
    assert set(load_file(tmp_path / "new.safetensors")) == {"a", "b"}


def test_read_back_goes_through_the_library(tmp_path, monkeypatch):
    """A writer bug is caught by the library at read-back, not cancelled out by our own reader."""
    import deconv2shuffle.io.safetensors_write as w

    real = w._header

    def bad_header(placed, metadata):
        raw = real(placed, metadata)
        return raw.replace(b'"data_offsets":[0,', b'"data_offsets":[1,', 1)  # one byte off: a gap

    monkeypatch.setattr(w, "_header", bad_header)
    with pytest.raises(CheckpointError, match="safetensors library refuses the file just written"):
        save_checkpoint(tmp_path / "x.safetensors", {"a": torch.zeros(4), "b": torch.ones(2)})
    assert listing(tmp_path) == []


def test_untouched_big_tensors_are_copied_from_their_file_and_changed_ones_are_not(tmp_path, monkeypatch):
    import deconv2shuffle.io.safetensors_write as w

    g = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(512, 1024, generator=g), "other": torch.randn(512, 1024, generator=g)}
    save_file(state, tmp_path / "in.safetensors")
    copied = []
    real = w._copy
    monkeypatch.setattr(w, "_copy", lambda region, f, buf: (copied.append(region.offset), real(region, f, buf)))
    ck = load_checkpoint(tmp_path / "in.safetensors")
    save_checkpoint(tmp_path / "same.safetensors", ck.state_dict, like=ck)
    assert len(copied) == 2  # both 2 MiB tensors came from the file
    assert all(torch.equal(load_file(tmp_path / "same.safetensors")[k], v) for k, v in state.items())
    copied.clear()
    ck.state_dict["big"].view(-1)[:10].mul_(2)  # in place, through a view: the file no longer holds it
    save_checkpoint(tmp_path / "changed.safetensors", ck.state_dict, like=ck)
    assert len(copied) == 1
    back = load_file(tmp_path / "changed.safetensors")
    assert torch.equal(back["big"][0, :10], state["big"][0, :10] * 2) and torch.equal(back["other"], state["other"])
