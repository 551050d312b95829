"""Read the D = 10 (Fig. 4) and transfer sweeps of Jelassi et al. from a result store: tables and figures.

    python docs/scripts/jelassi_d10.py [--results /work/results-i20] [--figures docs/figures/spatial]

Prints the Markdown tables of docs/SPATIAL.md (sweeps/jelassi2022_synthetic_d10.yaml and
sweeps/jelassi2022_transfer.yaml) and writes two figures:
- `d10_curves.png`: test error, exact/soft patch association (Def. 2.2) and |cos(v, w*)| against
  the GD step, per q (columns), tied (symmetric) and untied A, every seed, with the exact
  counting and Bayes errors, the counting rule with ties broken by the sets (Monte Carlo) and
  the paper's read-off 7% / 3%;
- `transfer_curve.png`: downstream test accuracy against n per mode, median and interquartile
  range over seeds, with chance, counting and Bayes.

Definitions used in the tables (the curves are the stored ones, nothing is smoothed):
- plateau: the test error at the first analysis step where |cos(v, w*)| >= 0.99 (v has aligned:
  the end of the theory's first phase), and for how many steps after it the error stays
  within 1 point of the counting rule's;
- final: the test error at the last step; exact/soft: Def. 2.2 at the last step, and the lowest
  exact value after it first reached 1.0 (1.0 = it never decayed);
- catch-up n: the smallest n from which on scratch's median stays within 1 point of
  freeze_attention's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.data import load_splits  # noqa: E402
from bench.query import load as load_store, ok_trials  # noqa: E402
from bench.spec import load_sweep  # noqa: E402

D10_SWEEP, D10_FILE = "jelassi2022-synthetic-d10", "sweeps/jelassi2022_synthetic_d10.yaml"
TRANSFER_SWEEP, TRANSFER_FILE = "jelassi2022-transfer", "sweeps/jelassi2022_transfer.yaml"
PAPER_PLATEAU, PAPER_FINAL = 7.0, 3.0  # % error, read off the paper's Fig. 4 (PAPERS.md A)
MODES = {"scratch": ("scratch", "tab:gray"), "finetune": ("finetune", "tab:blue"),
         "freeze_attention": ("freeze_attention", "tab:green"),
         "control": ("control: freeze_attention, A from another partition", "tab:red")}


def load(sweep: str, sweep_file: str, results: str) -> dict[str, pd.DataFrame]:
    """The sweep's tables, narrowed to the trials its sweep file defines now."""
    ids = {t["trial_id"] for t in load_sweep(sweep_file).trials}
    return {name: frame[frame["trial_id"].isin(ids)] for name, frame in load_store(sweep, results).items()}


def tie_broken_counting_error(q: float, num_patches: int = 10, set_size: int = 2, n: int = 2_000_000,
                              seed: int = 0) -> float:
    """Error (%) of the counting rule with its ties broken by the sets (sign of count, then of
    #all-+1 sets - #all--1 sets; coin flips left), by Monte Carlo on `n` samples of the
    coefficient pattern (std error about 0.02 points at these rates). The level of the
    intermediate plateau: attention that is mostly on the patch itself, a little on its set-mate."""
    rng = np.random.default_rng(seed)
    sets = num_patches // set_size
    y = rng.choice([-1, 1], n)
    u = rng.random((n, sets, set_size))
    c = np.where(u < q / 2, 1, np.where(u < q, -1, 0))
    c[np.arange(n), rng.integers(0, sets, n)] = y[:, None]
    count = c.sum(axis=(1, 2))
    full = (c.sum(axis=2) == set_size).sum(axis=1) - (c.sum(axis=2) == -set_size).sum(axis=1)
    score = np.sign(count) * 100 + np.sign(full)  # count first; the sets only where it ties
    decided = np.sign(score)
    ties = decided == 0
    decided[ties] = rng.choice([-1, 1], ties.sum())
    return float(100 * np.mean(decided != y))


# ----------------------------------------------------------------------------- D = 10


