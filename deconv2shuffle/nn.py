"""Modules and whole-model conversion: ``convert_model`` and the sub-pixel layers it puts in.

``convert_model`` replaces every ConvTranspose under every name it is reachable by (a module
registered twice stays one module), keeps a subclass's own ``forward`` around the converted
computation, and folds weight norm (``nn.utils.remove_weight_norm`` on a converted layer then
does nothing: the weight is already plain). The layers themselves live in ``subpixel.py``,
the tensor steps in ``shuffle.py``; both are importable from here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from .errors import ConversionError
from .geometry import Mode, SubPixelPlan, TargetGeometry, fit, smallest
from .rewrite import WEIGHT_NORM_LAYOUTS as WEIGHT_NORM_LAYOUTS
from .shuffle import PixelShuffle as PixelShuffle
from .shuffle import pixel_shuffle as pixel_shuffle
from .subpixel import _CONV as _CONV
from .subpixel import _TRANSPOSED as _TRANSPOSED
from .subpixel import SUBPIXEL_CLASSES as SUBPIXEL_CLASSES
from .subpixel import SubPixelConvTranspose1d as SubPixelConvTranspose1d
from .subpixel import SubPixelConvTranspose2d as SubPixelConvTranspose2d
from .subpixel import SubPixelConvTranspose3d as SubPixelConvTranspose3d
from .subpixel import _SubPixelConvTranspose as _SubPixelConvTranspose
from .subpixel import effective_weight as effective_weight
from .subpixel import subpixel_forward as subpixel_forward
from .subpixel import transposed_spec as transposed_spec


class FoldedWeightNorm(WeightNorm):
    """Stands where a converted layer's weight-norm hook was: the weight is folded, so there is
    nothing to recompute before forward and nothing to remove. It lets
    ``nn.utils.remove_weight_norm(layer)`` (HiFi-GAN style inference code) succeed as a no-op."""

    def __init__(self) -> None:
        super().__init__("weight", 0)

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        return None

    def remove(self, module: nn.Module) -> None:
        return None


def _keep_remove_weight_norm(module: nn.Module, new: nn.Module) -> None:
    if any(isinstance(h, WeightNorm) for h in module._forward_pre_hooks.values()):
        new.register_forward_pre_hook(FoldedWeightNorm())


class _KeptForward:
    """Mixin of the classes that keep a ConvTranspose subclass's code around the sub-pixel layer.

    The class of a converted ``Dec(nn.ConvTranspose1d)`` is ``SubPixel<Dec>(Dec, KeptForward1d)``:
    ``Dec.forward``'s ``super().forward(x)`` reaches the sub-pixel forward, every other method and
    attribute of ``Dec`` stays, and ``isinstance(layer, Dec)`` still holds.
    """

    _user_class: type[nn.Module]

    def __getattr__(self, name: str) -> Any:
        if name in ("weight", "bias", "weight_g", "weight_v"):
            raise AttributeError(
                f"{type(self).__name__} replaces {self._user_class.__name__} with conv + pixel shuffle and has no "
                f"{name!r}: its code must reach the layer through super().forward(...) (the converted weight is "
                "conv.weight)"
            )
        return super().__getattr__(name)  # type: ignore[misc]

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickle / deepcopy: rebuild the generated class from the user's (importable) class
        return (_new_kept_forward, (self._user_class,), self.__dict__)


class KeptForward1d(_KeptForward, SubPixelConvTranspose1d, nn.ConvTranspose1d):  # type: ignore[misc]
    pass


class KeptForward2d(_KeptForward, SubPixelConvTranspose2d, nn.ConvTranspose2d):  # type: ignore[misc]
    pass


class KeptForward3d(_KeptForward, SubPixelConvTranspose3d, nn.ConvTranspose3d):  # type: ignore[misc]
    pass


_KEPT_BASES: dict[int, type[nn.Module]] = {1: KeptForward1d, 2: KeptForward2d, 3: KeptForward3d}
_KEPT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _kept_forward_class(user: type[nn.Module]) -> type[nn.Module]:
    if user not in _KEPT_CLASSES:
        rank = next(r for r, base in enumerate(_TRANSPOSED, 1) if issubclass(user, base))
        name = f"SubPixel{user.__name__}"
        _KEPT_CLASSES[user] = type(name, (user, _KEPT_BASES[rank]), {"_user_class": user, "__qualname__": name})
    return _KEPT_CLASSES[user]


def _new_kept_forward(user: type[nn.Module]) -> nn.Module:
    cls = _kept_forward_class(user)
    return cls.__new__(cls)


def _user_class(module: nn.Module) -> type[nn.Module]:
    """The class the user wrote: torch's parametrize wraps it in a generated ``Parametrized...`` class."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls


