"""Sweep file parsing, its errors, grid expansion and trial ids."""

from __future__ import annotations

import pytest

from bench.errors import BenchInputError
from bench.spec import load_sweep, parse_sweep, trial_id

from tests.conftest import REPO

BASE = {"name": "t", "model": "resnet18", "dataset": {"name": "spatial"}}


def sweep(**fields):
    return parse_sweep({**BASE, **fields})


def error_of(raw, **kw) -> str:
    with pytest.raises(BenchInputError) as info:
        parse_sweep(raw, **kw)
    return str(info.value)


def test_quickstart_expands_to_the_full_grid():
    s = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    assert s.name == "quickstart"
    assert len(s.trials) == 3 * 2 * 2
    assert len({t["trial_id"] for t in s.trials}) == 12
    combos = {(t["model"], t["train_size"], t["seed"]) for t in s.trials}
    assert combos == {(m, n, seed) for m in ("resnet18", "vit_ti", "vit_ti_pos") for n in (256, 1024) for seed in (0, 1)}
    assert s.resources.cpus_per_trial == 1 and s.resources.max_failures == 2


def test_grid_order_is_the_cartesian_product_in_key_order():
    s = sweep(grid={"seed": [0, 1], "train.lr": [0.1, 0.2]})
    assert [(t["seed"], t["train"]["lr"]) for t in s.trials] == [(0, 0.1), (0, 0.2), (1, 0.1), (1, 0.2)]


def test_dotted_keys_reach_nested_fields():
    s = sweep(grid={"dataset.sigma": [0.1, 0.9], "model_args.width": [8]})
    assert [t["dataset"]["sigma"] for t in s.trials] == [0.1, 0.9]
    assert all(t["model_args"] == {"width": 8} for t in s.trials)
    assert s.trials[0]["trial_id"] != s.trials[1]["trial_id"]


def test_resolved_trial_holds_every_field():
    t = sweep(train={"epochs": 3}).trials[0]
    assert set(t) == {"sweep", "stage", "dataset", "model", "model_args", "train", "train_size", "seed",
                      "transfer", "source", "analysis", "trial_id"}
    assert t["train"]["epochs"] == 3 and t["train"]["optimizer"] == "adamw"
    assert t["dataset"]["q"] == 0.5  # dataset defaults filled in
    assert t["stage"] == "main" and t["transfer"] is None


def test_trial_id_is_stable_and_ignores_defaults_and_paths():
    implicit = sweep().trials[0]
    explicit = sweep(train={"epochs": 10, "optimizer": "adamw"}, dataset={"name": "spatial", "q": 0.5}).trials[0]
    assert implicit["trial_id"] == explicit["trial_id"]
    assert trial_id(implicit) == implicit["trial_id"]
    # A golden value: trial ids must not drift between bench versions, or resume breaks.
    assert implicit["trial_id"] == trial_id({**implicit, "sweep": "another-sweep-name"})
    assert sweep(seed=1).trials[0]["trial_id"] != implicit["trial_id"]
    assert sweep(train={"lr": 0.01}).trials[0]["trial_id"] != implicit["trial_id"]


def test_trial_id_golden_value():
    """Changing how ids are computed invalidates every stored result; this must be deliberate.
    The golden trial pins the train values of the first release (HASH_REFERENCE_TRAIN)."""
    from bench.spec import HASH_REFERENCE_TRAIN

    assert sweep(train=dict(HASH_REFERENCE_TRAIN)).trials[0]["trial_id"] == GOLDEN_ID


GOLDEN_ID = "f851f6a1a5b3"