def d10_frames(results: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials with q and variant, epochs, analysis) of the D = 10 sweep."""
    tables = load(D10_SWEEP, D10_FILE, results)
    trials = ok_trials(tables["trials"])
    cfg = trials.config.map(json.loads)
    trials = trials.assign(
        q=cfg.map(lambda c: c["dataset"]["q"]),
        variant=cfg.map(lambda c: "A frozen" if c["model_args"].get("learn_attention") is False
                        else ("tied A" if c["model_args"].get("symmetric_attention") else "untied A")))
    return trials, tables["epochs"], tables["analysis"]


def _series(analysis: pd.DataFrame, trial_id: str, metric: str) -> pd.Series:
    rows = analysis[(analysis.trial_id == trial_id) & (analysis.metric == metric)]
    return rows.set_index("epoch").value.sort_index()


def d10_trial_summary(trial: pd.Series, epochs: pd.DataFrame, analysis: pd.DataFrame) -> dict[str, float]:
    """Plateau, final error, association and cos of one trial (see the module doc)."""
    err = (100 * (1 - epochs[epochs.trial_id == trial.trial_id].set_index("epoch").test_acc)).sort_index()
    counting_err = 100 * (1 - trial.baseline_counting)
    cos = _series(analysis, trial.trial_id, "cos_v_w")
    exact = _series(analysis, trial.trial_id, "exact")
    aligned = cos[cos >= 0.99]
    out = {"final": float(err.iloc[-1]), "cos": float(cos.iloc[-1]) if len(cos) else np.nan,
           "exact": float(exact.iloc[-1]), "soft": float(_series(analysis, trial.trial_id, "soft").iloc[-1]),
           "exact_offdiag": float(_series(analysis, trial.trial_id, "exact_offdiag").iloc[-1]),
           "plateau": np.nan, "plateau_steps": 0.0, "aligned_at": np.nan, "exact_min_after_full": np.nan,
           "first_full": np.nan}
    if len(aligned):
        step = int(aligned.index[0])
        out["aligned_at"] = step
        out["plateau"] = float(err.loc[max(step, int(err.index[0]))])
        after = err.loc[step:]
        outside = after[(after - counting_err).abs() > 1.0]
        out["plateau_steps"] = float((outside.index[0] if len(outside) else after.index[-1]) - step)
    full = exact[exact == 1.0]
    if len(full):
        out["first_full"] = float(full.index[0])
        out["exact_min_after_full"] = float(exact.loc[full.index[0]:].min())
    return out


def _cell(values: pd.Series, digits: int = 1) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.median():.{digits}f} [{values.min():.{digits}f}, {values.max():.{digits}f}]"


def d10_table(results: str) -> str:
    trials, epochs, analysis = d10_frames(results)
    lines = ["| q | A | seeds | counting err | Bayes err | tie-broken counting err (MC) | plateau err (at step) | "
             "steps within 1 pt of counting | final err | exact (Def. 2.2) end | lowest exact after reaching 1.0 | "
             "soft end | exact off-diag end | cos(v,w*) end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (q, variant), group in trials.groupby(["q", "variant"], sort=True):
        rows = pd.DataFrame([d10_trial_summary(t, epochs, analysis) for _, t in group.iterrows()])
        lines.append(
            f"| {q:g} | {variant} | {len(group)} | {100 * (1 - group.baseline_counting.mean()):.2f} | "
            f"{100 * (1 - group.baseline_bayes.mean()):.2f} | {tie_broken_counting_error(q):.2f} | "
            f"{_cell(rows.plateau, 2)} ({_cell(rows.aligned_at, 0)}) | {_cell(rows.plateau_steps, 0)} | "
            f"{_cell(rows.final, 2)} | {_cell(rows.exact, 2)} | {_cell(rows.exact_min_after_full, 2)} | "
            f"{_cell(rows.soft, 2)} | {_cell(rows.exact_offdiag, 2)} | {_cell(rows.cos, 4)} |")
    return ("\n".join(lines) + "\n\nCells: median [min, max] over seeds; errors in %.\n\n"
            + decay_table(results))


def _final_map(analysis: pd.DataFrame, trial_id: str) -> np.ndarray:
    cells = analysis[(analysis.trial_id == trial_id) & (analysis.metric == "map")].sort_values("index")
    d = int(round(len(cells) ** 0.5))
    return cells.value.to_numpy().reshape(d, d)


def decay_table(results: str) -> str:
    """Where association went, per untied trial: the rows that fail Def. 2.2 at the end, their
    attention weights (softmax(A / sqrt(d)) of the stored final A) on themselves, their set-mate
    and the patches outside their set, the pair's two logits A_ij / A_ji; and the test loss of
    tied and untied A at a few steps (same seed and q)."""
    trials, epochs, analysis = d10_frames(results)
    lines = ["| q | seed | rows failing Def. 2.2 | failing row: weight on itself / set-mate / each other patch (mean) | "
             "failing row's logit to its mate (mean) vs the mate's logit back | test loss tied / untied at steps 1,000; 3,000; 10,000 |",
             "|---|---|---|---|---|---|"]
    for _, trial in trials[trials.variant == "untied A"].sort_values(["q", "seed"]).iterrows():
        partition = load_splits(json.loads(trial.config)["dataset"], "patches").meta["partition"]
        logits = _final_map(analysis, trial.trial_id)
        d = len(logits)
        weights = np.exp(logits / np.sqrt(d) - (logits / np.sqrt(d)).max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        mate = {i: [j for j in s if j != i][0] for s in partition for i in s}
        failing = [i for i in range(d) if min(logits[i, i], logits[i, mate[i]])
                   <= max(logits[i, k] for k in range(d) if k not in (i, mate[i]))]
        if failing:
            own = np.mean([weights[i, i] for i in failing])
            to_mate = np.mean([weights[i, mate[i]] for i in failing])
            other = np.mean([weights[i, k] for i in failing for k in range(d) if k not in (i, mate[i])])
            logit_out = np.mean([logits[i, mate[i]] for i in failing])
            logit_back = np.mean([logits[mate[i], i] for i in failing])
            anatomy = f"{own:.2f} / {to_mate:.2f} / {other:.2f}"
            pair = f"{logit_out:.2f} vs {logit_back:.2f} (diagonal {logits[0, 0]:.2f})"
        else:
            anatomy = pair = "-"
        tied = trials[(trials.variant == "tied A") & (trials.q == trial.q) & (trials.seed == trial.seed)]
        losses = []
        for step in (1000, 3000, 10000):
            pair_loss = []
            for tid in (tied.trial_id.iloc[0] if len(tied) else None, trial.trial_id):
                row = epochs[(epochs.trial_id == tid) & (epochs.epoch == step)]
                pair_loss.append(f"{row.test_loss.iloc[0]:.4f}" if len(row) else "-")
            losses.append(" / ".join(pair_loss))
        lines.append(f"| {trial.q:g} | {trial.seed} | {len(failing)} of {d} ({', '.join(map(str, failing)) or '-'}) | "
                     f"{anatomy} | {pair} | {'; '.join(losses)} |")
    return "\n".join(lines)


def d10_figure(results: str, path: Path) -> None:
    trials, epochs, analysis = d10_frames(results)
    qs = sorted(trials.q.unique())
    colors = {"tied A": "tab:blue", "untied A": "tab:orange", "A frozen": "tab:gray"}
    fig, axes = plt.subplots(3, len(qs), figsize=(6.2 * len(qs), 10.5), sharex=True, squeeze=False)
    for col, q in enumerate(qs):
        part = trials[trials.q == q]
        counting_err, bayes_err = 100 * (1 - part.baseline_counting.mean()), 100 * (1 - part.baseline_bayes.mean())
        ax_err, ax_pa, ax_cos = axes[0, col], axes[1, col], axes[2, col]
        for _, trial in part.sort_values(["variant", "seed"]).iterrows():
            color = colors[trial.variant]
            label = trial.variant if trial.seed == part[part.variant == trial.variant].seed.min() else None
            e = epochs[epochs.trial_id == trial.trial_id].sort_values("epoch")
            ax_err.plot(e.epoch, 100 * (1 - e.test_acc), color=color, lw=1, alpha=0.8, label=label)
            if trial.variant == "A frozen":
                continue
            exact, soft = _series(analysis, trial.trial_id, "exact"), _series(analysis, trial.trial_id, "soft")
            ax_pa.plot(np.maximum(exact.index.to_numpy(), 1), exact.values, color=color, lw=1.2, alpha=0.8,
                       label=f"{trial.variant}: exact" if label else None)
            ax_pa.plot(np.maximum(soft.index.to_numpy(), 1), soft.values, color=color, lw=1, ls=":", alpha=0.8,
                       label=f"{trial.variant}: soft" if label else None)
            cos = _series(analysis, trial.trial_id, "cos_v_w")
            ax_cos.plot(np.maximum(cos.index.to_numpy(), 1), cos.values, color=color, lw=1, alpha=0.8, label=label)
        ax_err.axhline(counting_err, color="tab:red", ls="--", lw=1, label=f"counting rule {counting_err:.1f}%")
        ax_err.axhline(bayes_err, color="tab:green", ls="--", lw=1, label=f"Bayes rule {bayes_err:.1f}%")
        tie = tie_broken_counting_error(q)
        ax_err.axhline(tie, color="tab:purple", ls=":", lw=1, label=f"counting, ties broken by sets {tie:.1f}% (MC)")
        if abs(q - 0.22) < 1e-9:
            for level, text in ((PAPER_PLATEAU, "plateau"), (PAPER_FINAL, "end")):
                ax_err.axhline(level, color="black", ls=(0, (1, 3)), lw=1,
                               label="paper Fig. 4 (read off): 7% plateau, 3% end" if text == "plateau" else None)
        ax_err.set_ylim(0, max(counting_err * 1.6, 12))
        ax_err.set_title(f"q = {q:g}: counting {100 - counting_err:.1f}%, Bayes {100 - bayes_err:.1f}% accuracy")
        ax_err.set_ylabel("test error (%)")
        ax_pa.set_ylabel("patch association (Def. 2.2)")
        ax_pa.set_ylim(-0.05, 1.05)
        ax_cos.set_ylabel("|cos(v, w*)|")
        ax_cos.set_ylim(0.9, 1.001)
        ax_cos.axhline(0.99, color="black", ls=":", lw=1)
        ax_cos.set_xlabel("full-batch GD step")
        for ax in (ax_err, ax_pa, ax_cos):
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("pa_theory, D = d = 10, sets of 2, 16,384 samples, lr 0.01, logit_scale 16 (3 seeds per line colour)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- transfer


def transfer_frame(results: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(downstream and control trials with a `mode` column, pretraining trials)."""
    tables = load(TRANSFER_SWEEP, TRANSFER_FILE, results)
    trials = ok_trials(tables["trials"])
    down = trials[trials.stage.isin(["downstream", "control"])].copy()
    down["mode"] = np.where(down.stage == "control", "control", down.transfer)
    return down, trials[trials.stage.isin(["pretrain", "pretrain_other"])]


