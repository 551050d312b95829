"""Transfer settings: multi-stage sweep files, the transfer modes, and a real two-stage sweep on Ray."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main
from bench.errors import BenchInputError
from bench.spec import parse_sweep
from bench.store import ResultStore
from bench.train import run_trial
from bench.transfer import freeze_for_mode, load_source_weights, mode_problem
from bench.models import create_model

from tests.conftest import REPO, mlflow_runs

PATCHES = {"name": "spatial", "num_patches": 10, "patch_dim": 10, "set_size": 2, "partition": "random",
           "num_train": 512, "num_test": 256}
GD = {"epochs": 5, "batch_size": "full", "optimizer": "sgd", "momentum": 0.0, "lr": 0.02, "weight_decay": 0.0,
      "schedule": "constant"}


def two_stage(**downstream) -> dict:
    return {
        "name": "tr",
        "dataset": PATCHES,
        "model": "pa_theory",
        "train": GD,
        "stages": [
            {"name": "pretrain", "grid": {"seed": [0, 1]}},
            {"name": "downstream", "source": "pretrain", "dataset": {"feature_seed": 1},
             "grid": {"transfer": ["scratch", "freeze_attention"], "train_size": [16, 64], "seed": [0, 1]},
             **downstream},
        ],
    }


def test_stages_expand_in_order_and_link_each_trial_to_its_source() -> None:
    sweep = parse_sweep(two_stage())
    assert sweep.stages == ["pretrain", "downstream"] and sweep.sources == {"downstream": "pretrain"}
    pre, down = sweep.stage_trials("pretrain"), sweep.stage_trials("downstream")
    assert len(pre) == 2 and len(down) == 8
    by_seed = {t["seed"]: t["trial_id"] for t in pre}
    for trial in down:
        assert trial["source"] == by_seed[trial["seed"]]  # matched on the shared grid key: seed
        assert trial["dataset"]["feature_seed"] == 1 and trial["dataset"]["num_patches"] == 10
    assert all(t["transfer"] is None and t["source"] is None for t in pre)
    assert len({t["trial_id"] for t in sweep.trials}) == 10
    assert sweep.source_stages == {"pretrain"}


DESIGN_TWO_STAGE = """
name: jelassi2022-transfer
stages:
  - name: pretrain
    dataset: {name: spatial, feature_seed: 0}
    grid: {model: [vit_ti_pos, vit_ti], seed: [0, 1, 2]}
  - name: finetune
    source: pretrain                # start from the matching pretrain trial (same model, seed)
    dataset: {name: spatial, feature_seed: 1}
    grid: {transfer: [scratch, linear_probe, finetune, freeze_attention], train_size: [16, 64, 256]}
