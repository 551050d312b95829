"""Named train recipes (`recipe: park2022`) and the `smoke:` section of sweep files."""

from __future__ import annotations

import pytest

from bench.errors import BenchInputError
from bench.recipes import RECIPE_MODEL_ARGS, RECIPES, list_recipes, recipe_model_args, recipe_train
from bench.spec import TrainSpec, parse_sweep

from tests.conftest import run_main

BASE = {"name": "t", "model": "resnet18", "dataset": {"name": "cifar10"}}


def trial(raw: dict, **kw) -> dict:
    return parse_sweep(raw, source="s.yaml", **kw).trials[0]


def error_of(raw, **kw) -> str:
    with pytest.raises(BenchInputError) as info:
        parse_sweep(raw, source="s.yaml", **kw)
    return str(info.value)


# ------------------------------------------------------------------------------ recipes


def test_every_recipe_is_a_valid_train_block_with_the_papers_values():
    assert list_recipes() == ["jelassi2022", "park2022"]
    for name in list_recipes():
        TrainSpec.model_validate(RECIPES[name])  # no unknown keys, every value in range
    park = recipe_train("park2022")
    assert (park["lr"], park["batch_size"], park["weight_decay"], park["grad_clip"]) == (1.25e-4, 96, 0.05, 5.0)
    assert (park["epochs"], park["warmup_epochs"], park["label_smoothing"]) == (305, 5, 0.1)
    assert park["augment"] == ["crop", "flip", "randaugment", "mixup", "cutmix"]
    assert (park["randaugment_m"], park["randaugment_n"], park["mixup_alpha"], park["cutmix_alpha"]) == (9, 2, 1.0, 0.8)
    jelassi = recipe_train("jelassi2022")
    assert (jelassi["optimizer"], jelassi["schedule"], jelassi["epochs"], jelassi["batch_size"]) == ("adamw", "cosine", 300, 128)
    jelassi["augment"].append("mixup")  # a copy: callers may change it
    assert RECIPES["jelassi2022"]["augment"] == ["crop", "flip"]


def test_precedence_defaults_recipe_train_block_stage_grid_and_set():
    plain = trial(BASE)
    assert plain["train"]["lr"] == TrainSpec().lr
    with_recipe = trial({**BASE, "recipe": "park2022"})
    assert with_recipe["train"] == TrainSpec.model_validate(RECIPES["park2022"]).model_dump()
    # the sweep's train block wins over the recipe, key by key
    mine = trial({**BASE, "recipe": "park2022", "train": {"lr": 3e-4}})
    assert mine["train"]["lr"] == 3e-4 and mine["train"]["batch_size"] == 96
    # a grid and --set win over both
    swept = parse_sweep({**BASE, "recipe": "park2022", "train": {"lr": 3e-4}, "grid": {"train.lr": [1e-2]}}).trials
    assert [t["train"]["lr"] for t in swept] == [1e-2]
    assert trial({**BASE, "recipe": "park2022", "train": {"lr": 3e-4}}, overrides=["train.lr=0.5"])["train"]["lr"] == 0.5
    # --set can choose the recipe too
    assert trial(BASE, overrides=["recipe=jelassi2022"])["train"]["epochs"] == 300


def test_stages_take_the_sweeps_recipe_or_their_own():
    raw = {
        **BASE, "recipe": "park2022", "train": {"epochs": 7},
        "stages": [
            {"name": "pre", "grid": {"seed": [0]}},
            {"name": "own", "recipe": "jelassi2022", "grid": {"seed": [0]}},
            {"name": "mine", "recipe": "jelassi2022", "train": {"batch_size": 64}, "grid": {"seed": [0]}},
        ],
    }
    pre, own, mine = parse_sweep(raw).trials
    assert (pre["train"]["lr"], pre["train"]["epochs"]) == (1.25e-4, 7)  # the sweep's train block over its recipe
    assert (own["train"]["lr"], own["train"]["epochs"], own["train"]["batch_size"]) == (1e-3, 7, 128)
    assert (mine["train"]["batch_size"], mine["train"]["epochs"]) == (64, 7)


