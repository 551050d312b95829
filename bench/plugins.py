"""Your own models and datasets, registered from your own modules: `BENCH_PLUGINS=pkg.models,pkg.data`.

Importing such a module runs its `@register_model` / `register_dataset` decorators. The
command line imports them before it reads a sweep file (so validation knows the names),
and each trial imports them again in its Ray worker, which is a fresh process: set the
variable where the cluster's workers see it (a local Ray inherits it from `bench run`).
"""

from __future__ import annotations

import importlib
import os

from bench.errors import BenchInputError

ENV = "BENCH_PLUGINS"


def load() -> list[str]:
    """Import every module named in $BENCH_PLUGINS (comma-separated); their names."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise BenchInputError(f"{ENV}: cannot import {name!r} ({exc})") from None
    return names
