"""Where datasets live on disk, and the one-line errors when they are not there.

A dataset's `root` option wins; without it the root is `$BENCH_DATA_ROOT` if set, else
`~/.cache/bench/data`, resolved where the data is loaded (on each worker), so a cluster
can point every node at a shared volume with one environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bench.errors import DataUnavailable

ROOT_ENV = "BENCH_DATA_ROOT"
DEFAULT_ROOT = Path("~/.cache/bench/data")


def data_root(root: str | None) -> Path:
    """The folder a dataset is read from: `root`, else $BENCH_DATA_ROOT, else ~/.cache/bench/data."""
    chosen = root or os.environ.get(ROOT_ENV) or str(DEFAULT_ROOT)
    return Path(chosen).expanduser().absolute()


def missing(dataset: str, path: Path, expected: str, downloadable: bool = True) -> DataUnavailable:
    """The error for data that is not on disk: names the full expected path and how to fix it."""
    fix = f"set dataset.root to the folder that holds it (default root: ${ROOT_ENV}, else {DEFAULT_ROOT})"
    if downloadable:
        fix += ", or set download: true when online"
    return DataUnavailable(f"dataset '{dataset}': {expected} not found at {path}; {fix}")


def fetch(dataset: str, path: Path, download: Callable[[], None]) -> None:
    """Run torchvision's download (which verifies the archive's checksum); failures become DataUnavailable."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        download()
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad checksum a RuntimeError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataUnavailable(
            f"dataset '{dataset}': download to {path} failed ({reason}); when offline, copy the files there "
            f"or set dataset.root to where they are"
        ) from None
