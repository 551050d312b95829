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