def test_park2022_sets_stochastic_depth_for_every_model_that_takes_it():
    """The authors' configs set sd 0.1 for CNNs and ViTs alike; a model without the argument
    (pa_theory) runs without it, and the sweep's own model_args, a grid or --set win."""
    assert recipe_model_args("park2022") == {"drop_path_rate": 0.1} and recipe_model_args("jelassi2022") == {}
    raw = {**BASE, "recipe": "park2022", "dataset": {"name": "spatial"},
           "grid": {"model": ["resnet18", "vit_ti", "alternet50", "pa_theory"]}}
    by_model = {t["model"]: t["model_args"] for t in parse_sweep(raw).trials}
    assert [by_model[m].get("drop_path_rate") for m in ("resnet18", "vit_ti", "alternet50")] == [0.1, 0.1, 0.1]
    assert "drop_path_rate" not in by_model["pa_theory"]
    assert trial({**BASE, "recipe": "park2022", "model_args": {"drop_path_rate": 0.0, "width": 8}})["model_args"] == \
        {"drop_path_rate": 0.0, "width": 8}
    assert trial({**BASE, "recipe": "park2022"}, overrides=["model_args.drop_path_rate=0.2"])["model_args"] == \
        {"drop_path_rate": 0.2}
    assert "drop_path_rate" not in trial({**BASE, "recipe": "jelassi2022"})["model_args"]
    assert "drop_path_rate" not in trial(BASE)["model_args"]
    staged = parse_sweep({**BASE, "recipe": "park2022", "stages": [{"name": "a", "grid": {"seed": [0]}},
                                                                    {"name": "b", "recipe": "jelassi2022",
                                                                     "grid": {"seed": [0]}}]}).trials
    assert [t["model_args"].get("drop_path_rate") for t in staged] == [0.1, None]


def test_trial_id_depends_on_the_values_not_on_the_recipe_name():
    by_name = trial({**BASE, "recipe": "park2022"})
    written_out = trial({**BASE, "train": RECIPES["park2022"], "model_args": RECIPE_MODEL_ARGS["park2022"]})
    assert by_name["trial_id"] == written_out["trial_id"]
    assert by_name["train"] == written_out["train"]
    assert "recipe" not in by_name  # the name is not part of the trial config
    assert by_name["trial_id"] != trial(BASE)["trial_id"]
    # a recipe whose values are all overridden back to the defaults is the plain trial
    defaults = {k: v for k, v in TrainSpec().model_dump().items() if k in RECIPES["jelassi2022"]}
    assert trial({**BASE, "recipe": "jelassi2022", "train": defaults})["trial_id"] == trial(BASE)["trial_id"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**BASE, "recipe": "park2021"}, "s.yaml: recipe: unknown recipe 'park2021'; did you mean 'park2022'?"),
        ({**BASE, "recipe": "nope"}, "s.yaml: recipe: unknown recipe 'nope' (known: jelassi2022, park2022)"),
        ({**BASE, "recipe": ["park2022"]}, "s.yaml: recipe: expected a recipe name"),
        ({**BASE, "stages": [{"name": "a", "recipe": "jelasi2022"}]},
         "s.yaml: stages.a: recipe: unknown recipe 'jelasi2022'; did you mean 'jelassi2022'?"),
        ({**BASE, "recipie": "park2022"}, "s.yaml: recipie: unknown key; did you mean 'recipe'?"),
        ({**BASE, "recipe": "park2022", "train": {"lrr": 1}}, "s.yaml: train.lrr: unknown key; did you mean 'lr'?"),
    ],
)
def test_recipe_errors_are_one_line_naming_the_field(raw, expected):
    message = error_of(raw)
    assert message.startswith(expected)
    assert "\n" not in message


# -------------------------------------------------------------------------------- smoke

SMOKY = {**BASE, "train": {"epochs": 50}, "grid": {"seed": [0, 1, 2], "model_args.width": [64]},
         "smoke": {"train.epochs": 1, "grid.seed": [0], "grid.model_args.width": [8], "dataset.root": "/tiny"}}


