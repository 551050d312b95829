"""ECE (bench.calibration) on hand-made predictions whose calibration is known, against the authors'
formula (how-do-vits-work ops/tests.py), and as every trial's `ece` (run_trial, the stacked path, the store)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.calibration import ECE_BINS, CalibrationCounts, expected_calibration_error


def two_class_logits(confidence: float, n: int, correct: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n predictions of class 0 with top-1 probability `confidence`; the first `correct` are right."""
    logits = torch.tensor([[math.log(confidence), math.log(1 - confidence)]] * n, dtype=torch.float64)
    targets = torch.tensor([0] * correct + [1] * (n - correct))
    return logits, targets


def authors_ece(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """ops/tests.py, written out again: counts and accuracies per bin by `cm` (conf in (lo, hi]), confidence
    sums by conf in [lo, hi), conf_bin = sum / (count + 1e-7), ece = sum |acc - conf| * count / (total + 1e-7)."""
    probs = torch.softmax(logits.double(), dim=1).numpy()
    ys = targets.numpy()
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.linspace(0.0, 1.0, 11)
    count_bin, acc_bin, conf_bin = [], [], []
    for lo, hi in zip(bins, bins[1:]):
        member = (confidence > lo) & (confidence <= hi)
        count = member.sum()
        count_bin.append(count)
        acc_bin.append((predicted[member] == ys[member]).sum() / count if count else 0.0)
        conf_sum = confidence[(confidence >= lo) & (confidence < hi)].sum()
        conf_bin.append(conf_sum / (count + 1e-7))
    count_bin = np.array(count_bin)
    freq = np.nan_to_num(count_bin / (count_bin.sum() + 1e-7))
    return float(np.sum(np.abs(np.array(acc_bin) - np.array(conf_bin)) * freq))


def test_perfectly_calibrated_predictions_have_zero_ece():
    parts = [two_class_logits(0.7, 10, 7), two_class_logits(0.9, 20, 18), two_class_logits(0.55, 20, 11)]
    logits, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.0, abs=1e-9)


def test_confident_and_wrong_predictions_have_ece_near_one():
    logits = torch.zeros(50, 10)
    logits[:, 3] = 40.0  # softmax saturates at 1.0: the edge of the last bin
    targets = torch.full((50,), 7)
    assert expected_calibration_error(logits, targets) == pytest.approx(1.0, abs=1e-9)


def test_ece_weights_each_bin_by_its_share():
    """10 at 0.95, all right (gap 0.05); 30 at 0.6, 12 right (gap 0.2): (10 * 0.05 + 30 * 0.2) / 40."""
    a, b = two_class_logits(0.95, 10, 10), two_class_logits(0.6, 30, 12)
    logits, targets = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    assert expected_calibration_error(logits, targets) == pytest.approx(0.1625, abs=1e-9)


def test_same_as_the_authors_formula_on_random_predictions_and_batching_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 10, (500,), generator=gen)
    whole = expected_calibration_error(logits, targets)
    assert whole == pytest.approx(authors_ece(logits, targets), abs=1e-6)
    counts = CalibrationCounts()
    for start in range(0, 500, 64):
        counts.add(logits[start:start + 64], targets[start:start + 64])
    assert counts.ece() == pytest.approx(whole, abs=1e-12)
    assert ECE_BINS == 10 and counts.bins == 10


def test_every_trial_records_its_ece_and_bin_count():
    from bench.store import TRIALS_SCHEMA, trial_row
    from tests.test_train import tiny_config
    from bench.train import run_trial

    config = tiny_config(epochs=2)
    result = run_trial(config, device="cpu")
    assert 0.0 <= result["ece"] <= 1.0
    assert result["ece"] == result["history"][-1]["ece"]
    assert result["recorded"]["ece_bins"] == ECE_BINS
    row = trial_row(config, status="ok", result=result)
    assert row["ece"] == result["ece"] and "ece" in TRIALS_SCHEMA.names
    initial = run_trial(tiny_config(epochs=0), device="cpu")
    assert 0.0 <= initial["ece"] <= 1.0


def test_stacked_trials_record_ece_like_separate_ones():
    from bench.stacking import run_stacked
    from bench.train import run_trial
    from tests.test_stacking import _configs

    configs = _configs(seeds=(0, 1))
    stacked = run_stacked(configs, device="cpu")
    separate = [run_trial(c, device="cpu") for c in configs]
    for one, many in zip(separate, stacked):
        assert many["ece"] == pytest.approx(one["ece"], abs=1e-4)
        assert many["recorded"]["ece_bins"] == ECE_BINS and many["history"][-1]["ece"] == many["ece"]


def test_ece_in_results_table_and_report(tmp_path, capsys):
    """`bench results table --metric ece` and the report's tables show the stored ECE (mean ± std over seeds)."""
    from bench.cli import main
    from bench.perf.store import synthetic_row
    from bench.report import write_report
    from bench.store import ResultStore

    sweep = "calibrated"
    store = ResultStore(tmp_path, sweep)
    for seed, ece in enumerate((0.05, 0.07, 0.09)):
        row = synthetic_row(sweep, seed, model="vit_ti", train_size=1.0, seed=seed)
        store.write_trial({**row, "ece": ece})
    assert main(["results", "table", sweep, "--results", str(tmp_path), "--metric", "ece"]) == 0
    table = capsys.readouterr().out
    assert "ece" in table and "0.0700 ± 0.0200" in table
    _, md_path = write_report(sweep, str(tmp_path), str(tmp_path / "report"))
    assert "0.0700 ± 0.0200" in md_path.read_text()


def test_nan_logits_give_a_nan_ece_instead_of_an_index_error():
    logits = torch.tensor([[float("nan"), 0.0], [2.0, 0.0]])
    assert math.isnan(expected_calibration_error(logits, torch.tensor([0, 0])))


def test_finite_logits_are_unaffected():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) < 0.05