def test_a_changed_default_is_a_different_trial_and_new_options_keep_old_ids():
    """Defaults changed (warmup 1 epoch, clipping at 1.0): a trial at the new defaults is not the
    trial stored under the old id; the options added since (precision, compile) at their
    reference values leave ids alone."""
    from bench.spec import HASH_REFERENCE_TRAIN, TrainSpec

    assert sorted(HASH_REFERENCE_TRAIN) == sorted(TrainSpec.model_fields)  # a new field needs its reference value
    at_new_defaults = sweep().trials[0]
    assert at_new_defaults["train"]["warmup_epochs"] == 1.0 and at_new_defaults["train"]["grad_clip"] == 1.0
    assert at_new_defaults["trial_id"] != GOLDEN_ID
    old = dict(HASH_REFERENCE_TRAIN)
    assert sweep(train={**old, "precision": "auto", "compile": False}).trials[0]["trial_id"] == GOLDEN_ID
    assert sweep(train={**old, "compile": True}).trials[0]["trial_id"] != GOLDEN_ID


def test_model_args_apply_to_the_models_that_take_them():
    s = sweep(model_args={"patch_size": 4, "width": 8}, grid={"model": ["resnet18", "vit_ti"]})
    resnet, vit = s.trials
    assert resnet["model_args"] == {"width": 8}
    assert vit["model_args"] == {"patch_size": 4}
    # A ViT-only arg does not change the ResNet's id.
    assert resnet["trial_id"] == sweep(model_args={"width": 8}).trials[0]["trial_id"]


def test_train_size_fraction_or_count():
    s = sweep(grid={"train_size": [0.5, 1, 1.0, 300]})
    sizes = [t["train_size"] for t in s.trials]
    assert sizes == [0.5, 1.0, 300]  # 1 and 1.0 are the same trial (the whole set), run once
    assert isinstance(sizes[2], int)


