"""Sharded safetensors: an index (``*.safetensors.index.json``) mapping each key to a shard file beside it.

Reading: the index is bounded in size and depth; every shard must be a plain name in the index's folder and,
symbolic links followed, stay inside it; each shard is opened by the ``safetensors`` library and holds no open
descriptor once read, so a checkpoint may have more shards than the open-file limit.

Writing: shard names come from the *output* name (``model.safetensors.index.json`` ->
``model-00001-of-00003.safetensors``...), never from the input's; the keys keep the input's grouping. All
shards are written to temporary names and read back, then published, and the index is published last. A
shard name that is an input file or a shard of the index being replaced is never overwritten: the new shards
then get names of their own, and once the new index is in place the replaced index's shards that it no
longer uses are removed.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .container import Checkpoint
from .formats import MAX_HEADER_BYTES, MAX_TENSORS, SAFETENSORS, SHARDED, show, sniff
from .publish import FileSet, check_destination
from .safetensors_read import read_safetensors, verify_safetensors
from .safetensors_write import LateValue, write_safetensors


def read_index(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The index's weight_map (key -> shard name) and its other entries; every shard checked to exist inside
    the index's folder."""
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_HEADER_BYTES:
                raise CheckpointError(f"{show(path)}: a sharded index over {MAX_HEADER_BYTES} bytes; refusing it")
            raw = f.read(MAX_HEADER_BYTES + 1)
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{show(path)}: not a valid safetensors index ({show(str(e))[:160]})") from None
    except RecursionError:
        raise CheckpointError(f"{show(path)}: not a valid safetensors index (JSON nested too deep)") from None
    except OSError as e:
        raise CheckpointError(f"{show(path)}: cannot read ({e.strerror})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{show(path)}: a sharded index needs a 'weight_map' of key -> shard file")
    if len(weight_map) > MAX_TENSORS:
        raise CheckpointError(f"{show(path)}: lists {len(weight_map)} tensors, more than the {MAX_TENSORS} allowed")
    folder = path.parent.resolve()
    for shard in dict.fromkeys(weight_map.values()):
        _check_shard_name(path, folder, shard, next(k for k, v in weight_map.items() if v == shard))
    return weight_map, {k: v for k, v in index.items() if k != "weight_map"}


def _check_shard_name(index: Path, folder: Path, shard: str, key: str) -> None:
    where = f"{show(index)}: weight_map[{key!r}] names shard {shard!r}"
    name = Path(shard)
    if name.is_absolute() or ".." in name.parts or name.name != shard or not shard.isprintable() or not shard:
        raise CheckpointError(f"{where} outside the index's folder; refusing it")
    target = index.parent / shard
    if not target.exists():
        raise CheckpointError(f"{where}, which does not exist")
    if target.resolve().parent != folder:
        raise CheckpointError(f"{where}, a link to a file outside the index's folder; refusing it")
    if not target.is_file():
        raise CheckpointError(f"{where}, which is not a regular file")


def load_sharded(path: Path) -> Checkpoint:
    """Load a sharded safetensors checkpoint: every key of the index, from its shard."""
    weight_map, extra = read_index(path)
    state: dict[str, torch.Tensor] = {}
    shard_metadata: dict[str, dict[str, str]] = {}
    regions: dict[int, Any] = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = path.parent / shard
        if sniff(shard_path) != SAFETENSORS:
            raise CheckpointError(f"{show(shard_path)}: a shard of {show(path.name)} is not a safetensors file")
        data = read_safetensors(shard_path)
        shard_metadata[shard] = data.metadata
        regions.update(data.regions)
        for key, value in data.tensors.items():
            if weight_map.get(key) == shard:
                state[key] = value
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise CheckpointError(f"{show(path)}: key {missing[0]!r} is listed in the index but absent from its shard")
    meta = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else {}
    return Checkpoint(
        path,
        SHARDED,
        state,
        shard_of=dict(weight_map),
        index_extra=extra,
        metadata={str(k): str(v) for k, v in (meta or {}).items()},
        shard_metadata=shard_metadata,
        regions=regions,
    )


def _stem(out: Path) -> str:
    stem = out.name[: -len(".index.json")] if out.name.lower().endswith(".index.json") else out.name
    return stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem


