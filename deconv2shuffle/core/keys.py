"""State-dict keys: wrapper prefixes, and the rename / drop rules for keys that are not converted.

Every regular expression a user gives (spec ``[rename]`` / ``drop``, or the ``rename`` / ``drop``
parameters) is compiled by :func:`compile_pattern`, so a bad pattern is one clear error whatever
its origin, and a pattern that could backtrack exponentially (``^(a+)+$``) is refused before it
meets a key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Deconv2ShuffleError, SpecError, UsageError
from ..rewrite import WEIGHT_NORM_LAYOUTS
from .regex_guard import backtracks

# DataParallel, torch.compile, Lightning, and their combinations
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "model.module.", "module._orig_mod.", "_orig_mod.module.")


def _weight_suffixes() -> list[str]:
    """The key suffixes under which a layer's weight can be stored (plain or weight norm).

    Returns:
        ``["weight", "weight_v", "parametrizations.weight.original1"]`` and any other layout the
        rewrite layer knows.
    """
    return ["weight"] + [v for _, v in WEIGHT_NORM_LAYOUTS]


def find_prefix(keys: Sequence[str], module: str, source_name: str = "checkpoint") -> str:
    """The prefix (``""``, ``module.``, ``model.``...) under which ``module``'s weight is stored.

    Args:
        keys: the state_dict's keys.
        module: module path of the layer, as a spec or model names it (``"decoder.up"``).
        source_name: the file the keys come from, for messages.

    Returns:
        The prefix; an unusual single wrapper prefix (``"net_g."``) is found too.

    Raises:
        SpecError: no key holds the weight, or several prefixes do.
    """
    wanted = [f"{module}.{s}" for s in _weight_suffixes()]
    keyset = set(keys)
    for prefix in ("", *KNOWN_PREFIXES):
        if any(prefix + w in keyset for w in wanted):
            return prefix
    found = sorted({k[: -len(w)] for k in keys for w in wanted if k.endswith("." + w)})
    if len(found) == 1:
        return found[0]
    if found:
        raise SpecError(
            f"{source_name}: layer {module!r} matches under several prefixes ({', '.join(found)}); "
            "name the layer by its full path in the spec"
        )
    close = difflib.get_close_matches(f"{module}.weight", list(keys), 3, 0.5)
    hint = f"; closest keys: {', '.join(close)}" if close else ""
    raise SpecError(f"{source_name}: layer {module!r} has no key '{module}.weight' (nor weight-norm keys){hint}")


def strip_prefix(key: str, prefix: str) -> str:
    """``key`` without ``prefix`` when it starts with it, else ``key`` unchanged."""
    return key[len(prefix) :] if prefix and key.startswith(prefix) else key


def compile_pattern(pattern: str, where: str, error: type[Deconv2ShuffleError] = UsageError) -> re.Pattern[str]:
    """Compile a user's regular expression, or raise one clear error naming where it came from.

    Args:
        pattern: the regular expression text.
        where: what to call it in the message (``"drop='['"``, ``"spec.toml: rename key '('"``).
        error: the error class to raise (:class:`UsageError` for parameters, :class:`SpecError`
            for spec files).

    Returns:
        The compiled pattern.

    Raises:
        Deconv2ShuffleError: (``error``) an invalid pattern, or one that can backtrack
            exponentially (see :func:`backtracks`).
    """
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise error(f"{where}: {pattern!r} is not a valid regular expression ({e})") from None
    except RecursionError:
        raise error(f"{where}: the regular expression is nested too deeply") from None
    if backtracks(pattern):
        raise error(
            f"{where}: {pattern!r} repeats a group that can match the same text in several ways (like (a+)+), "
            "which can take exponential time on some keys; rewrite it without the nested repetition"
        )
    return compiled


def compile_rule(
    pattern: str, repl: str, where: str, error: type[Deconv2ShuffleError] = UsageError
) -> tuple[re.Pattern[str], str]:
    """Compile one rename rule; a bad pattern or a bad group reference in ``repl`` is one clear error.

    Args:
        pattern: the regular expression matched against each key.
        repl: the replacement (``\\1`` and ``\\g<name>`` refer to the pattern's groups).
        where: what to call the rule in the message.
        error: the error class to raise.

    Returns:
        ``(compiled pattern, repl)``.
    """
    compiled = compile_pattern(pattern, where, error)
    try:
        compiled.sub(repl, "")  # the replacement template is parsed even when nothing matches
    except (re.error, IndexError) as e:
        raise error(f"{where}: {repl!r} is not a valid replacement for {pattern!r} ({e})") from None
    return compiled, repl


@dataclass(frozen=True)
class KeyRules:
    """Rename rules (applied in order) and drop patterns for the keys that are carried over."""

    rename: tuple[tuple[re.Pattern[str], str], ...] = ()
    drop: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def make(cls, rename: Sequence[tuple[str, str]] = (), drop: Sequence[str] = ()) -> KeyRules:
        """Compile ``rename`` (``(regex, replacement)`` pairs) and ``drop`` (regexes).

        Raises:
            UsageError: a pattern that is not a valid regular expression (the message names the
                ``rename=`` / ``drop=`` parameter and the pattern).
        """
        renames = tuple(compile_rule(p, r, f"rename=[{(p, r)!r}]") for p, r in rename)
        drops = tuple(compile_pattern(p, f"drop=[{p!r}]") for p in drop)
        return cls(renames, drops)

    def dropped(self, key: str) -> bool:
        """Whether a drop pattern matches ``key`` anywhere."""
        return any(p.search(key) for p in self.drop)

    def renamed(self, key: str) -> str:
        """``key`` after every rename rule, in order."""
        for pattern, repl in self.rename:
            key = pattern.sub(repl, key)
        return key
