"""A store written by bench before the plan/run redesign (commit b1edbf6) stays readable,
resumable and extendable, with the same trial ids.

`tests/data/legacy_store/` holds two sweep files and what `bench run` wrote for them then
(trials, epochs, analysis, models; MLflow left out): a single-stage pa_theory sweep with the
patch-association analysis, and a two-stage transfer sweep. Nothing here regenerates it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.spec import load_sweep
from bench.store import ResultStore

LEGACY = Path(__file__).parent / "data" / "legacy_store"

#: The ids bench gave these trials when it wrote the fixture (frozen: they must never change).
LEGACY_IDS = {
    "legacy-v0": {"268c38310fea", "470a5a17df00", "aa4236f9b395", "fd1478950944"},
    "legacy-v0-transfer": {"00c85c538323", "62b8f145dea9", "7f23014e1c0f", "bdea3317090d", "ef22d20084ac",
                           "f178557b3553"},
}
FILES = {"legacy-v0": "legacy.yaml", "legacy-v0-transfer": "legacy_transfer.yaml"}


@pytest.fixture
def legacy_store(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(LEGACY / "store", root)
    return root


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_sweep_files_still_expand_to_the_stored_trial_ids(name):
    sweep = load_sweep(LEGACY / FILES[name])
    assert {t["trial_id"] for t in sweep.trials} == LEGACY_IDS[name]
    stored = pd.read_parquet(LEGACY / "store" / name / "trials")
    assert set(stored["trial_id"]) == LEGACY_IDS[name]


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_legacy_store_reads_and_nothing_is_pending(legacy_store, name):
    from bench.sweep import pending_trials

    store = ResultStore(legacy_store, name)
    trials = store.read_trials()
    assert set(trials["trial_id"]) == LEGACY_IDS[name] and (trials["status"] == "ok").all()
    assert len(store.read_epochs()) == 3 * len(LEGACY_IDS[name])
    assert pending_trials(load_sweep(LEGACY / FILES[name]), store, fresh=False) == []


def test_the_legacy_transfer_sources_still_load_their_weights(legacy_store):
    store = ResultStore(legacy_store, "legacy-v0-transfer")
    sweep = load_sweep(LEGACY / FILES["legacy-v0-transfer"])
    sources = {t["source"] for t in sweep.trials if t["source"]}
    assert len(sources) == 2
    for source in sources:
        state = store.read_model(source)
        assert set(state) == {"v", "attn.offdiag"}


@pytest.mark.slow
def test_a_legacy_store_is_resumed_and_extended_with_the_same_ids(ray_local, legacy_store, tmp_path):
    """One trial's files removed (as if it never finished) and a third seed added: exactly those run;
    the stored trials keep their rows untouched."""
    from bench.sweep import run_sweep

    name = "legacy-v0"
    store = ResultStore(legacy_store, name)
    before = store.read_trials().set_index("trial_id")
    lost = sorted(LEGACY_IDS[name])[0]
    for table in ("trials", "epochs", "analysis"):
        (legacy_store / name / table / f"{lost}.parquet").unlink()
    sweep = load_sweep(LEGACY / FILES[name], ["grid.seed=[0, 1, 2]"])
    new = {t["trial_id"] for t in sweep.trials} - LEGACY_IDS[name]
    assert len(new) == 2 and LEGACY_IDS[name] < {t["trial_id"] for t in sweep.trials}
    outcome = run_sweep(sweep, legacy_store, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert (outcome.total, outcome.skipped, outcome.ok, outcome.failed) == (6, 3, 3, 0)
    after = store.read_trials().set_index("trial_id")
    assert set(after.index) == LEGACY_IDS[name] | new
    kept = sorted(LEGACY_IDS[name] - {lost})
    pd.testing.assert_series_equal(after.loc[kept, "finished_at"], before.loc[kept, "finished_at"])
    assert (after["status"] == "ok").all()