def _keep_subclass(name: str, module: nn.Module, converted: _SubPixelConvTranspose) -> nn.Module:
    """``module`` (an instance of a ConvTranspose subclass) grafted onto the converted layer."""
    user = _user_class(module)
    for method in ("_output_padding", "_conv_forward"):
        if getattr(user, method, None) is not getattr(nn.ConvTranspose1d, method, None):
            raise ConversionError(
                f"layer {name!r}: {user.__module__}.{user.__qualname__} overrides {method}, which the converted "
                "layer would not call; convert it by hand (SubPixelConvTranspose*d.from_transposed) and port that code"
            )
    module_internals = set(vars(nn.Module()))
    state = {k: v for k, v in vars(module).items() if k not in module_internals}
    state.update({k: v for k, v in vars(converted).items() if k not in module_internals})
    dropped = {"weight", "bias", "weight_g", "weight_v"}
    clash = sorted((set(module._modules) | set(module._parameters) | set(module._buffers)) & {"conv", "shuffle"})
    if clash:
        raise ConversionError(
            f"layer {name!r}: {user.__qualname__} has its own {clash[0]!r}, the name the converted layer needs; "
            "rename it in the class"
        )
    new = _new_kept_forward(user)
    nn.Module.__init__(new)
    new.__dict__.update(state)
    for key, value in vars(module).items():
        if key in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"):
            continue
        if key in module_internals and hasattr(value, "items"):
            kept = {k: h for k, h in value.items() if not isinstance(h, WeightNorm)}
            new.__dict__[key].update(kept)  # the user's hooks stay, weight norm is folded
    new._parameters.update({k: v for k, v in module._parameters.items() if k not in dropped})
    new._buffers.update(module._buffers)
    new._non_persistent_buffers_set.update(module._non_persistent_buffers_set)
    new._modules.update({k: v for k, v in module._modules.items() if k != "parametrizations"})
    new._modules.update(converted._modules)
    new.training = module.training
    return new


def _check_ready(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ConversionError(
            f"layer {name!r} is a {type(module).__name__} that has not run yet, so its weights do not exist; "
            "run the model once on an example input, then convert it"
        )


def _convert_one(
    name: str, module: nn.Module, target: TargetGeometry | None, approx: bool, geometry: Mode
) -> nn.Module:
    _check_ready(name, module)
    spec = transposed_spec(module)
    new = SUBPIXEL_CLASSES[spec.rank].from_transposed(module, target, approx=approx, geometry=geometry)
    if _user_class(module) not in _TRANSPOSED:
        out = _keep_subclass(name, module, new)
    else:
        out = new
    _keep_remove_weight_norm(module, out)
    return out


def is_transposed(module: nn.Module) -> bool:
    """A ConvTranspose that ``convert_model`` would convert (not one it already converted)."""
    return isinstance(module, _TRANSPOSED) and not isinstance(module, _SubPixelConvTranspose)


def clone_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with hook-based weight norm.

    That weight norm keeps a computed (non-leaf) ``weight`` attribute, which deepcopy refuses; a
    detached copy stands in for it (the hook recomputes it from weight_g/weight_v before use).
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and not isinstance(w, nn.Parameter) and w.grad_fn is not None:
            memo[id(w)] = w.detach().clone()
    return copy.deepcopy(model, memo)


def convert_model(
    model: nn.Module,
    *,
    inplace: bool = False,
    targets: dict[str, TargetGeometry] | None = None,
    approx: bool = False,
    geometry: Mode = "minimal",
) -> nn.Module:
    """Return ``model`` with every ConvTranspose replaced by its exact sub-pixel equivalent.

    The input model is deep-copied unless ``inplace``. ``geometry`` picks the form of every layer:
    ``"minimal"`` (default: the fewest multiply-adds, cropping both ends), ``"tight"`` or
    ``"symmetric"`` (``ConvNd(padding=P)`` + shuffle, cropping only the end). ``targets`` maps
    module names to a given target geometry instead.

    A module reachable under several names is converted once and stays shared. A subclass of
    ``ConvTranspose*d`` keeps its class's code: its ``forward`` runs around the converted layer
    (``super().forward`` is the sub-pixel computation). Weight norm is folded; the layer keeps a
    no-op hook so ``nn.utils.remove_weight_norm(layer)`` still succeeds (parametrization-based
    ``remove_parametrizations`` has nothing left to remove and raises, as on any plain layer); as
    with torch's own weight norm, ``torch.jit.script`` needs that removal first.
    """
    if not inplace:
        model = clone_module(model)
    if is_transposed(model):
        raise ConversionError("the model itself is a ConvTranspose; use SubPixelConvTranspose*d.from_transposed")
    targets = targets or {}
    places: dict[int, list[tuple[nn.Module, str, str]]] = {}
    originals: dict[int, nn.Module] = {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for child, module in parent._modules.items():
            if module is not None and is_transposed(module):
                name = f"{parent_name}.{child}" if parent_name else child
                places.setdefault(id(module), []).append((parent, child, name))
                originals[id(module)] = module
    for key, where in places.items():
        names = [name for _, _, name in where]
        wanted = {repr(targets[n]): targets[n] for n in names if n in targets}
        if len(wanted) > 1:
            raise ConversionError(f"layer {' = '.join(names)} is one module given different targets")
        new = _convert_one(names[0], originals[key], next(iter(wanted.values()), None), approx, geometry)
        for parent, child, _ in where:
            parent._modules[child] = new
    return model


def plan_for(module: nn.Module, target: TargetGeometry | None = None, *, geometry: Mode = "minimal") -> SubPixelPlan:
    """The plan a module would be converted with."""
    spec = transposed_spec(module)
    return smallest(spec, geometry) if target is None else fit(spec, target)


__all__ = [
    "WEIGHT_NORM_LAYOUTS",
    "FoldedWeightNorm",
    "PixelShuffle",
    "SubPixelConvTranspose1d",
    "SubPixelConvTranspose2d",
    "SubPixelConvTranspose3d",
    "convert_model",
    "is_transposed",
    "pixel_shuffle",
    "plan_for",
    "transposed_spec",
]
