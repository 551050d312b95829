"""Defaults that train: every zoo model, with the default train settings, learns a small real dataset in a few epochs.

The data is scikit-learn's handwritten digits written as a real 10-class ImageFolder of
32-px PNGs (tests/helpers/digits.py), read by the `imagefolder` dataset as a user's own
images would be. Only the run's length is set (epochs, batch size, training images);
optimizer, learning rate, weight decay, schedule, warmup and clipping are TrainSpec's
defaults, so a default that leaves a model at chance (as lr 1e-3 without warmup left
ViT-Ti at 10% on this data) fails here.

The models are the zoo's architectures at small width and depth (their own model_args)
so that the whole file runs in about a minute on 2 CPU cores. Full-size models were
checked by hand on the same data (1,437 training images, default batch 128, 4 epochs,
2026-11-30): ViT-Ti patch 4 reached 20.3% with the old defaults (no warmup, no clipping)
and 38.6% with these; ViT-Ti patch 2 (the default) 20.6% with these, its loss still falling
after 45 steps (at chance before); ResNet-50 with the ImageNet stem 91%.
"""

from __future__ import annotations

import functools

import pytest

from bench.data import imagefolder
from bench.models import list_models, model_entry
from bench.spec import TrainSpec, parse_sweep
from bench.train import run_trial
from tests.helpers.digits import write_digits_imagefolder

pytestmark = pytest.mark.slow

#: Small versions of each architecture, for CPU time only: narrower, shallower, coarser
#: patches (8 px: a 4x4 token grid), the ResNets with the stride-4 ImageNet stem.
SMALL = {
    "vit_ti": {"patch_size": 8, "dim": 64, "depth": 2, "heads": 2},
    "vit_ti_pos": {"patch_size": 8, "dim": 64, "depth": 2, "heads": 2},
    "vit_s": {"patch_size": 8, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 1.0},  # Jelassi et al.'s layout
    "vit_s_pos": {"patch_size": 8, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 1.0},
    "convit_ti": {"patch_size": 8, "dim": 64, "depth": 2, "heads": 2},
    "mixer_ti": {"patch_size": 8, "dim": 64, "depth": 2},
    "pit_ti": {"patch_size": 4, "patch_stride": 4, "dim": 32, "depths": [1, 1, 1], "heads": [1, 2, 4]},
    "swin_ti": {"patch_size": 4, "window_size": 4, "dim": 32, "depths": [1, 1], "heads": [1, 2]},
    "resnet18": {"width": 8, "stem": "imagenet"},
    "resnet50": {"width": 16, "stem": "imagenet"},
    "preact_resnet50": {"width": 8, "stem": "imagenet"},
    "alternet50": {"width": 4, "stem": "imagenet", "heads": [1, 1, 1, 1], "head_dim": 8},
}
ZOO = [m for m in list_models() if model_entry(m).paper and model_entry(m).input_kind == "image"]
#: The run's length, the only train settings given: 100 images per class (1,000), 4 epochs of 32-image steps.
RUN = {"epochs": 4, "batch_size": 32}
PER_CLASS = 100
CHANCE = 0.1
#: Clearly above chance; the accuracies measured at these settings are in the issue 13 report.
AT_LEAST = 0.3


def test_every_image_model_of_the_zoo_is_covered():
    assert sorted(SMALL) == sorted(ZOO), "a new zoo model needs its small model_args here"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits"), size=32, per_class=PER_CLASS)


@pytest.fixture(scope="module", autouse=True)
def decode_once():
    """Each trial decodes the same 1,355 PNGs; decode them once (for time: the images are the same)."""
    original = imagefolder.read_images

    @functools.lru_cache(maxsize=None)
    def cached(samples, img_size):
        return original(list(samples), img_size)

    def read_images(samples, img_size):
        images, labels = cached(tuple(samples), img_size)
        return images.clone(), labels.clone()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imagefolder, "read_images", read_images)
        yield


@pytest.mark.parametrize("model", sorted(SMALL))
def test_default_train_settings_learn(model, digits):
    sweep = parse_sweep({"name": "defaults", "model": model, "model_args": SMALL[model],
                         "dataset": {"name": "imagefolder", "root": str(digits)}, "train": RUN})
    config = sweep.trials[0]
    defaults = TrainSpec().model_dump()
    assert {k for k, v in config["train"].items() if defaults[k] != v} <= set(RUN)  # everything else is a default
    result = run_trial(config, device="cpu")
    assert result["n_train"] == 10 * PER_CLASS
    curve = [round(e["test_acc"], 3) for e in result["history"]]
    print(f"{model}: test accuracy by epoch {curve}")
    assert result["test_acc"] >= AT_LEAST, f"{model}: test accuracy by epoch {curve}, chance {CHANCE}"
