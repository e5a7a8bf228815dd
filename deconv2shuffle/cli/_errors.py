"""Library errors -> one line on stderr and an exit code; API parameter mentions -> flags.

The library's messages advise options in the API's words (``trust_pickle=True``,
``state_dict_key='ema'``, ``allow_globals=['mod.Name']``); here they become the flags a user of
the command line types (``--trust-pickle``, ``--state-dict-key ema``, ``--allow-global mod.Name``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import re
import shlex
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import Deconv2ShuffleError

F = TypeVar("F", bound=Callable[..., Any])
DEBUG = {"on": bool(os.environ.get("DECONV2SHUFFLE_DEBUG"))}

# API parameter -> flag; a list value repeats the flag once per item
FLAGS = {
    "accept_guesses": "--accept-guesses",
    "allow_globals": "--allow-global",
    "allow_missing": "--allow-missing",
    "approx": "--approx",
    "device": "--device",
    "dilation": "--dilation",
    "example_inputs": "--example-inputs",
    "drop": "--drop",
    "drop_unexpected": "--drop-unexpected",
    "force": "--force",
    "input_shape": "--input-shape",
    "jobs": "--jobs",
    "kernel": "--kernel",
    "layer": "--layer",
    "output_padding": "--output-padding",
    "padding": "--padding",
    "rename": "--rename",
    "shard": "--shard",
    "source_args": "--source-args",
    "source_model": "--source-model",
    "spec": "--spec",
    "state_dict_key": "--state-dict-key",
    "stride": "--stride",
    "target_args": "--target-args",
    "target_kernel": "--target-kernel",
    "target_model": "--target-model",
    "target_padding": "--target-padding",
    "to": "--to",
    "tolerance": "--tolerance",
    "trust_pickle": "--trust-pickle",
}
_NAME = re.compile(rf"(?<![\w.-])({'|'.join(FLAGS)})=")
_BARE = re.compile(r"[^\s,;)\]]+?(?=\.?(?:[\s,;)\]]|$))")
_CLOSER = {"[": "]", "(": ")", "'": "'", '"': '"'}


def _scan_value(text: str, start: int) -> tuple[Any, int]:
    """The value written at ``text[start:]`` (a Python literal, or a bare word) and where it ends."""
    if start >= len(text) or text[start].isspace():
        return None, start
    closer = _CLOSER.get(text[start])
    if closer is not None:
        ends = [j for j in range(start + 1, len(text)) if text[j] == closer]
        for j in ends:
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
                return ast.literal_eval(text[start : j + 1]), j + 1
        if ends:  # a placeholder such as (N, C, H, W)
            return text[start + 1 : ends[0]].replace(" ", ""), ends[0] + 1
    bare = _BARE.match(text, start)
    if bare is None:
        return None, start
    word = bare.group(0)
    with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
        return ast.literal_eval(word), bare.end()
    return word, bare.end()


def _word(value: Any) -> str:
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return ",".join(map(str, value))  # a shape as the command line writes it
    return shlex.quote(str(value))


def _flag(name: str, value: Any) -> str:
    flag = FLAGS[name]
    if value is None or value is True:
        return flag
    if value is Ellipsis:  # "padding=..." : the flag, with its value left open
        return f"{flag} ..."
    if name == "shard" and isinstance(value, tuple) and len(value) == 2:
        return f"{flag} {value[0]}/{value[1]}"
    if name == "rename":
        pairs = value if isinstance(value, list) else [value]
        if all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            return " ".join(f"{flag} {shlex.quote(f'{p}={r}')}" for p, r in pairs)
    if isinstance(value, list) and name not in ("input_shape",):
        return " ".join(f"{flag} {_word(v)}" for v in value)
    return f"{flag} {_word(value)}"


def to_flags(message: str) -> str:
    """Rewrite the API parameter mentions in a library message into command-line flags.

    Args:
        message: a library message (``"... rerun with trust_pickle=True ..."``).

    Returns:
        The message with each known ``name=value`` mention written as its flag
        (``"... rerun with --trust-pickle ..."``); other text is left as it is.
    """
    out: list[str] = []
    pos = 0
    for match in _NAME.finditer(message):
        if match.start() < pos:
            continue  # inside a value already rewritten
        value, end = _scan_value(message, match.end())
        out += [message[pos : match.start()], _flag(match.group(1), value)]
        pos = end
    out.append(message[pos:])
    return "".join(out)


def _fail(message: str, code: int, json_out: bool, report: dict[str, Any] | None = None) -> typer.Exit:
    """Print the one error line (and, for ``--json``, a JSON object on stdout); the exit to raise."""
    from . import _render

    if json_out:
        _render.print_json({**(report or {}), "ok": False, "error": message, "exit_code": code})
    _render.error(message)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Our errors become one line on stderr and their exit code; unexpected ones too, unless --debug.

    A command run with ``--json`` also prints a JSON object on stdout when it fails: the failed
    run's report when the error carries one (``migrate``), else ``ok``, ``error`` and
    ``exit_code``, so scripts always get JSON to parse.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        try:
            return func(*args, **kwargs)
        except Deconv2ShuffleError as e:
            raise _fail(to_flags(str(e)), e.exit_code, json_out, e.report) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; no partial output was left", 130, json_out) from None
        except typer.BadParameter as e:  # a bad value found inside the command: still exit 2
            if not json_out:
                raise
            raise _fail(e.format_message(), 2, json_out) from None
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: usage errors keep exit 2
            raise
        except Exception as e:
            if DEBUG["on"]:
                raise
            message = f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)"
            raise _fail(message, 3, json_out) from None

    return wrapper  # type: ignore[return-value]