def test_smoke_applies_the_section_before_set_and_renames_the_sweep():
    full = parse_sweep(SMOKY)
    assert full.name == "t" and len(full.trials) == 3 and full.trials[0]["train"]["epochs"] == 50
    assert full.trials[0]["model_args"] == {"width": 64}
    smoke = parse_sweep(SMOKY, smoke=True)
    assert smoke.name == "t-smoke"  # its results never mix with the full run's
    assert [(t["seed"], t["train"]["epochs"], t["model_args"]["width"]) for t in smoke.trials] == [(0, 1, 8)]
    assert smoke.trials[0]["dataset"]["root"] == "/tiny"
    # --set comes after the smoke section
    both = parse_sweep(SMOKY, smoke=True, overrides=["train.epochs=2", "grid.seed=[3, 4]"])
    assert [(t["seed"], t["train"]["epochs"]) for t in both.trials] == [(3, 2), (4, 2)]
    named = parse_sweep({**SMOKY, "smoke": {**SMOKY["smoke"], "name": "tiny"}}, smoke=True)
    assert named.name == "tiny"


def test_smoke_trial_ids_are_those_of_the_same_values_set_by_hand():
    smoke = parse_sweep(SMOKY, smoke=True).trials[0]
    by_hand = parse_sweep({k: v for k, v in SMOKY.items() if k != "smoke"},
                          overrides=["train.epochs=1", "grid.seed=[0]", "grid.model_args.width=[8]"]).trials[0]
    assert smoke["trial_id"] == by_hand["trial_id"]


def test_a_broken_smoke_section_is_an_error_even_without_smoke():
    bad = {**SMOKY, "smoke": {"grid.model": ["resnet19"]}}
    message = error_of(bad)
    assert message.startswith("s.yaml: smoke: grid.model: unknown model 'resnet19'; did you mean 'resnet18'?")
    assert error_of({**SMOKY, "smoke": {"trian.epochs": 1}}).startswith("s.yaml: smoke: trian: unknown key")
    assert "expected a mapping of dotted overrides" in error_of({**SMOKY, "smoke": ["train.epochs=1"]})
    assert "smoke: train.epochs.x: 'epochs' is not a mapping" in error_of({**SMOKY, "smoke": {"train.epochs.x": 1}})
    assert "no 'smoke:' section" in error_of(BASE, smoke=True)
    assert "the smoke section is read from the file before --set" in error_of(BASE, overrides=["smoke.train.epochs=1"])


def test_grid_keys_with_dots_are_one_key_for_set_and_smoke():
    raw = {**BASE, "grid": {"model_args.width": [64], "setting": [{"train.lr": 0.1}, {"train.lr": 0.2}]}}
    s = parse_sweep(raw, overrides=["grid.model_args.width=[8, 16]", "grid.setting.1.train.lr=0.3"])
    assert sorted({(t["model_args"]["width"], t["train"]["lr"]) for t in s.trials}) == [(8, 0.1), (8, 0.3), (16, 0.1), (16, 0.3)]
    staged = {**BASE, "stages": [{"name": "a", "grid": {"model_args.width": [64]}}]}
    s = parse_sweep(staged, overrides=["stages.0.grid.model_args.width=[4]"])
    assert [t["model_args"]["width"] for t in s.trials] == [4]


def test_cli_validate_and_dry_run_take_smoke(tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SMOKY, "recipe": "park2022"}))
    plain = run_main("validate", str(path))
    assert plain.returncode == 0 and plain.stdout.startswith("t: 3 trials"), plain.stderr
    smoke = run_main("validate", str(path), "--smoke", "--set", "grid.seed=[0,1]")
    assert smoke.returncode == 0 and smoke.stdout.startswith("t-smoke: 2 trials"), smoke.stderr
    dry = run_main("run", str(path), "--smoke", "--dry-run", "--results", str(tmp_path / "results"))
    assert dry.returncode == 0 and "t-smoke: 1 trials, 1 to run" in dry.stdout, dry.stderr
    bad = run_main("validate", str(path), "--set", "recipe=park2021")
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"bench: error: {path}: recipe: unknown recipe 'park2021'; did you mean 'park2022'?"
