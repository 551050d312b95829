"""The registry of performance suites: each suite is a function `run(quick) -> result dict`.

A result holds `rows` (one measured figure each: name, unit, median, repeats), an
optional `ratios` mapping (name -> value) and `settings` (what was measured, and how).
Later issues add suites (a training suite, ...) with `@register_suite`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from bench.errors import BenchInputError

SuiteResult = dict[str, Any]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    run: Callable[[bool], SuiteResult]


_SUITES: dict[str, Suite] = {}


def register_suite(name: str, description: str) -> Callable[[Callable[[bool], SuiteResult]], Callable[[bool], SuiteResult]]:
    def wrap(run: Callable[[bool], SuiteResult]) -> Callable[[bool], SuiteResult]:
        _SUITES[name] = Suite(name, description, run)
        return run

    return wrap


def list_suites() -> list[str]:
    return sorted(_SUITES)


def get_suite(name: str) -> Suite:
    try:
        return _SUITES[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list_suites(), n=1)
        tip = f"; did you mean '{hint[0]}'?" if hint else f" (suites: {', '.join(list_suites())})"
        raise BenchInputError(f"--suite {name}: unknown performance suite{tip}") from None
