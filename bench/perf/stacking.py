"""The `stacking` suite: K seeds trained as one vmapped model vs K separate trials.

Why: small models leave a GPU mostly idle; stacking K seeds (bench.stacking) fills it with
one process and one set of kernel launches. The figure is the aggregate training
throughput (images per second summed over the K models) of the stack against K separate
trials run back to back on the same device, and the ratio; both sides train the same
configs for the same steps, timed alternately, by the worker's own clocks
(`train_samples_per_s`: training steps only, evaluation excluded).

Model: ViT-Ti with patch 4 at 32 px (width 192, 12 layers, 65 tokens), on 32-px synthetic
spatial images (an 8 x 8 grid of 4-px patches, 3 channels: CIFAR's shape). On a CPU the
quick run uses a narrower ViT so the suite finishes in minutes.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bench.perf.registry import register_suite
from bench.perf.timing import figure

K = 8


def configs(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    from bench.spec import parse_sweep

    on_gpu = device.type == "cuda"
    model_args = {"patch_size": 4} if not quick else {"patch_size": 4, "dim": 64, "depth": 2, "heads": 2}
    train_size = 4096 if on_gpu else (128 if quick else 256)
    return parse_sweep({
        "name": "perf-stacking", "model": "vit_ti", "model_args": model_args,
        "dataset": {"name": "spatial", "grid": 8, "patch_size": 4, "set_size": 4, "num_train": 2 * train_size,
                    "num_test": 256},
        "train_size": train_size, "train": {"epochs": 1, "batch_size": 128 if on_gpu else 64, "warmup_epochs": 0},
        "grid": {"seed": list(range(K))},
    }).trials


@register_suite("stacking", f"seed stacking: {K} seeds of vit_ti patch 4 as one vmapped model vs {K} separate trials")
def run(quick: bool) -> dict[str, Any]:
    from bench.stacking import run_stacked
    from bench.train import resolve_device, run_trial

    device = resolve_device("auto")
    trials = configs(quick, device)
    repeats = 1 if quick else 3
    run_trial({**trials[0], "train": {**trials[0]["train"]}}, device=str(device))  # warm-up: allocator, kernels
    separate, stacked = [], []
    for _ in range(repeats):  # alternately, so both sides see the same machine load
        results = [run_trial(c, device=str(device)) for c in trials]
        seconds = sum(r["n_train"] * r["epochs"] / r["train_samples_per_s"] for r in results)
        separate.append(sum(r["n_train"] * r["epochs"] for r in results) / seconds)
        stacked.append(run_stacked(trials, device=str(device))[0]["train_samples_per_s"])
    ratio = statistics.median(stacked) / statistics.median(separate)
    return {
        "rows": [figure(f"{K} separate trials, aggregate training img/s", separate),
                 figure(f"{K} seeds stacked (vmap), aggregate training img/s", stacked)],
        "ratios": {f"stacked / separate (K={K})": ratio},
        "settings": {"device": str(device), "k": K, "model": trials[0]["model"], "model_args": trials[0]["model_args"],
                     "train_size": trials[0]["train_size"], "batch_size": trials[0]["train"]["batch_size"],
                     "repeats": repeats, "target": ">= 3x on a GPU (vit_ti patch 4); the CPU figure is reported"},
    }
