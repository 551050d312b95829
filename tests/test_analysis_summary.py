"""The per-model summary of the Park & Kim analyses (docs/ANALYSIS.md), on analysis rows whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.analysis.summary import block_changes, model_summary, to_markdown
from bench.models.base import BLOCK_KINDS


def rows(trial: str, analysis: str, metric: str, values: dict, layer_of=lambda i: f"b{i}") -> list[dict]:
    return [{"trial_id": trial, "analysis": analysis, "epoch": 3, "metric": metric, "layer": layer_of(i), "index": i,
             "value": v} for i, v in values.items()]


def per_block(trial: str, kinds: list[str], resolution: list[int], high: list[float], variance: list[float]) -> list[dict]:
    """Fourier and variance rows of one trial with the given block kinds, map sizes and values."""
    idx = range(len(kinds))
    codes = {i: BLOCK_KINDS.index(k) for i, k in zip(idx, kinds)}
    out = []
    for analysis in ("fourier", "variance"):
        out += rows(trial, analysis, "kind", codes)
        out += rows(trial, analysis, "depth", {i: i / (len(kinds) - 1) for i in idx})
    out += rows(trial, "fourier", "resolution", dict(zip(idx, resolution)))
    out += rows(trial, "fourier", "dlogamp_high", dict(zip(idx, high)))
    out += rows(trial, "variance", "variance", dict(zip(idx, variance)))
    return out


def trials_frame(models: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "model": m, "status": "ok", "test_acc": 0.9, "finished_at": i}
                         for i, (t, m) in enumerate(models.items())])


def test_block_changes_compare_each_block_with_its_input_at_the_same_resolution():
    # stem (8 px), conv raises the high-frequency value by 1, MSA lowers it by 0.5, a strided conv
    # (8 -> 4 px) is left out, then an MSA at 4 px lowers it by 0.5 again.
    frame = pd.DataFrame(per_block("t", ["stem", "conv", "msa", "conv", "msa"], [8, 8, 8, 4, 4],
                                   [-3.0, -2.0, -2.5, -1.0, -1.5], [1.0, 10.0, 1.0, 5.0, 0.5]))
    frame["model"] = "m"
    high = block_changes(frame, "fourier", "dlogamp_high")
    assert high["layer"].tolist() == ["b1", "b2", "b4"]
    assert high["kind"].tolist() == ["conv", "msa", "msa"]
    assert high["change"].tolist() == pytest.approx([1.0, -0.5, -0.5])
    var = block_changes(frame, "variance", "variance", log=True)
    assert var["change"].tolist() == pytest.approx([1.0, -1.0, -1.0])  # log10 ratios: x10, /10, /10


def test_model_summary_reads_signs_directions_and_noise_bands():
    frame = per_block("r", ["stem", "conv", "conv"], [8, 8, 8], [-3.0, -2.0, -1.0], [1.0, 2.0, 4.0])
    frame += per_block("v", ["stem", "msa", "mlp"], [8, 8, 8], [-3.0, -3.5, -3.2], [1.0, 0.5, 0.6])
    # k = 2 eigenvalues per batch, 2 batches: tops are 5 and -4.
    frame += rows("v", "hessian", "eigenvalue", {0: 5.0, 1: -1.0, 2: -4.0, 3: 2.0}, layer_of=lambda i: None)
    frame += rows("v", "hessian", "n_batches", {None: 2}, layer_of=lambda i: None)
    frame += rows("v", "hessian", "converged_share", {None: 0.75}, layer_of=lambda i: None)
    frame += rows("r", "hessian", "eigenvalue", {0: 9.0, 1: 3.0}, layer_of=lambda i: None)
    frame += rows("r", "hessian", "n_batches", {None: 1}, layer_of=lambda i: None)
    for trial, drops in (("r", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), ("v", [0.5] * 9)):
        frame += rows(trial, "noise", "clean_acc", {None: 0.9}, layer_of=lambda i: None)
        frame += rows(trial, "noise", "acc_drop", dict(enumerate(drops)), layer_of=lambda i: "band")
        frame += rows(trial, "noise", "band_frequency", {j: round(0.1 * (j + 1), 1) for j in range(9)},
                      layer_of=lambda i: "band")
        frame += rows(trial, "noise", "acc_drop", {0: 0.25}, layer_of=lambda i: "random")
    # An earlier spectrum of the same trial (e.g. at the end of warmup) is summarised on its own, as name@epoch;
    # an earlier epoch of the other analyses does not count.
    frame += [{**r, "epoch": 1, "value": -7.0} for r in rows("v", "hessian", "eigenvalue", {0: 0.0, 1: 0.0})]
    frame += [{**r, "epoch": 1, "value": 1e6} for r in rows("r", "fourier", "dlogamp_high", {2: 0.0})]
    summary = model_summary(trials_frame({"r": "resnet18", "v": "vit_ti"}), pd.DataFrame(frame)).set_index("model")

    vit, res = summary.loc["vit_ti"], summary.loc["resnet18"]
    assert vit["eigenvalues"] == 4 and vit["nep"] == 0.5 and vit["ape"] == pytest.approx(3.5)
    assert vit["top_negative_share"] == 0.5 and vit["negative_magnitude_share"] == pytest.approx(5 / 12)
    assert vit["smallest"] == -4.0 and vit["converged_share"] == 0.75
    assert res["nep"] == 0.0 and res["top_negative_share"] == 0.0
    assert res["dlogamp_conv_mean_change"] == pytest.approx(1.0) and res["dlogamp_conv_share_lowered"] == 0.0
    assert vit["dlogamp_msa_mean_change"] == pytest.approx(-0.5) and vit["dlogamp_mlp_mean_change"] == pytest.approx(0.3)
    assert res["logvar_conv_mean_change"] == pytest.approx(math.log10(2))
    assert vit["logvar_msa_share_lowered"] == 1.0 and vit["logvar_mlp_share_lowered"] == 0.0
    assert res["dlogamp_high_last"] == -1.0 and res["variance_last"] == 4.0
    assert res["noise_drop_low"] == pytest.approx(0.1) and res["noise_drop_high"] == pytest.approx(0.7)
    assert res["noise_worst_frequency"] == pytest.approx(0.9) and res["noise_drop_white"] == 0.25
    assert vit["eigenvalues@1"] == 2 and vit["nep@1"] == 1.0 and math.isnan(res["nep@1"])
    assert "| nep |" in to_markdown(summary.reset_index()) and "| nep@1 |" in to_markdown(summary.reset_index())


def test_model_summary_reports_the_nyquist_reading_apart_and_ece():
    """With `fourier: {nyquist: true}` the value at pi is summarised apart (dlogamp_nyquist_*), beside the
    authors' half-diagonal (dlogamp_*); the trials' ECE is averaged per model."""
    frame = per_block("r", ["stem", "conv", "conv"], [8, 8, 8], [-3.0, -2.0, -1.0], [1.0, 2.0, 4.0])
    frame += rows("r", "fourier", "dlogamp_nyquist", {0: -1.0, 1: -2.0, 2: -4.0})
    trials = trials_frame({"r": "resnet18"}).assign(ece=0.125)
    res = model_summary(trials, pd.DataFrame(frame)).set_index("model").loc["resnet18"]
    assert res["dlogamp_high_last"] == -1.0 and res["dlogamp_conv_mean_change"] == pytest.approx(1.0)
    assert res["dlogamp_nyquist_first"] == -1.0 and res["dlogamp_nyquist_last"] == -4.0
    assert res["dlogamp_nyquist_conv_mean_change"] == pytest.approx(-1.5)
    assert res["dlogamp_nyquist_conv_share_lowered"] == 1.0 and res["ece"] == 0.125
