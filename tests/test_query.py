"""Comparison tables: aggregation over seeds, latest row per trial, formats and errors."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from bench.errors import BenchInputError
from bench.query import comparison_table, summarize


def trials(rows):
    base = {"status": "ok", "dataset": "spatial", "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    return pd.DataFrame([{**base, **r} for r in rows])


DATA = trials([
    {"trial_id": "a0", "model": "vit", "train_size": 0.5, "seed": 0, "test_acc": 0.80},
    {"trial_id": "a1", "model": "vit", "train_size": 0.5, "seed": 1, "test_acc": 0.90},
    {"trial_id": "b0", "model": "vit", "train_size": 1024.0, "seed": 0, "test_acc": 0.95},
    {"trial_id": "c0", "model": "cnn", "train_size": 0.5, "seed": 0, "test_acc": 0.60},
    {"trial_id": "d0", "model": "cnn", "train_size": 1024.0, "seed": 0, "test_acc": 0.10, "status": "failed"},
])


def test_mean_std_over_seeds():
    s = summarize(DATA).set_index(["model", "train_size"])
    assert s.loc[("vit", 0.5), "mean"] == pytest.approx(0.85)
    assert s.loc[("vit", 0.5), "std"] == pytest.approx(0.0707107, rel=1e-5)
    assert s.loc[("vit", 0.5), "n"] == 2
    assert ("cnn", 1024.0) not in s.index  # failed trials are not averaged in


def test_latest_row_of_a_trial_wins():
    later = trials([{"trial_id": "c0", "model": "cnn", "train_size": 0.5, "seed": 0, "test_acc": 0.70,
                     "finished_at": datetime(2026, 2, 1, tzinfo=timezone.utc)}])
    s = summarize(pd.concat([DATA, later])).set_index(["model", "train_size"])
    assert s.loc[("cnn", 0.5), "mean"] == pytest.approx(0.70) and s.loc[("cnn", 0.5), "n"] == 1


def test_markdown_table():
    md = comparison_table(DATA)
    lines = md.splitlines()
    assert lines[0].split("|")[1].strip() == "model \\ train_size"
    assert [c.strip() for c in lines[0].split("|")[2:4]] == ["0.5", "1024"]
    assert "85.0 ± 7.1" in md and "95.0" in md and "60.0" in md
    assert "test_acc (%)" in md


def test_csv_json_latex_html():
    csv = comparison_table(DATA, fmt="csv")
    assert csv.splitlines()[0] == "model,train_size,mean,std,n"
    assert "vit,0.5,0.85" in csv
    assert '"mean": 0.85' in comparison_table(DATA, fmt="json")
    assert "\\begin{table}" in comparison_table(DATA, fmt="latex")
    assert "<table" in comparison_table(DATA, fmt="html")


def test_where_filter_and_other_axes():
    s = summarize(DATA, rows="train_size", cols="model", where="seed == 0")
    assert set(s["n"]) == {1}
    assert "cnn" in comparison_table(DATA, rows="train_size", cols="model")


@pytest.mark.parametrize("kwargs,match", [
    ({"rows": "arch"}, "--rows arch: no such column"),
    ({"metric": "acc"}, "--metric acc: no such column"),
    ({"where": "model ==="}, "--where"),
    ({"fmt": "xlsx"}, "--format xlsx"),
])
def test_errors(kwargs, match):
    with pytest.raises(BenchInputError, match=match):
        comparison_table(DATA, **kwargs)


def test_cells_mixing_different_configs_are_flagged():
    import json

    def config(epochs, seed):
        return json.dumps({"model": "vit", "train_size": 0.5, "seed": seed, "train": {"epochs": epochs, "lr": 0.1}})

    mixed = trials([
        {"trial_id": "x0", "model": "vit", "train_size": 0.5, "seed": 0, "test_acc": 0.8, "config": config(1, 0)},
        {"trial_id": "x1", "model": "vit", "train_size": 0.5, "seed": 1, "test_acc": 0.9, "config": config(100, 1)},
    ])
    assert "WARNING: cells average trials that differ in train.epochs" in comparison_table(mixed)
    same = mixed.assign(config=[config(1, 0), config(1, 1)])
    assert "WARNING" not in comparison_table(same)  # seeds alone are what a cell averages over


def test_where_is_a_closed_language_evaluated_by_bench():
    rows = DATA.assign(**{"train.lr": [0.1, 0.01, 0.1, None, 0.1]})
    assert set(summarize(rows, where="model in ['vit'] and not seed == 1")["n"]) == {1}
    assert summarize(rows, where="`train.lr` == None")["model"].tolist() == ["cnn"]
    assert summarize(rows, where="0 <= seed < 1 or model not in ('cnn',)")["n"].sum() == 4
    assert summarize(rows, where="train.lr in [0.01]")["n"].sum() == 1


HOSTILE = [
    ("seed.__class__.__init__.__globals__['os'].system('touch {marker}') == 0", "a call"),
    ("__import__('os').system('touch {marker}') == 0", "a call"),
    ("model.__class__ == 1", "attribute access"),
    ("seed + 1 == 2", "arithmetic"),
    ("[open('{marker}', 'w')][0] == 1", "a subscript"),
]


@pytest.mark.parametrize("where,named", HOSTILE, ids=[h[1] + str(i) for i, h in enumerate(HOSTILE)])
def test_where_with_attribute_access_or_a_call_exits_2_naming_it(tmp_path, where, named):
    from bench.spec import parse_sweep
    from bench.store import ResultStore, trial_row
    from tests.conftest import run_main

    store = ResultStore(tmp_path, "w")
    for config in parse_sweep({"name": "w", "model": "resnet18", "grid": {"seed": [0, 1]}}).trials:
        store.write_trial(trial_row(config, status="ok", result={"test_acc": 0.5, "epochs": 1}))
    marker = tmp_path / "pwned"
    assert run_main("results", "table", "w", "--results", str(tmp_path), "--where", "seed == 0").returncode == 0
    done = run_main("results", "table", "w", "--results", str(tmp_path), "--where", where.format(marker=marker))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and named in lines[0] and "is not allowed" in lines[0], done.stderr
    assert not marker.exists()
