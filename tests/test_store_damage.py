"""A store with damaged files (what a node crash can leave): readers set each aside with one warning,
its trial counts as not run, and the next `bench run` reruns exactly those trials."""

from __future__ import annotations

import pytest
import yaml

from bench import compact
from bench.cli import main
from bench.sql import query
from bench.store import ResultStore


@pytest.mark.slow
def test_a_zero_length_and_a_truncated_trial_file_rerun_only_those_trials(ray_local, tmp_path, capsys):
    sweep_file = tmp_path / "damaged.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "damaged", "model": "flaky_net", "model_args": {"fail_times": 0},
        "dataset": {"name": "spatial", "num_train": 32, "num_test": 32}, "train_size": 32,
        "train": {"epochs": 1, "batch_size": "full"}, "resources": {"cpus_per_trial": 1, "max_failures": 0},
        "grid": {"seed": [0, 1, 2, 3]},
    }))
    results = tmp_path / "results"
    assert main(["run", str(sweep_file), "--results", str(results)]) == 0
    store = ResultStore(results, "damaged")
    first = store.read_trials().set_index("trial_id")["finished_at"].to_dict()
    assert len(first) == 4
    zero, truncated = sorted(first)[:2]
    folder = results / "damaged" / "trials"
    (folder / f"{zero}.parquet").write_bytes(b"")
    whole = (folder / f"{truncated}.parquet").read_bytes()
    (folder / f"{truncated}.parquet").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()

    def named_once(err: str) -> None:
        for tid in (zero, truncated):
            assert err.count(f"{tid}.parquet: unreadable Parquet file set aside") == 1, err[-3000:]
        assert "Traceback" not in err
        compact._reported.clear()  # each bench command is a new process: it names them again, once

    # Table and SQL work on what is readable.
    assert main(["results", "table", "damaged", "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert "(n=2)" in out
    named_once(err)
    assert main(["results", "sql", "SELECT count(*) AS n FROM trials", "--results", str(results), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["n", "2"]
    named_once(err)
    assert main(["run", str(sweep_file), "--results", str(results), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith("damaged: 4 trials, 2 to run")
    named_once(err)

    # The resume reruns those two only, and names each file once (the store is read several times).
    assert main(["run", str(sweep_file), "--results", str(results)]) == 0
    named_once(capsys.readouterr().err)
    after = store.read_trials().set_index("trial_id")
    assert len(after) == 4 and set(after.status) == {"ok"}
    for tid, when in first.items():
        if tid in (zero, truncated):
            assert after.loc[tid, "finished_at"] > when  # rerun, and its file replaced
        else:
            assert after.loc[tid, "finished_at"] == when  # never retrained
    assert len(query("SELECT * FROM trials", results)) == 4
