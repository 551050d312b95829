"""The worker's device settings (bench.accel): the GPU rules checked on a CPU, and the CPU paths run for real."""

from __future__ import annotations

import pytest
import torch

from bench import accel
from bench.models import create_model
from bench.spec import parse_sweep
from bench.train import run_trial

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_autocast_dtype_rules(monkeypatch):
    assert accel.autocast_dtype(CPU, "auto") is None  # a CPU trains in fp32 unless asked
    assert accel.autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert accel.autocast_dtype(CPU, "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.autocast_dtype(CUDA, "auto") is torch.bfloat16
    assert accel.autocast_dtype(CUDA, "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert accel.autocast_dtype(CUDA, "auto") is None


def test_channels_last_only_for_convnets_on_a_gpu():
    for family in ("resnet", "preact_resnet", "alternet"):
        assert accel.memory_format(family, CUDA) == torch.channels_last
        assert accel.memory_format(family, CPU) == torch.contiguous_format
    for family in ("vit", "vit_pos", "swin", "theory"):
        assert accel.memory_format(family, CUDA) == torch.contiguous_format
    x = torch.randn(2, 3, 8, 8)
    assert accel.to_memory_format(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    patches = torch.randn(2, 10, 10)  # pa_theory's (B, D, d) inputs are left alone
    assert accel.to_memory_format(patches, torch.channels_last) is patches


def test_a_channels_last_convnet_computes_the_same_function():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, img_size=16, in_chans=3, width=8).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        nhwc = model.to(memory_format=torch.channels_last)(accel.to_memory_format(x, torch.channels_last))
    torch.testing.assert_close(nhwc, plain, atol=1e-5, rtol=1e-4)


def test_configure_device_leaves_a_cpu_alone():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    accel.configure_device(CPU)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def _config(**train):
    return parse_sweep({"name": "accel", "model": "vit_ti", "model_args": {"dim": 32, "depth": 1, "heads": 2, "patch_size": 4},
                        "dataset": {"name": "spatial", "num_train": 256, "num_test": 128}, "train_size": 256,
                        "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3, **train}}).trials[0]


def test_bf16_autocast_trains_on_a_cpu_and_is_recorded():
    """The autocast path the GPU takes, run for real on the CPU's bf16 kernels."""
    fp32 = run_trial(_config(), device="cpu")
    bf16 = run_trial(_config(precision="bf16"), device="cpu")
    assert fp32["recorded"]["precision"] == "fp32" and bf16["recorded"]["precision"] == "bfloat16"
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in bf16["history"])
    assert bf16["history"][-1]["train_loss"] == pytest.approx(fp32["history"][-1]["train_loss"], rel=0.05)
    assert bf16["train_loss"] != fp32["train_loss"]  # it did run in another precision
    assert fp32["compile_s"] is None


def test_precision_is_part_of_the_trial_id_only_when_set():
    assert _config()["trial_id"] == _config(precision="auto")["trial_id"]
    assert _config(precision="bf16")["trial_id"] != _config()["trial_id"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_times_its_compile_apart():
    """`train.compile: true` through inductor on the CPU (about 20 s of compile for a one-block
    ViT here): the same losses as eager, epoch by epoch, and the compile in `compile_s`, not
    in the throughput."""
    document = {
        "name": "compiled", "model": "vit_ti", "model_args": {"dim": 32, "depth": 1, "heads": 2},
        "dataset": {"name": "spatial", "num_train": 256, "num_test": 128},
        "train": {"epochs": 2, "batch_size": 64, "compile": True}, "train_size": 256, "grid": {"seed": [0]},
    }
    compiled = run_trial(parse_sweep(document).trials[0], device="cpu")
    document["train"]["compile"] = False
    eager = run_trial(parse_sweep(document).trials[0], device="cpu")

    assert eager["compile_s"] is None
    assert compiled["compile_s"] > 0
    assert compiled["wall_s"] > compiled["compile_s"]
    for c, e in zip(compiled["history"], eager["history"], strict=True):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)
        assert c["test_loss"] == pytest.approx(e["test_loss"], rel=1e-3)
    assert compiled["test_acc"] == pytest.approx(eager["test_acc"], abs=0.02)
