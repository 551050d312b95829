"""The trial worker as a plain function: metrics, determinism, checkpoint resume, schedule, loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bench.spec import parse_sweep
from bench.train import classification_loss, lr_factor, run_trial

TINY = {
    "name": "tiny",
    "model": "vit_ti",
    "model_args": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
    "dataset": {"name": "spatial", "num_train": 256, "num_test": 128},
    "train": {"epochs": 3, "batch_size": 32, "lr": 3e-3, "warmup_epochs": 1},  # crop/flip break the spatial grid
    "train_size": 128,
}


def tiny_config(**train):
    raw = {**TINY, "train": {**TINY["train"], **train}}
    return parse_sweep(raw).trials[0]


def test_run_trial_reports_every_contract_metric():
    config = tiny_config()
    epochs_seen = []
    result = run_trial(config, on_epoch=lambda row, state: epochs_seen.append(row["epoch"]), device="cpu")
    assert epochs_seen == [1, 2, 3]
    assert result["epochs"] == 3 and len(result["history"]) == 3
    assert result["n_train"] == 128
    assert 0.0 <= result["test_acc"] <= 1.0 and result["test_loss"] > 0
    assert result["params"] > 0 and result["flops"] > 0
    assert result["train_samples_per_s"] > 0 and result["wall_s"] > 0
    assert result["device"] == "cpu"
    assert result["trial_id"] == config["trial_id"]
    lrs = [h["lr"] for h in result["history"]]
    assert lrs[-1] < lrs[0]  # cosine decay


def test_same_config_same_result():
    a = run_trial(tiny_config(epochs=2), device="cpu")
    b = run_trial(tiny_config(epochs=2), device="cpu")
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run():
    config = tiny_config(epochs=3)
    states = {}
    # state() shares storage with the live model: copy it, as the orchestrator's torch.save does.
    full = run_trial(config, on_epoch=lambda row, state: states.setdefault(row["epoch"], copy.deepcopy(state())),
                     device="cpu")
    resumed = run_trial(config, resume=states[1], device="cpu")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["test_loss"] == pytest.approx(full["test_loss"], rel=1e-6)
    assert resumed["history"][2]["train_loss"] == pytest.approx(full["history"][2]["train_loss"], rel=1e-6)


def test_zero_epochs_evaluates_the_initialisation():
    result = run_trial(tiny_config(epochs=0), device="cpu")
    assert result["epochs"] == 0 and result["history"] == [] and result["train_loss"] is None
    assert 0.0 <= result["test_acc"] <= 1.0


def test_training_learns_the_spatial_task():
    result = run_trial(tiny_config(epochs=6), device="cpu")
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert result["test_acc"] > 0.6  # chance is 0.5


@pytest.mark.parametrize("schedule,step,expected", [
    ("constant", 0, 0.1), ("constant", 5, 0.1),
    ("cosine", 10, 1.0), ("cosine", 55, 0.5), ("cosine", 100, 0.0),
    ("step", 10, 1.0), ("step", 55, 0.1), ("step", 85, 0.01),
])
def test_lr_schedule(schedule, step, expected):
    train = {"epochs": 10, "warmup_epochs": 1, "schedule": schedule, "step_milestones": [0.5, 0.75], "step_gamma": 0.1}
    value = lr_factor(step, steps_per_epoch=10, train=train)
    if step < 10 and schedule != "cosine":
        expected = (step + 1) / 10  # warmup
    assert value == pytest.approx(expected, abs=1e-9)


def test_soft_target_loss_equals_cross_entropy_on_one_hot():
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    one_hot = F.one_hot(labels, 5).float()
    for smoothing in (0.0, 0.1):
        hard = classification_loss(logits, labels, smoothing)
        soft = classification_loss(logits, one_hot, smoothing)
        assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    assert not math.isnan(classification_loss(logits, one_hot * 0.5 + one_hot.roll(1, 0) * 0.5, 0.1).item())
