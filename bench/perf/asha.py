"""The `asha` suite: what early stopping saves in a search, and what it costs in the result.

Why: a tuned comparison runs `num_samples` trials per cell; ASHA stops the unpromising
ones at rungs (grace_period x reduction_factor^k epochs). The suite runs the same
16 random samples of one cell twice through the real orchestrator (Ray Tune, Parquet):
with ASHA, and to the full budget. It records the epochs trained and the wall time of
each search, side by side, the share of trials stopped early, and both best validation
accuracies (the target: ASHA's within 1 point of the full search's).

Data: the synthetic spatial dataset (always available), a narrow ViT; learning rate and
weight decay searched. Wall times depend on the machine's load; the epoch counts do not.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.perf.registry import register_suite

SPACE = {"train.lr": {"loguniform": [1.0e-4, 3.0e-1]}, "train.weight_decay": {"choice": [0.0, 0.05]}}
#: Rungs at epochs 2 and 4 of 8: a grace period of 1 judged learning rates after one epoch,
#: before the slow-starting good ones separate (measured: 2.0 points lost).
GRACE_PERIOD, REDUCTION_FACTOR = 2, 2
#: 512 validation images: one image is 0.2 points, so "within 1 point" is five images, not
#: one (10% of 1,024 made a single image worth a point).
VAL_SIZE = 512


def _sweep(name: str, samples: int, epochs: int, asha: bool) -> dict[str, Any]:
    tune: dict[str, Any] = {"space": SPACE, "num_samples": samples, "per": [], "algorithm": "random", "val_size": VAL_SIZE}
    if asha:
        tune["scheduler"] = {"name": "asha", "grace_period": GRACE_PERIOD, "reduction_factor": REDUCTION_FACTOR}
    return {
        "name": name, "model": "vit_ti", "model_args": {"dim": 32, "depth": 2, "heads": 2},
        "dataset": {"name": "spatial", "num_train": 2048, "num_test": 256},
        "train": {"epochs": epochs, "batch_size": 64, "warmup_epochs": 0},
        "train_size": 512, "resources": {"cpus_per_trial": 1, "max_failures": 0, "report_every_s": 0},
        "grid": {"seed": [0]}, "tune": tune,
    }


@register_suite("asha", "a 16-sample search with ASHA vs to the full budget: epochs, wall time, best val_acc")
def run(quick: bool) -> dict[str, Any]:
    import io

    from bench.spec import parse_sweep
    from bench.store import ResultStore
    from bench.sweep import run_sweep

    samples, epochs = (4, 4) if quick else (16, 8)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as results:
        for label, asha in (("asha", True), ("full", False)):
            sweep = parse_sweep(_sweep(f"perf-{label}", samples, epochs, asha))
            started = time.perf_counter()
            run_sweep(sweep, results, out=io.StringIO())
            wall = time.perf_counter() - started
            trials = ResultStore(results, sweep.name).read_trials()
            search = trials[trials["phase"] == "search"]
            figures[label] = {"wall_s": wall, "epochs": float(search["epochs"].sum()),
                              "best_val_acc": float(search["val_acc"].max()),
                              "stopped": float((search["epochs"] < epochs).sum()), "trials": float(len(search))}
    a, f = figures["asha"], figures["full"]
    rows = [{"name": f"{label} {key}", "unit": unit, "median": value[key], "repeats": [value[key]]}
            for label, value in figures.items()
            for key, unit in (("wall_s", "s"), ("epochs", "epochs"), ("best_val_acc", "acc"), ("stopped", "trials"))]
    return {
        "rows": rows,
        "ratios": {"epochs saved (full / asha)": f["epochs"] / max(1.0, a["epochs"]),
                   "wall time (full / asha)": f["wall_s"] / max(1e-9, a["wall_s"])},
        "settings": {"samples": samples, "epochs": epochs, "space": SPACE, "grace_period": GRACE_PERIOD,
                     "reduction_factor": REDUCTION_FACTOR, "val_size": VAL_SIZE,
                     "best_val_acc_gap_points": 100 * (f["best_val_acc"] - a["best_val_acc"])},
    }
