"""`bench perf`: the suite registry and a smoke run of the data suite (timings are not asserted: they are not stable)."""

from __future__ import annotations

import json

import pytest

from bench.errors import BenchInputError
from bench.perf import list_suites, run_perf
from bench.perf.registry import get_suite, register_suite


def test_data_suite_quick_run_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "perf" / "data.json"
    assert run_perf(["data"], quick=True, out=str(out)) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cores"] >= 1 and report["command"] == "bench perf --suite data --quick"
    suite = report["suites"]["data"]
    names = [row["name"] for row in suite["rows"]]
    assert names[0].startswith("device_loader crop+flip") and names[1].startswith("torchvision DataLoader(num_workers=2)")
    assert any("randaugment" in n for n in names) and any("mixup" in n for n in names)
    assert all(row["median"] > 0 and row["repeats"] for row in suite["rows"])
    assert list(suite["ratios"].values())[0] > 0
    printed = capsys.readouterr().out
    assert "ratio device_loader / torchvision DataLoader" in printed


def test_suites_register_and_unknown_names_are_input_errors(monkeypatch):
    assert "data" in list_suites()
    with pytest.raises(BenchInputError, match="did you mean 'data'"):
        run_perf(["dta"], quick=True, out=None)

    from bench.perf import registry

    monkeypatch.setattr(registry, "_SUITES", dict(registry._SUITES))
    register_suite("toy", "a suite a later issue could add")(lambda quick: {"rows": [], "ratios": {}, "settings": {}})
    assert get_suite("toy").description == "a suite a later issue could add" and "toy" in list_suites()
    assert run_perf(["toy"], quick=True, out=None) == 0


def test_cli_perf_with_an_unknown_suite_exits_2(capsys):
    from bench.cli import main

    assert main(["perf", "--suite", "nope"]) == 2
    assert "unknown performance suite" in capsys.readouterr().err


@pytest.mark.slow
def test_the_ray_tune_floor_runs_the_trials_it_is_given(tmp_path):
    """The orchestration suite's floor: Ray Tune alone, sleeping trials on a fresh local Ray."""
    import os
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.perf.tune_floor", json.dumps([0.25, 0.5, 0.75]), str(tmp_path), "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(json.loads(done.stdout.splitlines()[-1])) == [0.25, 0.5, 0.75]  # each trial ran and reported
    assert wall >= 1.0  # 1.5 s of trials on two slots: at least 0.75 s, and a Ray start
