"""Print the Markdown tables of docs/SPATIAL.md from the result store (rerun after the sweeps).

    python docs/scripts/spatial_summary.py [--results results]

Reads the three spatial-structure sweeps (jelassi2022-synthetic, jelassi2022-synthetic-vit,
jelassi2022-transfer) with bench.query.load and summarises them next to their baselines.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd
import torch

from bench.analysis.attention import patch_association
from bench.data import load_splits

from bench.query import load as load_store, ok_trials
from bench.spec import load_sweep

SWEEP_FILES = {"jelassi2022-synthetic": "sweeps/jelassi2022_synthetic.yaml",
               "jelassi2022-synthetic-vit": "sweeps/jelassi2022_synthetic_vit.yaml",
               "jelassi2022-transfer": "sweeps/jelassi2022_transfer.yaml"}


def load(sweep: str, results: str) -> dict[str, pd.DataFrame]:
    """The sweep's tables, narrowed to the trials its sweep file defines now (a store may also
    hold trials of earlier versions of the file)."""
    ids = {t["trial_id"] for t in load_sweep(SWEEP_FILES[sweep]).trials}
    return {name: frame[frame["trial_id"].isin(ids)] for name, frame in load_store(sweep, results).items()}


def _pm(values: pd.Series, scale: float = 100.0, digits: int = 1) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    text = f"{values.mean() * scale:.{digits}f}"
    return text + (f" ± {values.std() * scale:.{digits}f}" if len(values) > 1 else "")


def _final_analysis(analysis: pd.DataFrame, trial_id: str, layer: str | None, metric: str,
                    partition: list[list[int]] | None = None) -> float | None:
    """The last stored value; exact/soft/gap are recomputed from the stored final map when there is one
    (so they follow the current definition: ties never count as association)."""
    if partition is not None and metric in ("exact", "soft", "gap"):
        cells = analysis[(analysis.trial_id == trial_id) & (analysis.metric == "map") & (analysis.layer == layer)]
        if len(cells):
            values = torch.tensor(cells.sort_values("index").value.to_numpy())
            d = int(round(len(values) ** 0.5))
            return patch_association(values.reshape(d, d), partition)[metric]
    rows = analysis[(analysis.trial_id == trial_id) & (analysis.metric == metric)]
    rows = rows[rows.layer.isna()] if layer is None else rows[rows.layer == layer]
    if rows.empty:
        return None
    return float(rows.sort_values("epoch").value.iloc[-1])


def _peak(analysis: pd.DataFrame, trial_id: str, layer: str, metric: str) -> tuple[float, float] | None:
    """(highest value over training, the first epoch it was reached)."""
    rows = analysis[(analysis.trial_id == trial_id) & (analysis.metric == metric) & (analysis.layer == layer)]
    if rows.empty:
        return None
    best = rows.value.max()
    return float(best), float(rows[rows.value == best].epoch.min())


def _steps_to_beat(epochs: pd.DataFrame, trial_id: str, threshold: float) -> float | None:
    rows = epochs[(epochs.trial_id == trial_id) & (epochs.test_acc > threshold)].sort_values("epoch")
    return float(rows.epoch.iloc[0]) if len(rows) else None


def synthetic(results: str) -> str:
    tables = load("jelassi2022-synthetic", results)
    trials, epochs, analysis = ok_trials(tables["trials"]), tables["epochs"], tables["analysis"]
    lines = ["| data | D | lr | logit_scale | variant | test acc (%) | counting | Bayes | exact PA | peak exact PA (step) | soft PA | gap | cos(v,w*) | steps to counting+1pt | acc at step 100 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cfg = trials.config.map(json.loads)
    trials = trials.assign(
        D=cfg.map(lambda c: c["dataset"]["num_patches"]), lr=cfg.map(lambda c: c["train"]["lr"]),
        scale=cfg.map(lambda c: c["model_args"].get("logit_scale", 32.0)),
        variant=cfg.map(lambda c: "A frozen" if c["model_args"].get("learn_attention") is False
                        else ("linear" if c["model_args"].get("activation") == "linear" else "cubic")),
    )
    for key, group in trials.groupby(["dataset", "D", "lr", "scale", "variant"], sort=True):
        data, d_count, lr, scale, variant = key
        counting = group.baseline_counting.mean()
        partitions = {t: load_splits(c["dataset"], "patches").meta["partition"]
                      for t, c in zip(group.trial_id, group.config.map(json.loads))}
        per_trial = {m: pd.Series([_final_analysis(analysis, t, "A", m, partitions[t]) for t in group.trial_id], dtype=float)
                     for m in ("exact", "soft", "gap")}
        cos = pd.Series([_final_analysis(analysis, t, None, "cos_v_w") for t in group.trial_id], dtype=float)
        steps = pd.Series([_steps_to_beat(epochs, t, counting + 0.01) if pd.notna(counting) else None
                           for t in group.trial_id], dtype=float)
        peaks = [_peak(analysis, t, "A", "exact") for t in group.trial_id]
        peaks = [p for p in peaks if p is not None]
        peak_text = (f"{pd.Series([p[0] for p in peaks]).mean():.2f} ({pd.Series([p[1] for p in peaks]).median():.0f})"
                     if peaks else "-")
        at100 = epochs[epochs.trial_id.isin(group.trial_id) & (epochs.epoch == 100)].test_acc
        beat = f"{steps.median():.0f} ({steps.notna().sum()}/{len(steps)})" if steps.notna().any() else "never"
        lines.append(
            f"| {data} | {d_count} | {lr:g} | {scale:g} | {variant} | {_pm(group.test_acc)} (n={len(group)}) | "
            f"{'-' if pd.isna(counting) else f'{counting * 100:.1f}'} | "
            f"{'-' if pd.isna(group.baseline_bayes.mean()) else f'{group.baseline_bayes.mean() * 100:.1f}'} | "
            f"{_pm(per_trial['exact'], 1, 2)} | {peak_text} | {_pm(per_trial['soft'], 1, 2)} | {_pm(per_trial['gap'], 1, 2)} | "
            f"{_pm(cos, 1, 3)} | {beat if data == 'spatial' else '-'} | {_pm(at100)} |")
    return "\n".join(lines)


def vit(results: str) -> str:
    tables = load("jelassi2022-synthetic-vit", results)
    trials, analysis = ok_trials(tables["trials"]), tables["analysis"]
    lines = ["| model | partition | test acc (%) | counting | Bayes | best head exact PA (layer.head) | mean soft PA over heads | pos-embed exact / soft |",
             "|---|---|---|---|---|---|---|---|"]
    cfg = trials.config.map(json.loads)
    trials = trials.assign(partition=cfg.map(lambda c: c["dataset"]["partition"]))
    for _, row in trials.sort_values(["model", "partition"]).iterrows():
        rows = analysis[(analysis.trial_id == row.trial_id)]
        last = rows[rows.epoch == rows.epoch.max()]
        heads = last[last["index"].notna() & last.layer.notna() & (last.layer != "pos_embed")]
        exact = heads[heads.metric == "exact"]
        soft = heads[heads.metric == "soft"]
        best = exact.sort_values("value").iloc[-1] if len(exact) else None
        best_text = "-" if best is None else f"{best.value:.2f} ({best.layer}.{int(best['index'])})"
        pos = last[(last.layer == "pos_embed")]
        pos_text = "-"
        if len(pos):
            pos_text = f"{pos[pos.metric == 'exact'].value.iloc[0]:.2f} / {pos[pos.metric == 'soft'].value.iloc[0]:.2f}"
        lines.append(
            f"| {row.model} | {row.partition} | {row.test_acc * 100:.1f} | {row.baseline_counting * 100:.1f} | "
            f"{row.baseline_bayes * 100:.1f} | "
            f"{best_text} | "
            f"{'-' if soft.empty else f'{soft.value.mean():.2f}'} | {pos_text} |")
    return "\n".join(lines)


def transfer(results: str) -> str:
    tables = load("jelassi2022-transfer", results)
    trials = ok_trials(tables["trials"])
    out = []
    for stage in ("pretrain", "downstream", "other_partition"):
        part = trials[trials.stage == stage]
        if part.empty:
            continue
        if stage == "pretrain":
            out.append(f"pretrain: test acc {_pm(part.test_acc)} % over {len(part)} seeds "
                       f"(counting {part.baseline_counting.mean() * 100:.1f}, Bayes {part.baseline_bayes.mean() * 100:.1f})")
            continue
        sizes = sorted(part.n_train.unique())
        lines = [f"stage `{stage}` (counting {part.baseline_counting.mean() * 100:.1f}, "
                 f"Bayes {part.baseline_bayes.mean() * 100:.1f}): test acc (%), mean ± std over seeds (n)", "",
                 "| transfer \\ n_train | " + " | ".join(str(s) for s in sizes) + " |",
                 "|---|" + "---|" * len(sizes)]
        for mode, group in part.groupby("transfer"):
            cells = [f"{_pm(group[group.n_train == s].test_acc)} ({(group.n_train == s).sum()})" for s in sizes]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="results")
    parser.add_argument("--only", choices=("synthetic", "vit", "transfer"))
    args = parser.parse_args()
    for name, fn in (("synthetic", synthetic), ("vit", vit), ("transfer", transfer)):
        if args.only in (None, name):
            try:
                print(f"### {name}\n\n{fn(args.results)}\n")
            except Exception as exc:  # a sweep not run yet
                print(f"### {name}\n\n(not available: {exc})\n")


if __name__ == "__main__":
    main()
