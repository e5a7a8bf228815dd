"""Import what a ``"package.module:Name"`` or ``"path/to/file.py:Name"`` reference names.

Models (``--source-model``) and example-input functions (``--example-inputs``) are named this
way. A file path is imported under a private module name, with its folder on ``sys.path`` while
it runs (so it can import its neighbours); a dotted path is imported as usual. Importing runs the
file's code: references name code the user trusts.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SpecError


def is_file_reference(where: str) -> bool:
    """Whether the part before ``:`` is a file path (``dir/m.py``) rather than a dotted module name."""
    return where.endswith(".py") or "/" in where or "\\" in where


def import_attribute(
    ref: str,
    what: str,
    hint: Callable[[str, str, ModuleNotFoundError], str] | None = None,
    kind: str = "attribute",
) -> Any:
    """The attribute ``ref`` names.

    Args:
        ref: ``"package.module:Name"`` or ``"path/to/file.py:Name"``.
        what: how messages name the reference (``"source_model='m.py:Net'"``).
        hint: called with ``(where, name, error)`` when a module is not found, for advice to add.
        kind: what the attribute is, for the message when it is missing (``"function"``).

    Returns:
        The attribute (a class, a factory, a function...).

    Raises:
        SpecError: a malformed reference, a missing file, a failed import, or no such attribute.
    """
    where, _, name = ref.rpartition(":")
    if not where or not name:
        raise SpecError(f"{what}: expected 'package.module:Name' or 'path/to/file.py:Name'")
    try:
        module = _load_file(where, what) if is_file_reference(where) else importlib.import_module(where)
    except SpecError:
        raise
    except ModuleNotFoundError as e:
        advice = hint(where, name, e) if hint else ""
        raise SpecError(f"{what}: importing {where} failed: ModuleNotFoundError: {e}{advice}") from None
    except Exception as e:  # the user's code may raise anything while importing
        raise SpecError(f"{what}: importing {where} failed: {type(e).__name__}: {first_line(e)}") from None
    attribute = getattr(module, name, None)
    if attribute is None:
        raise SpecError(f"{what}: {where} has no {kind} {name!r}")
    return attribute


def _load_file(where: str, what: str) -> Any:
    path = Path(where)
    if not path.is_file():
        raise SpecError(f"{what}: file {where} not found")
    mod_name = f"_deconv2shuffle_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{what}: cannot import {where}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
