"""Querying the store as tables: `bench results sql` (DuckDB views), `bench.query.load`, table flags."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from bench.cli import main
from bench.compact import compact_sweep
from bench.errors import BenchInputError
from bench.perf.store import synthetic_row
from bench.query import comparison_table, load
from bench.sql import query
from bench.store import ResultStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two sweeps written through ResultStore: trials, epochs and analysis rows; one failed trial."""
    root = tmp_path_factory.mktemp("results")
    for sweep, n in (("alpha", 8), ("beta", 4)):
        s = ResultStore(root, sweep)
        for i in range(n):
            row = synthetic_row(sweep, i, model=["vit_ti", "resnet18"][i % 2], dataset={"name": "cifar10"},
                                train_size=[0.5, 1.0][(i // 2) % 2], seed=i // 4, test_acc=0.5 + i / 100)
            s.write_trial(row)
            s.write_epochs(row["trial_id"], [{"epoch": e, "test_acc": e / 10} for e in (1, 2, 3)])
            s.write_analysis(row["trial_id"], [{"analysis": "hessian", "metric": "eigenvalue", "layer": None,
                                               "index": k, "value": float(k)} for k in range(2)])
    s = ResultStore(root, "alpha")
    s.write_trial(synthetic_row("alpha", 50, status="failed", model="vit_ti", dataset={"name": "cifar10"},
                                train_size=0.5, seed=9))
    return root


def test_views_cover_every_sweep_with_a_sweep_column(store):
    counts = query("SELECT sweep, count(*) AS n FROM trials GROUP BY sweep ORDER BY sweep", store)
    assert counts.to_dict("records") == [{"sweep": "alpha", "n": 9}, {"sweep": "beta", "n": 4}]
    assert query("SELECT count(*) AS n FROM epochs", store)["n"][0] == 36
    ana = query("SELECT sweep, analysis, metric, sum(value) AS s FROM analysis GROUP BY ALL ORDER BY sweep", store)
    assert ana["s"].tolist() == [8.0, 4.0] and set(ana["analysis"]) == {"hessian"}
    joined = query("SELECT t.model, avg(e.test_acc) AS a FROM trials t JOIN epochs e USING (sweep, trial_id) "
                   "WHERE t.status = 'ok' GROUP BY ALL ORDER BY ALL", store)
    assert joined["a"].tolist() == pytest.approx([0.2, 0.2])
    assert query("SELECT count(*) AS n FROM trials", store, sweep="beta")["n"][0] == 4
    ref = query("SELECT value FROM reference WHERE experiment = 'jelassi2022-real-data' AND model = 'vit_ti' ", store)
    assert ref["value"].tolist() == [0.719]


def test_sql_matches_pandas_read_parquet(store):
    plain = pd.read_parquet(store / "alpha" / "trials")
    via_sql = query("SELECT * FROM trials WHERE sweep = 'alpha' ORDER BY trial_id", store)
    plain = plain.sort_values("trial_id").reset_index(drop=True)
    assert list(via_sql["trial_id"]) == list(plain["trial_id"])
    assert via_sql["test_acc"].tolist() == pytest.approx(plain["test_acc"].tolist(), nan_ok=True)
    assert set(plain.columns) <= set(via_sql.columns)


def test_load_returns_the_three_tables(store):
    tables = load("alpha", str(store))
    assert set(tables) == {"trials", "epochs", "analysis"}
    assert len(tables["trials"]) == 9 and len(tables["epochs"]) == 24 and len(tables["analysis"]) == 16
    assert all(isinstance(t, pd.DataFrame) for t in tables.values())
    with pytest.raises(BenchInputError, match="nope: no sweep of that name"):
        load("nope", str(store))


def test_views_and_load_honour_compaction(tmp_path):
    s = ResultStore(tmp_path, "c")
    for i in range(6):
        s.write_trial(synthetic_row("c", i, test_acc=0.5))
    compact_sweep(tmp_path, "c")
    s.write_trial(synthetic_row("c", 3, test_acc=0.9))  # rewritten after compaction: overrides its part row
    result = query("SELECT trial_id, test_acc FROM trials", tmp_path)
    assert len(result) == 6 and result["trial_id"].is_unique and sorted(result["test_acc"]) == [0.5] * 5 + [0.9]
    assert sorted(load("c", str(tmp_path))["trials"]["test_acc"]) == [0.5] * 5 + [0.9]
    # an empty table folder still gives a view with the store's columns
    empty = query("SELECT * FROM epochs", tmp_path)
    assert empty.empty and {"sweep", "trial_id", "epoch", "test_acc"} <= set(empty.columns)


def test_cli_sql_formats_and_errors(store, capsys):
    sql = "SELECT model, count(*) AS n FROM trials WHERE sweep = 'beta' GROUP BY model ORDER BY model"
    assert main(["results", "sql", sql, "--results", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("|")[1].strip() == "model" and "| resnet18 | 2 |" in out[2].replace("  ", " ")
    assert main(["results", "sql", sql, "--results", str(store), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["model,n", "resnet18,2", "vit_ti,2"]
    assert main(["results", "sql", sql, "--results", str(store), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {"model": "resnet18", "n": 2}
    for argv, match in [
        (["results", "sql", "SELEC nonsense", "--results", str(store)], "sql: Parser Error"),
        (["results", "sql", "SELECT nope FROM trials", "--results", str(store)], "sql: Binder Error"),
        (["results", "sql", "SELECT 1", "--sweep", "zz", "--results", str(store)], "--sweep zz: no sweep"),
        (["results", "sql", "SELECT 1", "--format", "xml", "--results", str(store)], "invalid choice: 'xml'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench: error:") and err.count("\n") == 1 and match in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["results", "sql", "--help"])
    assert "views: trials" in capsys.readouterr().out


def test_table_shows_n_per_cell_and_every_format(store):
    trials = load("alpha", str(store))["trials"]
    md = comparison_table(trials)
    vit = next(l for l in md.splitlines() if l.startswith("| vit_ti"))
    assert "± " in vit and "(n=2)" in vit  # seeds 0 and 1 of vit_ti at train_size 0.5
    csv = comparison_table(trials, fmt="csv").splitlines()
    assert csv[0] == "model,train_size,mean,std,n" and len(csv) == 5
    records = json.loads(comparison_table(trials, fmt="json"))
    assert {r["n"] for r in records} == {2} and len(records) == 4
    latex = comparison_table(trials, fmt="latex")
    assert "\\begin{table}" in latex and "(n=2)" in latex and "vit\\_ti" in latex and "$\\pm$" in latex
    assert re.search(r"(?<!\\)[%_]", latex) is None  # a bare % would comment out the rest of a LaTeX line
    assert "<table" in comparison_table(trials, fmt="html") and "(n=2)" in comparison_table(trials, fmt="html")


def test_where_filters_on_columns_and_config_paths_and_rejects_non_conditions(store):
    trials = load("alpha", str(store))["trials"]
    assert json.loads(comparison_table(trials, where="seed == 1", fmt="json"))[0]["n"] == 1
    by_path = json.loads(comparison_table(trials, where="train.epochs == 100 and model == 'vit_ti'", fmt="json"))
    assert {r["model"] for r in by_path} == {"vit_ti"} and sum(r["n"] for r in by_path) == 4
    quoted = json.loads(comparison_table(trials, where="`train.lr` < 0.01", fmt="json"))
    assert sum(r["n"] for r in quoted) == 8
    assert json.loads(comparison_table(trials, cols="dataset.name", fmt="json"))[0]["dataset.name"] == "cifar10"
    for bad, match in [("seed", "expected a true/false condition"), ("nosuch == 1", "not a valid filter"),
                       ("model = 'x'", "expected a true/false condition")]:
        with pytest.raises(BenchInputError, match=match):
            comparison_table(trials, where=bad)


@pytest.mark.parametrize("sql,refused", [
    ("COPY (SELECT * FROM trials) TO '{out}'", "COPY statements are not allowed"),
    ("COPY (SELECT 1) TO '{store}/alpha/x.csv'", "COPY statements are not allowed"),  # not even into the store
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM read_text('{store}/../outside.txt')", "Permission Error"),
    ("SELECT * FROM glob('/*')", "Permission Error"),
    ("INSTALL httpfs", "INSTALL statements are not allowed"),
    ("LOAD httpfs", "LOAD statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("ATTACH '{out}' AS x", "ATTACH statements are not allowed"),
    ("SELECT 1; SELECT 2", "expected one statement"),
], ids=["copy-out", "copy-in-store", "read-passwd", "read-outside", "glob", "install", "load", "set", "attach", "two"])
def test_sql_reads_only_the_store_and_changes_nothing(store, tmp_path, capsys, sql, refused):
    (store.parent / "outside.txt").write_text("secret\n")
    out = tmp_path / "out.csv"
    assert main(["results", "sql", sql.format(out=out, store=store), "--results", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: sql:") and err.count("\n") == 1 and refused in err, err
    assert "secret" not in err and not out.exists() and not (store / "alpha" / "x.csv").exists()
    # The same connection's normal queries (views over the store, the reference CSVs) still work.
    assert query("SELECT count(*) AS n FROM trials t JOIN reference r ON true WHERE false", store)["n"][0] == 0
    assert query("SELECT count(*) AS n FROM read_parquet(" + repr(str(store / "alpha" / "trials" / "*.parquet"))
                 + ")", store)["n"][0] == 9  # files of the store itself may be named


def test_a_zero_length_and_a_truncated_file_are_set_aside_once_each(tmp_path, capsys):
    from bench.query import load

    s = ResultStore(tmp_path, "d")
    ids = []
    for i in range(4):
        row = synthetic_row("d", i, test_acc=0.5)
        s.write_trial(row)
        s.write_epochs(row["trial_id"], [{"epoch": 1, "test_acc": 0.5}])
        ids.append(row["trial_id"])
    folder = tmp_path / "d" / "trials"
    (folder / f"{ids[0]}.parquet").write_bytes(b"")  # what a crash between write and rename can leave
    whole = (folder / f"{ids[1]}.parquet").read_bytes()
    (folder / f"{ids[1]}.parquet").write_bytes(whole[: len(whole) // 2])
    assert sorted(query("SELECT trial_id FROM trials", tmp_path)["trial_id"]) == sorted(ids[2:])
    assert sorted(load("d", str(tmp_path))["trials"]["trial_id"]) == sorted(ids[2:])
    assert s.finished_trial_ids() == set(ids[2:])  # the two count as not run
    assert query("SELECT count(*) AS n FROM epochs", tmp_path)["n"][0] == 4
    assert main(["results", "table", "d", "--results", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    for tid in ids[:2]:
        assert err.count(f"{tid}.parquet: unreadable Parquet file set aside") == 1, err  # named once per process
    assert "Traceback" not in err
    compact_sweep(tmp_path, "d")  # compaction leaves them where they are, merges the rest
    assert (folder / f"{ids[0]}.parquet").exists() and sorted(load("d", str(tmp_path))["trials"]["trial_id"]) == sorted(ids[2:])