def test_overrides_with_set():
    s = parse_sweep(BASE, overrides=["train.epochs=3", "grid.seed=[0, 1, 2]"])
    assert [t["seed"] for t in s.trials] == [0, 1, 2]
    assert all(t["train"]["epochs"] == 3 for t in s.trials)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**BASE, "trian": {}}, "trian: unknown key; did you mean 'train'?"),
        ({**BASE, "train": {"lrr": 0.1}}, "train.lrr: unknown key; did you mean 'lr'?"),
        ({**BASE, "train": {"optimizer": "adam"}}, "train.optimizer"),
        ({**BASE, "resources": {"gpus": 1}}, "resources.gpus: unknown key"),
        ({**BASE, "model": "resnet19"}, "unknown model 'resnet19'; did you mean 'resnet18'?"),
        ({**BASE, "grid": {"model": ["vit_tiny"]}}, "grid.model: unknown model 'vit_tiny'"),
        ({**BASE, "dataset": {"name": "cifar11"}}, "unknown dataset 'cifar11'"),
        ({**BASE, "dataset": {"name": "spatial", "sigmaa": 1}}, "sigmaa: unknown option of dataset 'spatial'"),
        ({**BASE, "grid": {"dataset.qq": [0.1]}}, "grid.dataset.qq"),
        ({**BASE, "model_args": {"patchsize": 4}}, "'patchsize' is not an argument of any model; did you mean 'patch_size'?"),
        ({**BASE, "train_size": 0}, "train_size: expected a fraction"),
        ({**BASE, "train_size": 10.5}, "whole number"),
        ({**BASE, "grid": {"train_size": ["all"]}}, "grid.train_size"),
        ({**BASE, "grid": {"seed": []}}, "grid: Value error, seed: an empty list gives no trials"),
        ({**BASE, "grid": {"resources.cpus_per_trial": [1]}}, "grid.resources.cpus_per_trial: cannot sweep 'resources'"),
        ({**BASE, "stages": [{"name": "a"}, {"name": "b", "source": "c"}]}, "stages.b.source: unknown stage 'c'"),
        ({**BASE, "stages": [{"name": "a", "sauce": "b"}]}, "stages[0].sauce: unknown key"),
        ({**BASE, "analysis": ["hessain"]}, "analysis: unknown analysis 'hessain'"),
        ({**BASE, "model": "vit_ti", "analysis": [{"patch_association": {"evry": 2}}]},
         "analysis: patch_association.evry: unknown option; did you mean 'every'?"),
        ({**BASE, "model": "vit_ti", "analysis": [{"patch_association": {"at": ["start"]}}]}, "'start' is not an epoch"),
        ({**BASE, "analysis": "patch_association"}, "analysis: Input should be a valid list"),
        ({**BASE, "train": {"batch_size": "half"}}, "train.batch_size"),
        ({**BASE, "model": "vit_ti", "model_args": {"patch_size": 2}},
         "patch_size 2 for vit_ti, but dataset 'spatial' has 4-px patches"),
        ({**BASE, "name": "a/b"}, "name:"),
        ({"model": "resnet18"}, "name: required field is missing"),
        ({"name": "t"}, "model: no model given"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_errors_name_the_field(raw, expected):
    message = error_of(raw, source="s.yaml")
    assert message.startswith("s.yaml")
    assert expected in message
    assert "\n" not in message


def test_bad_override():
    assert "expected KEY=VALUE" in error_of(BASE, overrides=["train.epochs"])
    assert "train.epochs" in error_of(BASE, overrides=["train.epochs=many"])


def test_load_errors(tmp_path):
    with pytest.raises(BenchInputError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {model: [resnet18\n")
    with pytest.raises(BenchInputError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_sweep(bad)


def test_patch_models_take_the_data_patch_as_their_token():
    t = sweep(model="vit_ti_pos", dataset={"name": "spatial", "patch_size": 2, "grid": 6, "set_size": 4})
    assert t.trials[0]["model_args"] == {"patch_size": 2}
    assert sweep(model="resnet18").trials[0]["model_args"] == {}  # no patch_size argument: untouched
    cifar = sweep(model="vit_ti", dataset={"name": "cifar10"}, model_args={"patch_size": 2})
    assert cifar.trials[0]["model_args"] == {"patch_size": 2}  # real images: the sweep's choice


def test_full_batch_plain_gd_is_expressible():
    t = sweep(model="pa_theory", train={"batch_size": "full", "optimizer": "sgd", "momentum": 0.0,
                                       "weight_decay": 0.0}).trials[0]
    assert t["train"]["batch_size"] == "full" and t["train"]["momentum"] == 0.0


def test_analyses_are_resolved_with_their_options_and_left_out_where_they_do_not_apply():
    s = sweep(analysis=[{"patch_association": {"every": 10}}], grid={"model": ["vit_ti_pos", "resnet18"]})
    vit, resnet = s.trials
    assert vit["analysis"] == [{"name": "patch_association",
                                "options": {"at": ["end"], "every": 10, "batch": 64, "maps": True}}]
    assert resnet["analysis"] == []  # a ResNet has no attention to associate patches with


def test_a_named_axis_sets_several_fields_together():
    s = sweep(model="pa_theory", grid={
        "geometry": [{"dataset.num_patches": 10, "dataset.patch_dim": 10, "dataset.set_size": 2, "train.lr": 0.02},
                     {"dataset.num_patches": 36, "dataset.patch_dim": 36, "train.lr": 0.001}],
        "seed": [0, 1]})
    assert [(t["dataset"]["num_patches"], t["train"]["lr"], t["seed"]) for t in s.trials] == [
        (10, 0.02, 0), (10, 0.02, 1), (36, 0.001, 0), (36, 0.001, 1)]
    assert "cannot set 'resources.cpus_per_trial'" in error_of(
        {**BASE, "grid": {"setting": [{"resources.cpus_per_trial": 1}]}})
    assert "cannot sweep 'geometry'" in error_of({**BASE, "grid": {"geometry": [10, 36]}})


# ------------------------------------------------------------------------ caps on what a file can ask for

ALIAS_BOMB = """\
name: bomb
model: resnet18
description: x
model_args: {a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol],
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b],
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d],
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]}
train: {epochs: [*f, *f, *f, *f, *f, *f, *f, *f, *f]}
"""

BILLION_GRID = "name: big\nmodel: resnet18\ngrid:\n" + "".join(
    f"  {key}: [{', '.join(str(v) for v in values)}]\n" for key, values in [
        ("seed", range(10)), ("train_size", range(1, 11)), ("train.epochs", range(1, 11)),
        ("train.batch_size", range(1, 11)), ("train.lr", [i / 10 for i in range(1, 11)]),
        ("train.weight_decay", [i / 10 for i in range(1, 11)]), ("train.momentum", [i / 20 for i in range(1, 11)]),
        ("train.warmup_epochs", range(1, 11)), ("train.label_smoothing", [i / 20 for i in range(1, 11)])])


@pytest.mark.parametrize("text,fragment", [
    (ALIAS_BOMB, "expands to more than 100,000 values"),
    (BILLION_GRID, "grid: 1,000,000,000 trials (10 x 10 x 10 x 10 x 10 x 10 x 10 x 10 x 10) is more than "
                   "resources.max_trials (100,000)"),
    ("name: deep\nmodel: resnet18\nmodel_args: " + "[" * 5000 + "]" * 5000 + "\n", "nesting depth"),
    ("name: deep\nmodel: resnet18\nmodel_args: {x: " + "[" * 100 + "]" * 100 + "}\n", "nested too deeply"),
    ("a: &a [*a]\n", "a recursive alias"),
], ids=["alias-bomb", "billion-grid", "5000-levels", "100-levels", "recursive-alias"])
def test_hostile_files_exit_2_quickly_with_one_short_line(tmp_path, text, fragment):
    import time

    from tests.conftest import run_main

    assert run_main("validate", str(REPO / "sweeps" / "quickstart.yaml")).returncode == 0  # imports done
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    started = time.perf_counter()
    done = run_main("validate", str(path))
    took = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr[:1000]
    assert len(lines[0]) < 600 and took < 2.0, (len(lines[0]), took)
    print(f"{len(text)} bytes: exit 2 in {took * 1000:.0f} ms")


def test_messages_stay_short_whatever_the_input_held():
    bomb = ["lol"] * 9
    for _ in range(4):  # 59,049 values: under the cap, and shared, as YAML aliases load
        bomb = [bomb] * 9
    message = error_of({**BASE, "train": {"epochs": bomb}})
    assert message.startswith("<sweep>: train.epochs: ") and len(message) <= 450, len(message)
    long_name = error_of({**BASE, "dataset": {"name": "x" * 5000}})
    assert len(long_name) <= 450 and "more characters" in long_name


def test_max_trials_is_a_setting_and_the_file_size_is_capped(tmp_path):
    grid = {"seed": list(range(4)), "train_size": [0.25, 0.5, 1.0]}
    assert "12 trials (4 x 3) is more than resources.max_trials (10)" in error_of(
        {**BASE, "grid": grid, "resources": {"max_trials": 10}})
    assert len(sweep(grid=grid, resources={"max_trials": 12}).trials) == 12
    big = tmp_path / "big.yaml"
    big.write_text("name: big\nmodel: resnet18\ndescription: '" + "x" * 1_100_000 + "'\n")
    with pytest.raises(BenchInputError, match="1,100,0.. bytes; a sweep file has at most 1,000,000"):
        load_sweep(big)


@pytest.mark.parametrize("dataset,fragment", [
    ({"name": "spatial", "num_train": 4_000_000_000}, "at most 10,000,000 generated samples"),
    ({"name": "spatial", "num_train": 1_000_000, "num_patches": 1000, "patch_dim": 100}, "values in memory"),
    ({"name": "imagefolder", "root": "/nowhere", "img_size": 100_000}, "images of 100,000 pixels a side"),
])
def test_data_size_caps(dataset, fragment):
    assert fragment in error_of({**BASE, "dataset": dataset})
