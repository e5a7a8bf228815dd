"""Checkpoint formats: what a file is (from its bytes), what an output name asks for, and the bounds.

Nothing here imports torch: the command line reaches this module at ``--help`` time.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
SAFETENSORS = "safetensors"
SHARDED = "safetensors-sharded"

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# Bounds on what a file may make us hold. A real state dict stays far below each.
MAX_TENSORS = 2_000_000  # tensors in one checkpoint (all shards together)
MAX_HEADER_BYTES = 100_000_000  # safetensors header, sharded index (the safetensors library's own cap)
MAX_PICKLE_BYTES = 1 << 30  # the pickle stream of a torch file (its tensor data is separate)
MAX_DEPTH = 100  # nesting of containers in a torch checkpoint
MAX_EXPANSION = 4  # bytes the tensors may materialise, as a multiple of the file size (tied views)
MAX_EXPANSION_SLACK = 1 << 20  # ... plus this much, for tiny files


def show(path: str | os.PathLike[str]) -> str:
    """A path as it goes into a one-line message: control characters escaped, nothing else changed."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(text: str, limit: int = 200) -> str:
    """The first non-blank line of an error text from below (torch, safetensors), shortened."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no detail")
    return show(line[:limit])


def sniff(path: Path) -> str:
    """The checkpoint format of ``path`` from its first bytes; raises with what the file looks like."""
    from ..errors import CheckpointError

    try:
        if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
            raise CheckpointError(
                f"{show(path)}: is not a regular file (a FIFO, socket or device); give a checkpoint file"
            )
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"{show(path)}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(
            f"{show(path)}: is a folder; give a checkpoint file or a *.safetensors.index.json"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{show(path)}: cannot read ({e.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{show(path)}: the file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    # safetensors: an 8-byte header length, then JSON (the library allows leading whitespace)
    looks_st = len(head) >= 9 and head[8:].lstrip(b" \t\r\n")[:1] == b"{"
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if looks_st and 8 + n <= size:
        return SAFETENSORS
    if head.lstrip()[:1] == b"{":
        return SHARDED
    if looks_st:
        raise CheckpointError(
            f"{show(path)}: safetensors header length {n} runs past the end of the file ({size} bytes); "
            "the file is truncated or corrupt"
        )
    raise CheckpointError(
        f"{show(path)}: not a checkpoint ({_foreign_kind(head)}); expected a torch file (.pth/.pt/.bin/.ckpt), "
        ".safetensors or a *.safetensors.index.json"
    )


def _foreign_kind(head: bytes) -> str:
    known = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip archive",
        b"\x93NUMPY": "a NumPy array",
        b"\x89HDF": "an HDF5 file",
        b"\x08": "possibly an ONNX model",
    }
    for magic, name in known.items():
        if head.startswith(magic):
            return name
    if head.startswith(b"\x80"):
        return "a plain pickle, not written by torch.save"
    return f"unknown content starting with {head[:8]!r}"


def output_format(path: Path) -> str:
    """The format an output name asks for: ``*.index.json`` sharded, ``*.safetensors``, else a torch zip."""
    name = path.name.lower()
    if name.endswith(".index.json"):
        return SHARDED
    if name.endswith(".safetensors"):
        return SAFETENSORS
    return TORCH_ZIP
