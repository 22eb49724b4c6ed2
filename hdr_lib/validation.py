"""One validation of every number and choice a user sets, from the command line, a notebook parameter or the API:
each number's range in one table, checked before any work, and the one error type that reports a bad setting."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hdr_lib import paper


class ConfigError(ValueError):
    """A setting a user chose that cannot be run; the message says what to do instead."""


@dataclass(frozen=True)
class Range:
    """The values a number may take: from `low` to `high`, ends included unless marked open."""

    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    why: str = ""  # where the bound comes from, shown in the error

    def describe(self) -> str:
        if self.kind is int:
            text = f"an integer from {self.low:,} to {self.high:,}"
        else:
            low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            high = f"below {self.high:g}" if self.high_open else f"at most {self.high:g}"
            text = f"a number {low} and {high}"
        return f"{text} ({self.why})" if self.why else text

    def holds(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


SEED_MAX = 2**32 - 1  # seeds are drawn by torch.manual_seed; batch_order needs seed * 1_000_003 + epoch < 2**63

# Every number a user can set, with its range. The upper bounds keep every run finite and every derived number
# inside 64 bits.
RANGES = {
    "epochs": Range(int, 1, 1000, why=f"the paper trains {paper.EPOCHS}"),
    "batch_size": Range(int, 1, paper.TRAIN_IMAGES, why="at most the training set"),
    "lr": Range(float, 0, 1e6, low_open=True, why="large enough to watch a run diverge"),
    "momentum": Range(float, 0, 1, high_open=True),
    "lr_step_epochs": Range(int, 1, 1000),
    "lr_gamma": Range(float, 0, 1, low_open=True),
    "seed": Range(int, 0, SEED_MAX),
    "first_seed": Range(int, 0, SEED_MAX),
    "seeds": Range(int, 1, 1000),
    "rounds": Range(int, 1, 1000),
    "max_steps": Range(int, 1, 100_000_000),
    "steps": Range(int, 1, 100_000, why="optimiser steps of a short measurement in a chapter"),
}


def check(name: str, value, label: str | None = None, *, range_name: str | None = None, whole_floats: bool = False):
    """`value` as an int or float if it lies in RANGES[range_name or name]; else ConfigError naming `label`.

    Booleans, strings and non-finite numbers are refused; a whole float (3.0) stands for an integer only with
    `whole_floats` (papermill may pass one)."""
    rule = RANGES[range_name or name]
    label = label or name
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if number and rule.kind is int and isinstance(value, float):
        number = whole_floats and math.isfinite(value) and value.is_integer()
        value = int(value) if number else value
    if not number or (isinstance(value, float) and not math.isfinite(value)) or not rule.holds(value):
        raise ConfigError(f"{label} must be {rule.describe()}, got {shown}")
    return rule.kind(value)


def choice(name: str, value, choices) -> None:
    """Refuse a `value` of setting `name` that is not one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
