"""Argument checks shared by every layer: each raises ValueError naming the argument, what it
allows and what it got. The CLI maps argument names to flag names; nothing here knows of flags."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch


class SettingError(ValueError):
    """A bad setting. The text names settings as {name}; str() spells them as API argument
    names, and the CLI spells them as its flags (`render(flag_name)`)."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render(lambda name: name))

    def render(self, spell: Callable[[str], str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: spell(m.group(1)), self.template)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """`value` is one of `allowed` (True/False only where listed as such, not as 1/0)."""
    if isinstance(value, bool) and not any(a is value for a in allowed):
        raise SettingError(f"{{{name}}} must be one of {tuple(allowed)}, got {value!r}")
    if value not in allowed:
        raise SettingError(f"{{{name}}} must be one of {tuple(allowed)}, got {value!r}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An int (not a bool; a SymInt under tracing) in [low, high), high=None: no upper bound."""
    ok = not isinstance(value, bool) and isinstance(value, int | torch.SymInt)
    if ok and high is None and value >= low:
        return value
    if ok and high is not None and low <= value < high:
        return value
    if high is None:
        raise SettingError(f"{{{name}}} must be an integer >= {low}, got {value!r}")
    raise SettingError(f"{{{name}}} must be an int in [{low}, {high}), got {value!r}")


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real number (not a bool, not NaN) in the interval between low and high."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SettingError(f"{{{name}}} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise SettingError(f"{{{name}}} must be in {interval}, got {value!r}")
    return value
