"""What ``inspect``, ``explain`` and ``spec`` do: read the checkpoint file if there is one, ask the core."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.draft import draft_from_models, draft_from_state
from ..core.explain import explain_geometry, explain_layer
from ..core.shapes import describe_checkpoint
from ..core.sources import Sources, load_sources
from ..core.spec import Spec, dump_spec, load_spec
from ..errors import UsageError
from .files import ReadOptions


def inspect_checkpoint(
    path: str | Path,
    sources: Sources | None = None,
    *,
    spec: str | Path | None = None,
    source_model: str | None = None,
    source_args: str | None = None,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything ``deconv2shuffle inspect`` shows about a checkpoint, as plain data.

    Args:
        path: the checkpoint.
        sources: where the ConvTranspose layers are listed; or give ``spec`` / ``source_model``
            (and ``source_args``) to load them here; with none, likely layers are guessed.
        state_dict_key, trust_pickle, allow_globals: how to read the file (see :func:`migrate`).

    Returns:
        See :func:`describe_checkpoint`: the container layout, every tensor by module, totals,
        and each ConvTranspose layer with its exact target.
    """
    if sources is None and (spec is not None or source_model is not None):
        sources = load_sources(spec, source_model, None, source_args, None)
    ckpt = ReadOptions.make(state_dict_key, trust_pickle, allow_globals).load(path)
    file_bytes = sum(p.stat().st_size for p in ckpt.files)
    if sources is not None and (sources.spec is not None or sources.source_model is not None):
        origin = "spec" if sources.spec is not None and sources.spec.layers else "model"
        return describe_checkpoint(ckpt, sources.layers(), origin=origin, file_bytes=file_bytes)
    return describe_checkpoint(ckpt, None, file_bytes=file_bytes)


def explain_checkpoint_layer(
    path: str | Path,
    spec: str | Path,
    layer: str,
    *,
    target_kernel: Sequence[int] | None = None,
    target_padding: Sequence[int] | None = None,
    length: int = 8,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> dict[str, Any]:
    """Explain one layer of a checkpoint, with the hyperparameters ``spec`` gives it.

    Args:
        path: the checkpoint.
        spec: the spec file listing ``layer``.
        layer: module path of the layer.
        target_kernel, target_padding: fit into this conv instead.
        length: example input length per axis.
        state_dict_key, trust_pickle, allow_globals: how to read the file.

    Returns:
        See :func:`explain_plan`.
    """
    layers = load_spec(spec).layers
    state = ReadOptions.make(state_dict_key, trust_pickle, allow_globals).load(path).state_dict
    return explain_layer(state, layers, layer, target_kernel, target_padding, length, str(path))


def draft_from_checkpoint(
    path: str | Path,
    state_dict_key: str | None = None,
    *,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> tuple[Spec, list[str]]:
    """A spec drafted from a checkpoint alone: every layer's stride and padding is a GUESS to check.

    Args:
        path: the checkpoint.
        state_dict_key, trust_pickle, allow_globals: how to read the file.

    Returns:
        The spec and comment lines for its head.
    """
    state = ReadOptions.make(state_dict_key, trust_pickle, allow_globals).load(path).state_dict
    return draft_from_state(state, str(path))


def explain_conversion(
    checkpoint: str | Path | None = None,
    *,
    spec: str | Path | None = None,
    layer: str | None = None,
    kernel: Sequence[int] = (),
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0,),
    output_padding: Sequence[int] = (0,),
    dilation: Sequence[int] = (1,),
    target_kernel: Sequence[int] | None = None,
    target_padding: Sequence[int] | None = None,
    length: int = 8,
    rank: int | None = None,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> dict[str, Any]:
    """Explain a layer of a checkpoint (``checkpoint``, ``spec``, ``layer``) or a geometry (``kernel``, ``stride``...).

    Args:
        checkpoint, spec, layer: see :func:`explain_checkpoint_layer`.
        kernel, stride, padding, output_padding, dilation, rank: see :func:`explain_geometry`.
        target_kernel, target_padding: fit into this conv instead of the smallest exact one.
        length: example input length per axis.
        state_dict_key, trust_pickle, allow_globals: how to read ``checkpoint``.

    Returns:
        See :func:`explain_plan`.

    Raises:
        UsageError: a checkpoint without ``spec`` and ``layer``, or no checkpoint and no ``kernel`` / ``stride``.
    """
    if checkpoint is not None:
        if spec is None or layer is None:
            raise UsageError("explaining a checkpoint layer needs spec= and layer=")
        return explain_checkpoint_layer(
            checkpoint,
            spec,
            layer,
            target_kernel=target_kernel,
            target_padding=target_padding,
            length=length,
            state_dict_key=state_dict_key,
            trust_pickle=trust_pickle,
            allow_globals=allow_globals,
        )
    if not kernel or not stride:
        raise UsageError("give kernel= and stride= (and padding=...), or a checkpoint with spec= and layer=")
    return explain_geometry(
        list(kernel),
        list(stride),
        list(padding),
        list(output_padding),
        list(dilation),
        list(target_kernel) if target_kernel else None,
        list(target_padding) if target_padding else None,
        length,
        rank,
    )


def draft_spec(
    checkpoint: str | Path | None = None,
    *,
    source_model: str | None = None,
    source_args: str | None = None,
    target_model: str | None = None,
    target_args: str | None = None,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    allow_globals: Sequence[str] = (),
) -> str:
    """A spec to edit, as TOML text: exact from a source model, or guessed from a checkpoint alone.

    Args:
        checkpoint: draft from this file alone (every layer marked as a GUESS).
        source_model, source_args: draft exactly from this model (preferred when given).
        target_model, target_args: pair the source layers with this model's convs.
        state_dict_key, trust_pickle, allow_globals: how to read ``checkpoint``.

    Returns:
        The spec's TOML text, with comments saying where it came from.

    Raises:
        UsageError: neither a source model nor a checkpoint.
    """
    if source_model is not None:
        spec, comments = draft_from_models(source_model, source_args, target_model, target_args)
    elif checkpoint is not None:
        spec, comments = draft_from_checkpoint(
            checkpoint, state_dict_key, trust_pickle=trust_pickle, allow_globals=allow_globals
        )
    else:
        raise UsageError("give source_model='file.py:Name' (exact) or a checkpoint (a guessed draft)")
    return dump_spec(spec, comments)
