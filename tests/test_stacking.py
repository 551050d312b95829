"""Seed stacking (bench.stacking): K seeds trained as one vmapped model give the K separate runs' results."""

from __future__ import annotations

import pytest
import torch

from bench.spec import parse_sweep
from bench.stacking import check_stackable, clip_per_model, run_stacked
from bench.train import build_model, run_trial


def _configs(model="vit_ti", model_args=None, seeds=(0, 1, 2), **train):
    return parse_sweep({
        "name": "stack", "model": model,
        "model_args": model_args or {"dim": 32, "depth": 1, "heads": 2, "patch_size": 4},
        "dataset": {"name": "spatial", "num_train": 256, "num_test": 128}, "train_size": 128,
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 0.5, **train},
        "grid": {"seed": list(seeds)},
    }).trials


@pytest.mark.parametrize("train", [{"grad_clip": 0.5}, {"augment": ["crop", "flip", "mixup"], "optimizer": "sgd", "lr": 0.05}],
                         ids=["adamw-clipped", "sgd-augmented"])
def test_a_stack_equals_its_separate_runs(train):
    configs = _configs(**train)
    separate = [run_trial(c, device="cpu") for c in configs]
    stacked = run_stacked(configs, device="cpu")
    assert [r["trial_id"] for r in stacked] == [c["trial_id"] for c in configs]
    for one, many in zip(separate, stacked):
        assert many["recorded"]["stacked"] == 3 and many["status"] == "ok" and many["epochs"] == 2
        for a, b in zip(one["history"], many["history"]):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
        assert many["params"] == one["params"] and many["flops"] == one["flops"]
    assert len({r["test_loss"] for r in stacked}) == 3  # three different models, not one copied


def test_per_model_clipping_scales_each_slice_by_its_own_norm():
    grads = [torch.tensor([[3.0, 0.0], [0.3, 0.0]]), torch.tensor([[4.0], [0.4]])]  # norms 5 and 0.5
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    clip_per_model(params, 1.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([[0.6, 0.0], [0.3, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(params[1].grad, torch.tensor([[0.8], [0.4]]), atol=1e-5, rtol=0)


def test_what_cannot_be_stacked_is_refused():
    configs = _configs()
    data_free = build_model  # only the model's modules are inspected
    with pytest.raises(ValueError, match="differ only in their seed"):
        check_stackable([configs[0], {**configs[1], "train_size": 64}], None)
    resnet = _configs("resnet18", {"width": 4})
    from bench.data import build_trial_data

    data = build_trial_data(resnet[0]["dataset"], 128, 0, "cpu")
    with pytest.raises(ValueError, match="batch norm"):
        check_stackable(resnet, data_free(resnet[0], data))
    dropped = _configs(model_args={"dim": 32, "depth": 2, "heads": 2, "patch_size": 4, "drop_path_rate": 0.1})
    with pytest.raises(ValueError, match="dropout"):
        check_stackable(dropped, data_free(dropped[0], data))


@pytest.mark.slow
def test_a_sweep_with_stack_seeds_records_one_ordinary_row_per_seed(ray_local, tmp_path, capsys):
    """`resources.stack_seeds: 2` over 3 seeds of a ViT and 2 of a ResNet: the ViT's seeds run as a
    stack of 2 and one alone, the ResNet (batch norm) separately; every trial is a normal row."""
    import json

    import pandas as pd

    from bench.cli import main
    import yaml

    sweep = {"name": "stacked", "model_args": {"dim": 32, "depth": 1, "heads": 2, "patch_size": 4, "width": 4},
             "dataset": {"name": "spatial", "num_train": 256, "num_test": 128}, "train_size": 128,
             "train": {"epochs": 2, "batch_size": 32}, "resources": {"stack_seeds": 2, "max_failures": 0},
             "grid": {"model": ["vit_ti", "resnet18"], "seed": [0, 1, 2]}}
    path = tmp_path / "stacked.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["run", str(path), "--results", str(tmp_path / "results")]) == 0
    trials = pd.read_parquet(tmp_path / "results" / "stacked" / "trials")
    assert len(trials) == 6 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    stacked = {row.trial_id: json.loads(row.config)["recorded"].get("stacked") for row in trials.itertuples()}
    in_stack = trials.assign(stacked=trials.trial_id.map(stacked).eq(2)).groupby("model")["stacked"].sum()
    assert in_stack.to_dict() == {"vit_ti": 2, "resnet18": 0}
    epochs = pd.read_parquet(tmp_path / "results" / "stacked" / "epochs")
    assert epochs.groupby("trial_id").size().to_dict() == {t: 2 for t in trials.trial_id}
    # a stacked row is the same trial as a separate run of its config
    one = trials[(trials.model == "vit_ti") & trials.trial_id.map(stacked).eq(2)].iloc[0]
    alone = run_trial(json.loads(one.config) | {"recorded": None}, device="cpu")
    assert alone["test_acc"] == pytest.approx(one.test_acc, abs=1e-6)
