"""Get a ready converted model in one call, and save converted diffusers models safely.

A converted checkpoint holds ``<layer>.conv.weight`` where the original held ``<layer>.weight``,
so it loads into the *converted* model, not into the class that trained it::

    from deconv2shuffle.loading import load_converted
    from monai.networks.nets import UNet

    model = load_converted(lambda: UNet(2, 1, 2, (16, 32, 64), (2, 2)), "converted.pt")

:func:`load_converted` builds the model, converts it with :func:`~deconv2shuffle.convert_model`,
loads the file with ``strict=True`` and returns it in eval mode. The file may hold the converted
weights or the original ones (then they load into the original model, which is then converted):
both give the same model.

diffusers loads a folder with ``Model.from_pretrained(folder)``. Given converted weights under
the usual name it builds the original model, re-initialises every layer it cannot match with
only a warning, and returns a model that is silently wrong. :func:`save_converted_pretrained`
therefore writes the weights as ``subpixel_model.safetensors``, a name diffusers never reads
(``from_pretrained`` of that folder fails loudly: no ``diffusion_pytorch_model`` file), and marks
``config.json`` with a ``_deconv2shuffle`` entry (diffusers ignores entries starting with
``_``). :func:`load_converted_pretrained` reads such a folder::

    save_converted_pretrained(UNet1DModel.from_pretrained("original"), "converted")
    model = load_converted_pretrained(UNet1DModel, "converted")
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CheckpointError, OutputExistsError, SpecError

SUBPIXEL_WEIGHTS_NAME = "subpixel_model.safetensors"
CONFIG_MARKER = "_deconv2shuffle"
_CONFIG_NAME = "config.json"

if TYPE_CHECKING:
    from torch import nn

    from .geometry import TargetGeometry


def _build(model_or_factory: nn.Module | Callable[[], nn.Module]) -> tuple[nn.Module, bool]:
    """The model, and whether it was built here (then it may be converted in place)."""
    from torch import nn

    if isinstance(model_or_factory, nn.Module):
        return model_or_factory, False
    if not callable(model_or_factory):
        raise SpecError(
            "load_converted: expected an nn.Module or a function that builds one, "
            f"got {type(model_or_factory).__name__}"
        )
    model = model_or_factory()
    if not isinstance(model, nn.Module):
        raise SpecError(f"load_converted: the factory returned a {type(model).__name__}, not an nn.Module")
    return model, True


def _strip_prefix(state: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
    """Drop a prefix every key shares ("model.", "module.") when that makes the keys line up."""
    if not state or set(state) & wanted:
        return state
    first = next(iter(state))
    parts = first.split(".")
    for n in range(1, min(len(parts), 4)):
        prefix = ".".join(parts[:n]) + "."
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) & wanted:
                return stripped
    return state


def _fill_aliases(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Tensors shared under several names (tied weights) may be stored once: copy to every name."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if hasattr(tensor, "data_ptr"):
            groups.setdefault(id(tensor), []).append(name)
    filled = dict(state)
    for names in groups.values():
        present = [n for n in names if n in filled]
        for name in names:
            if name not in filled and present:
                filled[name] = filled[present[0]]
    return filled


def _load_into(model: nn.Module, state: Mapping[str, Any], strict: bool, path: Path) -> None:
    for key, want in model.state_dict().items():
        have: Any = state.get(key)
        shape = getattr(have, "shape", None)
        if shape is not None and tuple(shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(shape)}, the model wants {tuple(want.shape)}; "
                "build the model with the arguments it was trained with"
            )
    result = model.load_state_dict(dict(state), strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
        raise CheckpointError(
            f"{path}: does not load into the model: {'; '.join(parts)}; build the model with the arguments "
            "it was trained with (and the targets= the file was converted with)"
        )


def load_converted(
    model_or_factory: nn.Module | Callable[[], nn.Module],
    checkpoint_path: str | os.PathLike[str],
    *,
    state_dict_key: str | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
    targets: dict[str, TargetGeometry] | None = None,
    allow_globals: Sequence[str] = (),
) -> nn.Module:
    """The converted model with a checkpoint's weights, in eval mode.

    Args:
        model_or_factory: the model as trained (with ConvTranspose layers), or a function that
            builds it; a given model is not modified.
        checkpoint_path: the converted weights (written by :func:`~deconv2shuffle.migrate`) or the
            original ones, in any format :func:`~deconv2shuffle.load_checkpoint` reads (a MONAI
            bundle's ``{"net": ...}``, a training checkpoint's ``{"state_dict": ..., "args": ...}``);
            a prefix shared by every key (``model.``, ``module.``) is dropped when that makes the
            keys match.
        state_dict_key: the entry holding the weights (default: found).
        strict: load with ``strict=True`` (default): every key must match.
        trust_pickle: UNSAFE: let the file's pickle run any code; only for files you trust.
        targets: target geometries as in :func:`~deconv2shuffle.convert_model`; they must be the
            ones the file was converted with.
        allow_globals: globals (``"argparse.Namespace"``) the pickle may use besides tensors and
            containers, a narrower choice than ``trust_pickle``.

    Returns:
        ``convert_model(model)`` with the weights loaded, in eval mode.

    Raises:
        CheckpointError: the file cannot be read, or its keys or shapes do not fit the model.
    """
    from .checkpoint import load_checkpoint
    from .nn import _TRANSPOSED, convert_model

    path = Path(checkpoint_path)
    model, built_here = _build(model_or_factory)
    layers = [name for name, m in model.named_modules() if isinstance(m, _TRANSPOSED)]
    extra = {"allow_globals": list(allow_globals)} if allow_globals else {}
    ckpt = load_checkpoint(path, state_dict_key=state_dict_key, trust_pickle=trust_pickle, **extra)
    state: dict[str, Any] = {**ckpt.state_dict, **getattr(ckpt, "passthrough", {})}
    original_keys = set(model.state_dict())
    state = _strip_prefix(state, original_keys | {f"{name}.conv.weight" for name in layers})
    # a ConvTranspose's own keys (weight, bias, weight norm's parts) appear only in an unconverted file
    layer_keys = {k for k in original_keys for name in layers if k.startswith(name + ".")}
    if set(state) & layer_keys:
        original = model if built_here else _clone(model)
        _load_into(original, _fill_aliases(state, original), strict, path)
        converted = convert_model(original, inplace=True, targets=targets)
    else:
        converted = convert_model(model, inplace=built_here, targets=targets)
        _load_into(converted, _fill_aliases(state, converted), strict, path)
    return converted.eval()


def _clone(model: nn.Module) -> nn.Module:
    from .nn import clone_module

    return clone_module(model)


# --------------------------------------------------------------------------------------------
# diffusers folders


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_converted_pretrained(model: nn.Module, folder: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write a diffusers model, converted, to ``folder`` so that only :func:`load_converted_pretrained` loads it.

    ``model`` is a diffusers model (``ModelMixin`` + ``ConfigMixin``) with its weights, converted
    or not. Writes ``subpixel_model.safetensors`` and ``config.json`` (with a ``_deconv2shuffle``
    entry listing the converted layers). ``from_pretrained`` of the folder fails for want of a
    ``diffusion_pytorch_model`` file instead of re-initialising the converted layers.

    Args:
        model: the diffusers model, converted or not.
        folder: where to write; a folder that already has files needs ``force``.
        force: overwrite the folder's files (an original ``diffusion_pytorch_model`` file there is
            removed, or ``from_pretrained`` would load it silently).

    Returns:
        The folder.

    Raises:
        SpecError: the model has no diffusers config.
        OutputExistsError: the folder is a file, or is not empty without ``force``.
    """
    from safetensors.torch import save_model

    from .nn import _TRANSPOSED, SUBPIXEL_CLASSES, convert_model

    folder = Path(folder)
    to_json = getattr(model, "to_json_string", None)
    if not callable(to_json) or not hasattr(model, "config"):
        raise SpecError(
            f"save_converted_pretrained: a {type(model).__name__} has no diffusers config; "
            "save other models with torch.save(convert_model(model).state_dict(), path)"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OutputExistsError(f"{folder}: the folder is not empty; pass force=True to overwrite its files")
    if any(isinstance(m, _TRANSPOSED) for m in model.modules()):
        model = convert_model(model)
    subpixel = tuple(SUBPIXEL_CLASSES.values())
    layers = [name for name, m in model.named_modules() if isinstance(m, subpixel)]
    config = json.loads(str(to_json()))
    config[CONFIG_MARKER] = {"version": __version__, "weights": SUBPIXEL_WEIGHTS_NAME, "converted_layers": layers}
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        (folder / name).unlink(missing_ok=True)  # force=True: an old original file would load silently
    _atomic_write(folder / SUBPIXEL_WEIGHTS_NAME, lambda p: save_model(model, str(p), metadata={"format": "pt"}))
    _atomic_write(folder / _CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return folder


def load_converted_pretrained(model_class: Any, folder: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """The converted diffusers model saved by :func:`save_converted_pretrained`, in eval mode.

    Args:
        model_class: the diffusers class that trained it (``UNet1DModel``...): the model is built
            with ``model_class.from_config``, converted, and loaded.
        folder: the folder :func:`save_converted_pretrained` wrote.
        strict: load with ``strict=True`` (default).

    Returns:
        The converted model with its weights, in eval mode.

    Raises:
        CheckpointError: the folder holds no converted model (an unconverted one is named as
            such), or its weights are missing or do not fit.
    """
    folder = Path(folder)
    if not (folder / _CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder}: no {_CONFIG_NAME}; save the model with save_converted_pretrained")
    try:
        config = model_class.load_config(str(folder))
    except Exception as e:
        raise CheckpointError(f"{folder}: {model_class.__name__}.load_config failed: {e}") from None
    marker = config.get(CONFIG_MARKER)
    if not isinstance(marker, dict):
        raise CheckpointError(
            f"{folder}: config.json has no {CONFIG_MARKER!r} entry, so the folder holds an unconverted model; "
            f"load it with {model_class.__name__}.from_pretrained and convert it with convert_model(model)"
        )
    weights = folder / str(marker.get("weights", SUBPIXEL_WEIGHTS_NAME))
    if not weights.is_file():
        raise CheckpointError(f"{weights}: the converted weights listed in {folder / _CONFIG_NAME} are missing")
    model = load_converted(lambda: model_class.from_config(config), weights, strict=strict)
    _check_layers(model, marker.get("converted_layers"), folder)
    return model


def _check_layers(model: nn.Module, listed: Any, folder: Path) -> None:
    from .nn import SUBPIXEL_CLASSES

    if not isinstance(listed, list):
        return
    subpixel = tuple(SUBPIXEL_CLASSES.values())
    have = [name for name, m in model.named_modules() if isinstance(m, subpixel)]
    if sorted(have) != sorted(listed):
        raise CheckpointError(
            f"{folder}: config.json lists converted layers {listed[:3]}..., the rebuilt model has {have[:3]}...; "
            "the folder was written for another model"
        )


__all__ = [
    "CONFIG_MARKER",
    "SUBPIXEL_WEIGHTS_NAME",
    "load_converted",
    "load_converted_pretrained",
    "save_converted_pretrained",
]