def _groups(state_dict: Mapping[str, torch.Tensor], like: Checkpoint | None) -> list[tuple[str | None, list[str]]]:
    """Keys grouped as the input grouped them: (input shard name or None, keys), in the input's shard order."""
    shard_of = dict(like.shard_of) if like is not None else {}
    order: list[str | None] = [*dict.fromkeys(shard_of.values())] or [None]
    groups: dict[str | None, list[str]] = {s: [] for s in order}
    for key in state_dict:
        shard = shard_of.get(key) or _sibling_shard(key, shard_of) or order[0]
        groups[shard].append(key)
    return [(s, keys) for s, keys in groups.items() if keys]


def _sibling_shard(key: str, shard_of: Mapping[str, str]) -> str | None:
    """A new key (``up.conv.weight``) goes to the shard of its module's old keys (``up.weight``)."""
    module = key.rsplit(".", 1)[0]
    while module:
        for old, shard in shard_of.items():
            if old.startswith(module + "."):
                return shard
        module = module.rpartition(".")[0]
    return None


def shard_names(out: Path, count: int, avoid: set[Path]) -> list[str]:
    """``STEM-00001-of-0000N.safetensors``; when one of those is in ``avoid`` (an input, a shard of the index
    being replaced), ``STEM-00001-of-0000N.<random>.safetensors`` instead."""
    stem = _stem(out)
    names = [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    taken = {p.resolve() for p in avoid}
    if any((out.parent / n).resolve() in taken for n in names):
        tag = secrets.token_hex(4)
        names = [f"{stem}-{i:05d}-of-{count:05d}.{tag}.safetensors" for i in range(1, count + 1)]
    return names


def _existing_shards(index: Path) -> list[Path]:
    """Shards the index at ``index`` (about to be replaced) uses: regular files inside its folder."""
    if not index.is_file():
        return []
    try:
        weight_map, _ = read_index(index)
    except CheckpointError:
        return []
    return [index.parent / s for s in dict.fromkeys(weight_map.values())]


def save_sharded(
    out: Path,
    state_dict: Mapping[str, torch.Tensor],
    like: Checkpoint | None,
    meta: Mapping[str, str | LateValue],
    *,
    force: bool,
    check_values: Callable[[str], bool],
    protect: Sequence[Path] = (),
) -> list[Path]:
    """Write a sharded checkpoint (see the module doc); returns the index, then the shards."""
    inputs = like.files if like is not None else []
    replaced = _existing_shards(out) if force else []
    groups = _groups(state_dict, like)
    names = shard_names(out, len(groups), {*inputs, *replaced, *protect})
    shard_meta = like.shard_metadata if like is not None else {}
    regions = like.regions if like is not None else {}
    weight_map: dict[str, str] = {}
    guard = [*protect, *inputs, *replaced]
    for name in names:  # refuse before writing anything
        check_destination(out.parent / name, force=force, protect=guard)
    with FileSet(force=force, protect=guard) as files:
        for (old, keys), name in zip(groups, names, strict=True):
            tensors = {k: state_dict[k] for k in keys}
            dest = out.parent / name
            written: dict[str, str] = {}

            def check(
                tmp: Path,
                dest: Path = dest,
                tensors: dict[str, torch.Tensor] = tensors,
                written: dict[str, str] = written,
            ) -> None:
                verify_safetensors(tmp, dest, tensors, written, check_values)

            with files.write(dest, check) as f:
                # each shard keeps its own metadata, with the provenance added
                shard_tags = {**shard_meta.get(old or "", {}), **meta}
                written.update(write_safetensors(f, tensors, shard_tags, show(dest), regions=regions))
            weight_map.update(dict.fromkeys(keys, name))
        index = dict(like.index_extra) if like is not None else {}
        index_meta = dict(index.get("metadata") or {}) if isinstance(index.get("metadata"), dict) else {}
        index_meta["total_size"] = sum(t.numel() * t.element_size() for t in state_dict.values())
        index["metadata"] = index_meta
        index["weight_map"] = weight_map
        with files.write(out, protect=list(protect), inputs=inputs) as f:
            f.write(json.dumps(index, indent=2).encode())
        # the replaced index's shards that the new one does not use go once it is in place
        published = files.commit(obsolete=[p for p in replaced if p.name not in names])
    return [published[-1], *published[:-1]]