"""


def test_designs_two_stage_example_validates_and_links_same_model_and_seed() -> None:
    """DESIGN.md's example, verbatim: the downstream stage sweeps neither model nor seed, so it
    inherits both axes of its source and every trial starts from the pretrain trial of its model and seed."""
    sweep = parse_sweep(yaml.safe_load(DESIGN_TWO_STAGE), source="design.yaml")
    pre, down = sweep.stage_trials("pretrain"), sweep.stage_trials("finetune")
    assert len(pre) == 6 and len(down) == 6 * 4 * 3
    by_key = {(t["model"], t["seed"]): t["trial_id"] for t in pre}
    assert len(by_key) == 6
    for trial in down:
        assert trial["source"] == by_key[(trial["model"], trial["seed"])]
        assert trial["dataset"]["feature_seed"] == 1
    cells = {(t["model"], t["seed"], t["transfer"], t["train_size"]) for t in down}
    assert len(cells) == len(down)  # every model x seed x transfer x train_size once


def test_a_stage_inherits_only_what_it_does_not_sweep_or_set() -> None:
    pretrain = {"name": "pretrain", "model": "pa_theory", "grid": {"seed": [0, 1], "train.lr": [0.01, 0.02]}}

    def sweep_with(**down):
        return {"name": "inh", "dataset": PATCHES, "train": GD,
                "stages": [pretrain, {"name": "down", "source": "pretrain", **down}]}

    # Inherited: the model of the source stage's own block, and both of its axes.
    sweep = parse_sweep(sweep_with(dataset={"feature_seed": 1}, grid={"transfer": ["scratch"]}))
    pre = {(t["seed"], t["train"]["lr"]): t["trial_id"] for t in sweep.stage_trials("pretrain")}
    down = sweep.stage_trials("down")
    assert len(down) == 4 and all(t["model"] == "pa_theory" for t in down)
    for trial in down:
        assert trial["source"] == pre[(trial["seed"], trial["train"]["lr"])]
    # Set in the stage's own block: not inherited (so the two source learning rates both match).
    with pytest.raises(BenchInputError, match="2 source trials match pa_theory seed=1"):
        parse_sweep(sweep_with(train={"lr": 0.05}, grid={"transfer": ["scratch"], "seed": [1]}))
    # Swept by the stage: its own values, matched against the source's.
    with pytest.raises(BenchInputError, match="no source trial matches pa_theory seed=0 train.lr=0.03"):
        parse_sweep(sweep_with(grid={"transfer": ["scratch"], "seed": [0], "train.lr": [0.03]}))
    # A dataset axis does not follow the stage onto another dataset (spatial_control has no q).
    pretrain["grid"] = {"seed": [0], "dataset.q": [0.25, 0.5]}
    with pytest.raises(BenchInputError, match="2 source trials match pa_theory seed=0"):
        parse_sweep(sweep_with(dataset={"name": "spatial_control", "num_patches": 10, "patch_dim": 10, "set_size": 2},
                               grid={"transfer": ["scratch"]}))


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"source": "pretrian"}, "stages.downstream.source: unknown stage 'pretrian'; did you mean 'pretrain'?"),
        ({"grid": {"transfer": ["frozen"], "seed": [0, 1]}}, "unknown transfer mode 'frozen'"),
        ({"grid": {"transfer": ["linear_probe"], "seed": [0, 1]}}, "linear_probe trains only a classifier"),
        # A seed set in the stage itself (not swept) is not inherited from the source's seed axis.
        ({"seed": 0, "grid": {"transfer": ["finetune"]}}, "2 source trials match pa_theory"),
        ({"grid": {"transfer": ["finetune"], "seed": [5]}}, "no source trial matches pa_theory seed=5"),
        ({"model": "resnet18", "dataset": {"name": "spatial"}, "grid": {"transfer": ["finetune"], "seed": [0]}},
         "no source trial matches resnet18"),
    ],
)
def test_bad_stages_are_input_errors(change: dict, expected: str) -> None:
    raw = two_stage(**change)
    with pytest.raises(BenchInputError) as info:
        parse_sweep(raw, source="s.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_cycles_modes_that_do_not_fit_and_transfer_without_source() -> None:
    cycle = {"name": "c", "model": "pa_theory", "dataset": PATCHES,
             "stages": [{"name": "a", "source": "b"}, {"name": "b", "source": "a"}]}
    with pytest.raises(BenchInputError, match="the sources form a cycle"):
        parse_sweep(cycle)
    resnet = {"name": "r", "model": "resnet18", "dataset": {"name": "spatial"},
              "stages": [{"name": "a"}, {"name": "b", "source": "a", "transfer": "freeze_attention"}]}
    with pytest.raises(BenchInputError, match="freeze_attention needs a model with attention; resnet18 has none"):
        parse_sweep(resnet)
    with pytest.raises(BenchInputError, match="a transfer mode needs a stage with a 'source'"):
        parse_sweep({"name": "x", "model": "resnet18", "transfer": "finetune"})
    assert mode_problem("freeze_backbone", "resnet18") is None and mode_problem("linear_probe", "vit_ti") is None


def test_modes_freeze_what_they_say_and_a_new_head_when_classes_change() -> None:
    source = create_model("vit_ti_pos", 10, img_size=16, patch_size=4, depth=2, dim=32, heads=2)
    target = create_model("vit_ti_pos", 4, img_size=16, patch_size=4, depth=2, dim=32, heads=2)
    assert load_source_weights(target, source.state_dict()) == ["head.weight", "head.bias"]
    assert torch.equal(target.stem.pos_embed, source.stem.pos_embed)
    frozen = freeze_for_mode(target, "freeze_attention")
    assert frozen == sorted(n for n, _ in target.attention_parameters())
    probe = create_model("resnet18", 10, width=8)
    trainable = set(n for n, p in probe.named_parameters() if p.requires_grad) - set(freeze_for_mode(probe, "linear_probe"))
    assert trainable == {"fc.weight", "fc.bias"}


def test_finetune_from_source_weights_in_the_worker_keeps_frozen_parameters_bit_identical() -> None:
    sweep = parse_sweep(two_stage())
    pretrain = sweep.stage_trials("pretrain")[0]
    source = create_model("pa_theory", 2, img_size=10, in_chans=10)
    with torch.no_grad():
        source.attn.offdiag.normal_()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    frozen_trial = next(t for t in sweep.stage_trials("downstream")
                        if t["transfer"] == "freeze_attention" and t["source"] == pretrain["trial_id"])
    captured = {}
    run_trial(frozen_trial, device="cpu", source_state=state,
              on_epoch=lambda row, get_state: captured.update(get_state()["model"]))
    assert torch.equal(captured["attn.offdiag"], state["attn.offdiag"])  # frozen: bit-identical
    assert not torch.equal(captured["v"], state["v"])  # trained


@pytest.mark.slow
def test_two_stage_sweep_on_ray_transfers_weights_and_resumes_without_retraining(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --results, as a user types it: workers run in other folders
    raw = two_stage()
    raw["keep_weights"] = True  # keep the downstream weights too, to compare them with their sources
    raw["stages"][1]["grid"] = {"transfer": ["finetune", "freeze_attention"], "train_size": [64], "seed": [0, 1]}
    path = tmp_path / "tr.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", "results"]) == 0

    store = ResultStore(results, "tr")
    trials = pd.read_parquet(results / "tr" / "trials").set_index("trial_id")
    assert len(trials) == 6 and set(trials.status) == {"ok"}
    down = trials[trials.stage == "downstream"]
    assert set(down.transfer) == {"finetune", "freeze_attention"}
    for tid, row in down.iterrows():
        source = trials.loc[row.source_trial_id]
        assert source.stage == "pretrain" and source.seed == row.seed  # linked to its own source
        before, after = store.read_model(row.source_trial_id), store.read_model(tid)
        config = json.loads(row.config)
        if row.transfer == "freeze_attention":
            assert torch.equal(after["attn.offdiag"], before["attn.offdiag"])  # its own source's A, untouched
            assert config["recorded"]["param_groups"]["frozen"] == ["attn.offdiag"]
        else:
            assert not torch.equal(after["attn.offdiag"], before["attn.offdiag"])
            assert config["recorded"]["param_groups"]["frozen"] == []
        assert not torch.equal(after["v"], before["v"])
    # The two sources differ, so loading the wrong one would have been caught above.
    sources = list(trials[trials.stage == "pretrain"].index)
    assert not torch.equal(store.read_model(sources[0])["v"], store.read_model(sources[1])["v"])

    children, _ = mlflow_runs(f"sqlite:///{results}/mlflow.db", "tr")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results}/mlflow.db")
    source_runs = [r for r in children if r.data.tags["trial_id"] in sources]
    assert len(source_runs) == 2
    for run in source_runs:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == [f"model/{run.data.tags['trial_id']}.pt"]

    # A later launch (after an interruption in stage 2, or a changed stage 2) retrains nothing of stage 1.
    stamps = {p.name: p.stat().st_mtime_ns for p in (results / "tr" / "trials").iterdir()}
    (results / "tr" / "trials" / f"{down.index[0]}.parquet").unlink()  # as if stage 2 was cut short
    assert main(["run", str(path), "--results", "results"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (results / "tr" / "trials").iterdir()}
    assert {n: after[n] for n in after if n[:-8] in sources} == {n: stamps[n] for n in stamps if n[:-8] in sources}
    assert f"{down.index[0]}.parquet" in after and len(after) == 6


@pytest.mark.slow
def test_the_cifar_transfer_sweep_runs_on_tiny_real_format_files(ray_local, tmp_path):
    """sweeps/transfer_cifar.yaml end to end (4 stages) on CIFAR files in torchvision's format, narrowed
    with --set to two models and two modes (12 trials) to keep CI short."""
    from tests.test_data_sets import write_cifar10, write_cifar100

    data = tmp_path / "data"
    write_cifar10(data, per_batch=8, test=10)
    write_cifar100(data, n_train=20, n_test=10)
    results = tmp_path / "results"
    sweep = str(REPO / "sweeps" / "transfer_cifar.yaml")
    narrow = [f"stages.{i}.grid.model=[resnet18, vit_ti_pos]" for i in range(4)]
    narrow += [f"stages.{i}.grid.transfer=[scratch, linear_probe]" for i in (1, 3)]
    code = main(["run", sweep, "--results", str(results), "--set", f"dataset.root={data}", "--set", "train.epochs=1",
                 "--set", "train_size=1.0", "--set", "train.batch_size=16", *(a for n in narrow for a in ("--set", n))])
    assert code == 0
    trials = pd.read_parquet(results / "transfer-cifar" / "trials")
    assert len(trials) == 12 and set(trials.status) == {"ok"}
    down = trials[trials.stage.isin(["cifar10_from_cifar100", "cifar10_from_shuffled"])]
    assert len(down) == 8 and down.source_trial_id.notna().all()
    probe = down[down.transfer == "linear_probe"]
    assert len(probe) == 4
    for stage, config in zip(probe.stage, map(json.loads, probe.config)):
        head = {"resnet18": ["fc.weight", "fc.bias"]}.get(config["model"], ["head.weight", "head.bias"])
        # 100 -> 10 classes: a new classifier; 10 -> 10 (from shuffled CIFAR-10): the source's
        assert config["recorded"]["new_head"] == (head if stage == "cifar10_from_cifar100" else [])
        assert set(config["recorded"]["param_groups"]["decay"] + config["recorded"]["param_groups"]["no_decay"]) == set(head)
    assert set(trials[trials.stage == "shuffled"].dataset) == {"cifar10"}
