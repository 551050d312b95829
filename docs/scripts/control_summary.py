"""Print the Markdown table of docs/SPATIAL.md's control section from the result store.

    python docs/scripts/control_summary.py [--results results]

Reads the `jelassi2022-control` sweep (sweeps/jelassi2022_control.yaml): test accuracy per
model next to chance and the teacher's linear part, and the patch association (Def. 2.2 and
the off-diagonal reading) of every attention layer's maps and of the positional embeddings'
similarities, at initialisation and after training, next to its chance level.

The teacher's linear part: f(X) = sum_l (z_l)^3 with z_l the filter's pre-activation on set l
(bench/data/control.py); sign(sum_l z_l) is the best rule linear in the patches for this
teacher up to scale. Its accuracy is measured on 100,000 fresh samples of the same data
(the exact teacher, a new sample seed).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from bench.data import load_splits, resolve_dataset
from bench.data.control import make_teacher
from bench.data.registry import parse_options
from bench.query import load as load_store
from bench.spec import load_sweep

SWEEP, FILE = "jelassi2022-control", "sweeps/jelassi2022_control.yaml"


def linear_part_accuracy(dataset: dict, n: int = 100_000) -> float:
    """Accuracy of sign(sum_l z_l) against the teacher's label sign(sum_l z_l^3) on n fresh samples."""
    fresh = resolve_dataset({**dataset, "num_train": 2, "num_test": n, "sample_seed": 12345})
    options = parse_options(fresh)
    splits = load_splits(fresh, "patches")
    filters, signs = make_teacher(options.hidden, options.set_size, splits.test_x.shape[-1], options.teacher_seed)
    sets = torch.tensor(splits.meta["partition"])
    pre = torch.einsum("nlcd,kcd->nlk", splits.test_x[:, sets], filters)
    linear = pre.sum(dim=1) @ signs
    return float(((linear > 0).long() == splits.test_y).double().mean())


def _fmt(values: pd.Series, digits: int = 2, scale: float = 1.0) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    text = f"{values.mean() * scale:.{digits}f}"
    return text + (f" ± {values.std() * scale:.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    sweep = load_sweep(FILE)
    ids = {t["trial_id"] for t in sweep.trials}
    tables = load_store(SWEEP, args.results)
    trials = tables["trials"][tables["trials"].trial_id.isin(ids) & (tables["trials"].status == "ok")]
    epochs = tables["epochs"][tables["epochs"].trial_id.isin(ids)]
    last = epochs.sort_values("epoch").drop_duplicates("trial_id", keep="last").set_index("trial_id")
    trials = trials.assign(train_acc=trials.trial_id.map(last["train_acc"]))
    analysis = tables["analysis"][tables["analysis"].trial_id.isin(ids)]
    dataset = sweep.trials[0]["dataset"]
    d_count = dataset["grid"] ** 2
    c = dataset["set_size"]
    linear = linear_part_accuracy(dataset)
    print(f"chance 50.0 %, teacher's linear part {100 * linear:.1f} %, Bayes 100 % (the label is a function of X)")
    print(f"association chance: soft (Def. 2.2) about C/D = {c / d_count:.2f}, soft_offdiag (C-1)/(D-1) = "
          f"{(c - 1) / (d_count - 1):.2f}, exact about 0\n")
    print("| model | test acc (%) | train acc (%) | n | map | epoch | exact | exact_offdiag | soft | soft_offdiag | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pa = analysis[analysis.analysis == "patch_association"]
    for model, group in trials.groupby("model"):
        rows = pa[pa.trial_id.isin(group.trial_id)]
        first = True
        for kind, selected in (("attention (all layers, heads)", rows[rows.layer != "pos_embed"]),
                               ("pos. embeddings P^T P", rows[rows.layer == "pos_embed"])):
            for epoch in sorted(selected.epoch.dropna().unique()):
                at = selected[selected.epoch == epoch]
                # per trial: the mean over its layers and heads; then mean ± std over trials
                cells = {m: at[at.metric == m].groupby("trial_id").value.mean()
                         for m in ("exact", "exact_offdiag", "soft", "soft_offdiag", "gap")}
                acc = _fmt(group.test_acc, 1, 100) if first else ""
                train = _fmt(group.train_acc, 1, 100) if first else ""
                print(f"| {model if first else ''} | {acc} | {train} | {len(group) if first else ''} | {kind} | "
                      f"{int(epoch)} | " + " | ".join(_fmt(cells[m]) for m in cells) + " |")
                first = False
    best = pa[(pa.metric == "exact") & (pa.layer != "pos_embed")]
    if not best.empty:
        top = best.sort_values("value").iloc[-1]
        print(f"\nhighest exact association of any head, any trial, any epoch: {top.value:.2f} "
              f"(layer {top.layer}, head {int(top['index']) if pd.notna(top['index']) else '-'}, epoch {int(top.epoch)})")


if __name__ == "__main__":
    main()
