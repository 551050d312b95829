"""Checkpoints are stored data, and stored data is untrusted: a planted `state.pt` whose unpickling
would run code is never unpickled (weights_only), the trial retrains, and the driver says so once."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main
from bench.spec import load_sweep
from bench.store import ResultStore, UnusableCheckpoint, load_checkpoint_state


class _CreatesAFile:
    """Unpickling this calls open(path, 'w'): a file appears if anything unpickles it in full."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted_state(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "model": _CreatesAFile(marker), "history": []}, buffer)
    return buffer.getvalue()


def test_a_planted_state_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    raw = planted_state(marker)
    with pytest.raises(UnusableCheckpoint, match="not a plain-tensor checkpoint"):
        load_checkpoint_state(raw, "planted/state.pt")
    assert not marker.exists()
    torch.load(io.BytesIO(raw), weights_only=False)  # the control: a full unpickle does create it
    assert marker.exists()


def test_a_checkpoint_of_plain_values_without_a_trial_state_is_refused():
    buffer = io.BytesIO()
    torch.save({"epoch": 3}, buffer)
    with pytest.raises(UnusableCheckpoint, match="not a trial checkpoint"):
        load_checkpoint_state(buffer.getvalue(), "x/state.pt")
    with pytest.raises(UnusableCheckpoint, match="not a plain-tensor checkpoint"):
        load_checkpoint_state(b"", "empty/state.pt")


@pytest.mark.slow
def test_resume_ignores_a_planted_checkpoint_retrains_the_trial_and_warns_once(ray_local, tmp_path, capsys):
    sweep_file = tmp_path / "planted.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "planted", "model": "flaky_net", "model_args": {"fail_times": 0},
        "dataset": {"name": "spatial", "num_train": 32, "num_test": 32}, "train_size": 32,
        "train": {"epochs": 2, "batch_size": "full"}, "resources": {"cpus_per_trial": 1, "max_failures": 0},
    }))
    results, marker = tmp_path / "results", tmp_path / "pwned"
    trial_id = load_sweep(str(sweep_file)).trials[0]["trial_id"]
    # Where a killed launch leaves its checkpoints, and where resume looks (trial ids are predictable).
    folder = results / "planted" / ".tune" / "20260101-000000-abcdef" / trial_id / "checkpoint_000001"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(planted_state(marker))

    assert main(["run", str(sweep_file), "--results", str(results)]) == 0
    assert not marker.exists()  # never unpickled: not in a worker, not in the driver
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "checkpoint refused" in line]
    assert len(warnings) == 1 and trial_id in warnings[0] and "state.pt" in warnings[0], err[-2000:]
    row = ResultStore(results, "planted").read_trials().iloc[0]
    assert row.status == "ok" and row.epochs == 2 and pd.isna(row.resumed_from_epoch)  # trained from the start
    assert "checkpoint refused" in row.config
