"""Closed sets of options: checking a value against one and suggesting the closest valid value.

The one place where a configuration class or a command checks a choice (``mode``, ``lr_schedule``, ``planner``,
...), so that every such error reads alike: ``name='value': choose one of a, b, c (did you mean 'b'?)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def closest(value: object, candidates: Iterable[object]) -> str | None:
    """The candidate ``value`` was most likely meant to be (difflib), or None if none is close."""
    found = difflib.get_close_matches(str(value), [str(c) for c in candidates], n=1)
    return found[0] if found else None


def parse_fold(fold: int | str) -> int | str:
    """A fold as nnU-Net names it: ``"all"`` (any case, spaces around) or a whole number; ValueError otherwise (the
    range a fold may take is its user's to check)."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold {fold!r}: give a fold number or 'all'") from None


def check_choice(name: str, value: T, options: Iterable[T]) -> T:
    """``value`` if it is one of ``options``; else ValueError naming ``name``, the value, the options and the closest
    of them (if one is close)."""
    options = tuple(options)
    if value in options:
        return value
    hint = closest(value, options)
    suggestion = f" (did you mean {hint!r}?)" if hint is not None else ""
    raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(str, options))}{suggestion}")
