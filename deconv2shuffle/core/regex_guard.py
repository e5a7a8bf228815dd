"""A static check for regular expressions that can backtrack exponentially (``^(a+)+$``).

Python's ``re`` backtracks: a repeated group whose body can match the same text in several ways
(a nested repetition, an alternation, a back-reference) tries every split of the text, which
takes exponential time on a key that almost matches. Key patterns never need that; refusing
them before they run costs nothing. The check reads the standard library's own parse of the
pattern and accepts a repeated group when each repetition starts or ends with a literal character
that nothing else in the group can match (``(\\.\\d+)+``, ``(\\w+\\.)+``): the repetitions then split
the text in one way only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

# the parser behind re.compile, and its opcodes (Python 3.11 moved them under re)
_sre: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")
_c: Any = importlib.import_module("re._constants" if sys.version_info >= (3, 11) else "sre_constants")

_BACKTRACKING = (_c.MAX_REPEAT, _c.MIN_REPEAT)
_REPEATS = (*_BACKTRACKING, *((_c.POSSESSIVE_REPEAT,) if hasattr(_c, "POSSESSIVE_REPEAT") else ()))
Items = Iterable[tuple[Any, Any]]


def backtracks(pattern: str) -> bool:
    """Whether ``pattern`` repeats a group that can match the same text in several ways.

    Args:
        pattern: a regular expression that ``re.compile`` accepts.

    Returns:
        True for ``(a+)+``, ``(a|aa)*``, ``(.*x)*``, ``((a)\\1)+`` and the like; False for
        patterns whose matching time stays polynomial (``^module\\.(.*)$``, ``(\\.\\d+)+``).
    """
    parsed = _sre.parse(pattern)
    fold = bool(parsed.state.flags & _c.SRE_FLAG_IGNORECASE) or "(?i" in pattern or "(?a" in pattern
    return _risky(parsed, fold)


def _children(op: Any, av: Any) -> list[Items]:
    """The sub-sequences of one parsed item."""
    if op in _REPEATS:
        return [av[2]]
    if op is _c.SUBPATTERN:
        return [av[3]]
    if op is _c.BRANCH:
        return list(av[1])
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return [av[1]]
    if op is _c.GROUPREF_EXISTS:
        return [x for x in av[1:] if x is not None]
    if op is getattr(_c, "ATOMIC_GROUP", None):
        return [av]
    return []


def _risky(items: Items, fold: bool) -> bool:
    for op, av in items:
        if op in _BACKTRACKING and av[1] > 1 and _ambiguous(av[2], fold):
            return True
        if any(_risky(child, fold) for child in _children(op, av)):
            return True
    return False


def _varies(items: Items) -> bool:
    """Whether a sequence contains anything that can match a text in more than one way."""
    for op, av in items:
        if op in _REPEATS and av[0] != av[1]:
            return True
        if op in (_c.BRANCH, _c.GROUPREF, _c.GROUPREF_EXISTS):
            return True
        if any(_varies(child) for child in _children(op, av)):
            return True
    return False


def _ambiguous(body: Items, fold: bool) -> bool:
    """Whether repeating ``body`` can split a text in several ways: it can, unless each repetition
    starts (or ends) with a literal character that nothing else in the body can match."""
    items = _flat(body)
    if not _varies(items):
        return False
    for edge, rest in ((items[:1], items[1:]), (items[-1:], items[:-1])):
        if edge and edge[0][0] is _c.LITERAL and not _can_match(rest, chr(edge[0][1]), fold):
            return False
    return True


def _flat(items: Items) -> list[tuple[Any, Any]]:
    """The sequence with its groups opened (``(a(b))c`` -> ``a b c``), for looking at its ends."""
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        out += _flat(av[3]) if op is _c.SUBPATTERN else [(op, av)]
    return out


def _can_match(items: Items, ch: str, fold: bool) -> bool:
    """Whether anything in ``items`` can consume the character ``ch`` (True when unsure)."""
    for op, av in items:
        if op is _c.LITERAL:
            hit = _same(chr(av), ch, fold)
        elif op is _c.NOT_LITERAL:
            hit = not _same(chr(av), ch, fold) or fold
        elif op is _c.IN:
            hit = _in_set(av, ch, fold)
        elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            hit = False  # consumes nothing
        elif children := _children(op, av):
            hit = any(_can_match(child, ch, fold) for child in children)
        else:
            hit = True  # ANY, a back-reference, or anything not understood here
        if hit:
            return True
    return False


def _same(a: str, b: str, fold: bool) -> bool:
    return a == b or (fold and a.casefold() == b.casefold())


_CATEGORIES: dict[str, Callable[[str], bool]] = {
    "DIGIT": str.isdigit,
    "WORD": lambda c: c.isalnum() or c == "_",
    "SPACE": str.isspace,
    "LINEBREAK": lambda c: c == "\n",
}


def _in_set(members: Items, ch: str, fold: bool) -> bool:
    """Whether a character class ``[...]`` contains ``ch`` (True when unsure)."""
    negate, hit = False, False
    for op, av in members:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            hit = hit or _same(chr(av), ch, fold)
        elif op is _c.RANGE:
            hit = hit or av[0] <= ord(ch) <= av[1] or fold
        elif op is _c.CATEGORY:
            name = str(av).removeprefix("CATEGORY_").removeprefix("UNI_").removeprefix("LOC_")
            positive = not name.startswith("NOT_")
            test = _CATEGORIES.get(name.removeprefix("NOT_"))
            hit = hit or test is None or test(ch) == positive
        else:
            return True
    return hit != negate or (negate and fold)
