"""Optimizer state beside the weights: rearranged with the weights, or dropped, and always reported.

``torch.optim`` state_dicts index parameters by position in ``model.parameters()``, which is the
state_dict order without buffers. When the saved per-parameter moments line up with the old
parameters (same count, same shapes), each moment tensor of a converted parameter gets the same
rearrangement as the parameter (zeros on new taps: a fresh moment there), so training resumes
from the converted checkpoint. When they do not line up, the optimizer state is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "_extra_state")
OPTIMIZER_KEYS = ("optimizer_states", "optimizer", "optimizer_state_dict", "optim", "opt")

Transform = Callable[[torch.Tensor], torch.Tensor]


def _is_optim_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _param_keys(state: Mapping[str, torch.Tensor], buffers: set[str]) -> list[str]:
    return [k for k in state if k not in buffers and not k.endswith(BUFFER_SUFFIXES)]


def remap_one(
    optim: Mapping[str, Any],
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    mapping: Mapping[str, tuple[str | None, Transform | None]],
    buffers: set[str],
) -> dict[str, Any] | None:
    """A new optimizer state_dict for ``new_state``, or ``None`` when it cannot be mapped.

    ``mapping``: old key -> (new key or None when it no longer exists, transform for tensors of the
    parameter's shape or None to start that parameter's state afresh).
    """
    old_params = _param_keys(old_state, buffers)
    groups = optim["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(old_params) or len(set(ids)) != len(ids):
        return None
    key_of = dict(zip(ids, old_params, strict=True))
    for idx, entry in optim["state"].items():
        key = key_of.get(idx)
        if key is None or not isinstance(entry, Mapping):
            return None
        shape = old_state[key].shape
        for value in entry.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shape:
                return None
    new_params = _param_keys(new_state, buffers)
    new_index = {k: i for i, k in enumerate(new_params)}
    group_of_new: dict[str, int] = {}
    new_entries: dict[int, Any] = {}
    for gi, group in enumerate(groups):
        for idx in group["params"]:
            old_key = key_of[idx]
            new_key, transform = mapping.get(old_key, (old_key, identity))
            if new_key is None or new_key not in new_index:
                continue
            group_of_new.setdefault(new_key, gi)
            entry = optim["state"].get(idx)
            if entry is None or transform is None:
                continue
            new_entries[new_index[new_key]] = {
                name: transform(v) if isinstance(v, torch.Tensor) and v.dim() > 0 else v for name, v in entry.items()
            }
    # parameters that exist only in the new state (a folded weight-norm weight) join their module's group
    for key in new_params:
        if key not in group_of_new:
            module = key.rpartition(".")[0]
            gi = next((g for k, g in group_of_new.items() if k.rpartition(".")[0] == module), 0)
            group_of_new[key] = gi
    new_groups = []
    for gi, group in enumerate(groups):
        g = dict(group)
        g["params"] = [new_index[k] for k in new_params if group_of_new[k] == gi]
        new_groups.append(g)
    return {**optim, "state": dict(sorted(new_entries.items())), "param_groups": new_groups}


def identity(t: torch.Tensor) -> torch.Tensor:
    """The transform of a parameter whose layout does not change."""
    return t


def remap_container(
    container: Mapping[str, Any],
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    mapping: Mapping[str, tuple[str | None, Transform | None]],
    buffers: set[str],
) -> tuple[dict[str, Any], str | None]:
    """Container entries to replace, and one sentence for the report (None: no optimizer state)."""
    updates: dict[str, Any] = {}
    notes: list[str] = []
    for key in OPTIMIZER_KEYS:
        value = container.get(key)
        states = value if isinstance(value, list) else [value]
        if not states or not all(_is_optim_state(s) for s in states):
            continue
        new = [remap_one(s, old_state, new_state, mapping, buffers) for s in states if s is not None]
        if all(n is not None for n in new):
            updates[key] = new if isinstance(value, list) else new[0]
            notes.append(
                f"'{key}': per-parameter moments of converted layers rearranged like their weights "
                "(zeros on new taps; weight-norm layers restart their moments); training can resume"
            )
        else:
            updates[key] = [] if isinstance(value, list) else None
            notes.append(
                f"'{key}': dropped, because its parameters do not line up with the state_dict "
                "(count or shapes differ); training resumes with a fresh optimizer"
            )
    return updates, ("; ".join(notes) or None)