def transfer_stats(down: pd.DataFrame) -> pd.DataFrame:
    """Median and quartiles of test accuracy (%) per mode and n."""
    acc = down.assign(acc=100 * down.test_acc)
    return acc.groupby(["mode", "n_train"]).acc.agg(
        median="median", q1=lambda a: a.quantile(0.25), q3=lambda a: a.quantile(0.75), seeds="count").reset_index()


def catch_up_n(stats: pd.DataFrame, within: float = 1.0) -> float | None:
    """The smallest n from which on scratch's median stays within `within` points of freeze_attention's."""
    a = stats[stats["mode"] == "scratch"].set_index("n_train")["median"]
    b = stats[stats["mode"] == "freeze_attention"].set_index("n_train")["median"]
    sizes = sorted(set(a.index) & set(b.index))
    close = [a[n] >= b[n] - within for n in sizes]
    for i, n in enumerate(sizes):
        if all(close[i:]):
            return float(n)
    return None


def transfer_table(results: str) -> str:
    down, pre = transfer_frame(results)
    stats = transfer_stats(down)
    sizes = sorted(stats.n_train.unique())
    out = []
    for stage, part in pre.groupby("stage"):
        exact = []
        analysis = load(TRANSFER_SWEEP, TRANSFER_FILE, results)["analysis"]
        for t in part.trial_id:
            rows = analysis[(analysis.trial_id == t) & (analysis.metric == "exact")]
            exact.append(float(rows.sort_values("epoch").value.iloc[-1]) if len(rows) else np.nan)
        out.append(f"- `{stage}`: test acc {100 * part.test_acc.median():.2f}% median over {len(part)} seeds "
                   f"[{100 * part.test_acc.min():.2f}, {100 * part.test_acc.max():.2f}], exact association (Def. 2.2) "
                   f"{pd.Series(exact).min():.2f}..{pd.Series(exact).max():.2f}")
    base = down.iloc[0]
    out.append(f"\nDownstream data: chance 50.0, counting {100 * base.baseline_counting:.1f}, "
               f"Bayes {100 * base.baseline_bayes:.1f} (%). Test accuracy (%), median [q1, q3] over seeds (seeds):\n")
    lines = ["| n | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for n in sizes:
        cells = []
        for mode in MODES:
            row = stats[(stats["mode"] == mode) & (stats.n_train == n)]
            cells.append("-" if row.empty else
                         f"{row['median'].iloc[0]:.1f} [{row.q1.iloc[0]:.1f}, {row.q3.iloc[0]:.1f}] ({row.seeds.iloc[0]})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    n = catch_up_n(stats)
    out.append(f"\nCatch-up n (scratch's median within 1 point of freeze_attention's from there on): "
               f"{'not reached' if n is None else f'{n:.0f}'}")
    return "\n".join(out)


def transfer_figure(results: str, path: Path) -> None:
    down, _ = transfer_frame(results)
    stats = transfer_stats(down)
    base = down.iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, ylim in zip(axes, ((45, 100), (88, 98.5))):
        for mode, (label, color) in MODES.items():
            s = stats[stats["mode"] == mode].sort_values("n_train")
            if s.empty:
                continue
            ax.plot(s.n_train, s["median"], marker="o", ms=3, color=color, label=label)
            ax.fill_between(s.n_train, s.q1, s.q3, color=color, alpha=0.2)
        for level, text, color in ((50.0, "chance", "black"), (100 * base.baseline_counting, "counting rule", "tab:red"),
                                   (100 * base.baseline_bayes, "Bayes rule", "tab:green")):
            ax.axhline(level, color=color, ls="--", lw=1, label=f"{text} {level:.1f}%")
        ax.set_xscale("log", base=2)
        ax.set_ylim(*ylim)
        ax.set_xlabel("downstream training samples n")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].set_title("zoom on counting..Bayes")
    n = catch_up_n(stats)
    axes[0].set_title("median and interquartile range over seeds" +
                      (f"; scratch within 1 pt of freeze_attention from n = {n:.0f}" if n else ""))
    fig.suptitle("pa_theory transfer: same partition, new feature (D = 10, q = 0.22, 2,000 GD steps for every mode and n)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="results")
    parser.add_argument("--figures", default=None, help="folder to write the PNGs to (none: tables only)")
    parser.add_argument("--only", choices=("d10", "transfer"))
    args = parser.parse_args()
    for name, table, figure in (("d10", d10_table, d10_figure), ("transfer", transfer_table, transfer_figure)):
        if args.only not in (None, name):
            continue
        print(f"### {name}\n\n{table(args.results)}\n")
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            figure(args.results, Path(args.figures) / f"{'d10_curves' if name == 'd10' else 'transfer_curve'}.png")


if __name__ == "__main__":
    main()
