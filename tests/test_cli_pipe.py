"""`bench results ... | head -1`: the reader closing the pipe early stops bench quietly (no traceback)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pandas as pd
import pytest

from bench.perf.store import synthetic_row
from tests.conftest import BENCH

SWEEP = "pipe"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """1,500 trials in one Parquet file: each command below prints more than a pipe holds
    (64 KiB), so bench is still writing when `head` has gone and the pipe breaks every time."""
    root = tmp_path_factory.mktemp("pipe-store")
    folder = root / SWEEP / "trials"
    folder.mkdir(parents=True)
    pd.DataFrame([synthetic_row(SWEEP, i) for i in range(1500)]).to_parquet(folder / "all.parquet")
    return root


@pytest.mark.parametrize("command,first_line", [
    (["results", "table", SWEEP, "--rows", "trial_id"], r"\| trial_id \\ train_size +\|( [0-9.]+ +\|)+"),
    (["results", "sql", "SELECT trial_id, model, test_acc, config FROM trials"],
     r"\| trial_id +\| model +\| test_acc +\| config +\|"),
], ids=["table", "sql"])
def test_output_cut_short_by_head_is_not_an_error(store, command, first_line):
    line = " ".join(shlex.quote(part) for part in [BENCH, *command, "--results", str(store)])
    piped = subprocess.run(["bash", "-c", f"{line} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"],
                           capture_output=True, text=True, timeout=120)
    assert re.fullmatch(first_line + "\n", piped.stdout), piped.stdout
    assert piped.stderr.splitlines() == ["status 141"], piped.stderr  # 128 + SIGPIPE, and not a word more
