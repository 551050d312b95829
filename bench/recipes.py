"""The papers' training recipes as named presets of train settings (`recipe: park2022`).

A sweep file names a recipe instead of repeating fifteen training keys. The recipe sits
between the schema defaults and what the file says: TrainSpec defaults < recipe < the
sweep's `train:` block < a stage's `train:` < grid and `--set`. A recipe may also set model
arguments (RECIPE_MODEL_ARGS: park2022's stochastic depth), under the sweep's `model_args`. A recipe is resolved
into plain train values before trial ids are computed, so a trial's id depends on the
values it trains with, never on the recipe's name (the same values written out by hand
give the same trial).

Every value says where it comes from in ../shared/PAPERS.md ("A" Jelassi et al., "B"
Park & Kim). Values marked (open) are not published; they are our choice. A recipe lists
every setting its optimiser and schedule use, also those equal to today's TrainSpec
defaults, so that a later change of a default does not change what a recipe trains.
"""

from __future__ import annotations

import copy
from typing import Any

from bench.errors import BenchInputError, suggestion

#: Park & Kim 2022, PAPERS.md B, "CIFAR recipe (used for CNNs and ViTs)".
PARK2022: dict[str, Any] = {
    # "5 warmup epochs (linear) then 300 cosine epochs": bench counts warmup inside `epochs`,
    # and its cosine runs over the epochs after warmup, so 305 = 5 + 300.
    "epochs": 305,
    "warmup_epochs": 5,
    "schedule": "cosine",
    # "AdamW lr 1.25e-4 at batch 96, weight decay 0.05"
    "optimizer": "adamw",
    "batch_size": 96,
    "lr": 1.25e-4,
    "weight_decay": 0.05,
    # "gradient clipping 5"
    "grad_clip": 5.0,
    # "Random crop 32 pad 4, horizontal flip, RandAugment (m9, n2), Mixup alpha 1.0 /
    # CutMix alpha 0.8 (one of them per batch)": bench's mixing draws one of the two per
    # batch when both are listed. "no random erasing": bench has none.
    "augment": ["crop", "flip", "randaugment", "mixup", "cutmix"],
    "crop_padding": 4,
    "randaugment_n": 2,
    "randaugment_m": 9,
    "mixup_alpha": 1.0,
    "cutmix_alpha": 0.8,
    # "label smoothing 0.1"
    "label_smoothing": 0.1,
    # Stochastic depth is a model argument: PARK2022_MODEL_ARGS. ECE (10 bins) is computed for
    # every trial's test predictions (bench.calibration), whatever the recipe.
}

#: Park & Kim 2022, model arguments of the same recipe. Stochastic depth 0.1: PAPERS.md B had it
#: "(open whether used)"; the authors' public code settles it: configs/cifar100_vit.yaml (and
#: cifar10_vit.yaml), "This configuration was used for both CNNs and ViTs", sets `model.block.sd:
#: 0.1`, and their ResNet, ViT and AlterNet builders (models/resnet.py, vit.py, alternet.py) raise
#: the rate linearly from 0 at the first block to 0.1 at the last, as bench's `drop_path_rate`
#: does (bench.models.layers.drop_path_rates). A model without the argument (swin_ti) runs without it.
PARK2022_MODEL_ARGS: dict[str, Any] = {"drop_path_rate": 0.1}

#: Jelassi, Sander & Li 2022, PAPERS.md A, "Real-data experiment" (CIFAR-10/100, SVHN).
JELASSI2022: dict[str, Any] = {
    # "AdamW, cosine schedule, 300 epochs, batch 128 (1024 ImageNet)": the ImageNet sweep
    # sets batch_size 1024 itself.
    "epochs": 300,
    "schedule": "cosine",
    "optimizer": "adamw",
    "batch_size": 128,
    # "standard augmentation": read as random crop with 4-px padding and horizontal flip (open).
    "augment": ["crop", "flip"],
    "crop_padding": 4,
    # Not published (open): the learning rate, weight decay, warmup, label smoothing and
    # clipping. Our choice: the usual AdamW ViT settings at batch 128, a 5-epoch linear
    # warmup (ViTs stall without one), no label smoothing and no clipping (none is mentioned).
    "lr": 1.0e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 5,
    "label_smoothing": 0.0,
    "grad_clip": None,
}

RECIPES: dict[str, dict[str, Any]] = {"park2022": PARK2022, "jelassi2022": JELASSI2022}
#: The model_args part of a recipe: under the sweep's `model_args` (which wins key by key); an
#: argument a grid's model does not take is dropped for that model, as any shared model_args.
RECIPE_MODEL_ARGS: dict[str, dict[str, Any]] = {"park2022": PARK2022_MODEL_ARGS, "jelassi2022": {}}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def recipe_train(name: str) -> dict[str, Any]:
    """The train settings of a recipe (a copy: callers may merge into it)."""
    try:
        return copy.deepcopy(RECIPES[name])
    except (KeyError, TypeError):
        raise BenchInputError(f"unknown recipe '{name}'{suggestion(name, list_recipes())}") from None


def recipe_model_args(name: str) -> dict[str, Any]:
    """The model arguments of a recipe (a copy); {} for a recipe that sets none."""
    recipe_train(name)  # the same error for an unknown name
    return copy.deepcopy(RECIPE_MODEL_ARGS.get(name, {}))
