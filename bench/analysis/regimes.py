"""A data-regime sweep read against Park & Kim's claims: accuracy, NLL, training loss, ECE and
Hessian spectra per architecture against the number of training images, under each budget rule
(equal epochs, or `train.budget: {steps: N}`), with the spread over seeds (docs/ANALYSIS.md).

Seeds of different models share their training subsets (subsets are seeded by the trial's seed),
so the gap between two architectures is taken per seed and then averaged (a paired difference).

    python -m bench.analysis.regimes SWEEP [--results DIR] [--figures DIR]   # Markdown tables (+ PNGs)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Per-trial columns averaged over seeds in the summary.
TRIAL_METRICS = ("test_acc", "test_loss", "train_loss", "ece")


def budget_rule(config: dict[str, Any]) -> str:
    """'epochs' (equal epochs at every size) or 'steps N' (a steps budget)."""
    budget = config["train"].get("budget")
    return f"steps {budget['steps']}" if budget else "epochs"


def final_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The tested trials (final phase of a tuned sweep, or every trial) with rule, lr and steps columns."""
    from bench.query import ok_trials, select_phase

    ok = select_phase(ok_trials(trials)).copy()
    ok = ok[ok["status"] == "ok"]
    configs = ok["config"].map(json.loads)
    ok["rule"] = configs.map(budget_rule)
    ok["lr"] = configs.map(lambda c: c["train"]["lr"])
    ok["total_steps"] = configs.map(lambda c: (c.get("recorded") or {}).get("total_steps"))
    return ok


def hessian_points(analysis: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Eigenvalue rows of `trials` labelled `point`: 'warmup' (the first analysed epoch after 0) or 'end' (the last)."""
    eig = analysis[(analysis["analysis"] == "hessian") & (analysis["metric"] == "eigenvalue")]
    eig = eig.merge(trials[["trial_id", "model", "n_train", "rule", "seed"]], on="trial_id")
    if eig.empty:
        return eig.assign(point=pd.Series(dtype=str))
    first = eig.groupby("trial_id")["epoch"].transform("min")
    last = eig.groupby("trial_id")["epoch"].transform("max")
    eig = eig.assign(point=np.where(eig["epoch"] == last, "end", np.where(eig["epoch"] == first, "warmup", "other")))
    return eig[eig["point"] != "other"]


def spectrum(values: pd.Series) -> dict[str, float]:
    """NEP (share of negative eigenvalues), APE (mean of the positive ones) and the count."""
    v = values.to_numpy(float)
    positive = v[v > 0]
    return {"eigenvalues": len(v), "nep": float((v < 0).mean()) if len(v) else math.nan,
            "ape": float(positive.mean()) if len(positive) else math.nan}


def regime_summary(trials: pd.DataFrame, analysis: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, model, n_train): metric means and stds over seeds, the chosen lr, the
    steps trained, and the Hessian spectrum at the end of warmup and of training (all seeds pooled)."""
    ok = final_trials(trials)
    rows = []
    eig = hessian_points(analysis, ok) if not analysis.empty else pd.DataFrame()
    for (rule, model, n), group in ok.groupby(["rule", "model", "n_train"]):
        row: dict[str, Any] = {"rule": rule, "model": model, "n_train": int(n), "seeds": len(group),
                               "lr": float(group["lr"].iloc[0]), "steps": group["total_steps"].iloc[0]}
        for column in TRIAL_METRICS:
            if column in group:
                row[f"{column}_mean"] = float(group[column].mean())
                row[f"{column}_std"] = float(group[column].std(ddof=1)) if len(group) > 1 else 0.0
        for point in ("warmup", "end"):
            mine = eig[(eig["rule"] == rule) & (eig["model"] == model) & (eig["n_train"] == n)
                       & (eig["point"] == point)] if not eig.empty else eig
            if len(mine):
                stats = spectrum(mine["value"])
                per_seed = mine.groupby("seed")["value"].apply(lambda v: float((v < 0).mean()))
                row.update({f"{k}_{point}": v for k, v in stats.items()})
                row[f"nep_{point}_seed_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["rule", "model", "n_train"]).reset_index(drop=True)


def paired_gaps(trials: pd.DataFrame, model: str, reference: str, column: str = "test_acc") -> pd.DataFrame:
    """`model` minus `reference` per (rule, n_train, seed), then mean and std over seeds."""
    ok = final_trials(trials)
    wide = ok[ok["model"].isin([model, reference])].pivot_table(index=["rule", "n_train", "seed"], columns="model",
                                                                  values=column)
    wide = wide.dropna()
    diff = (wide[model] - wide[reference]).rename("gap").reset_index()
    out = diff.groupby(["rule", "n_train"])["gap"].agg(["mean", "std", "count"]).reset_index()
    return out.assign(model=model, reference=reference, metric=column)


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table: accuracy (%) and NLLs as mean ± std over seeds."""
    def pm(row: pd.Series, name: str, scale: float = 1.0, digits: int = 3) -> str:
        mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return ""
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"

    def num(value: Any, fmt: str) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    lines = ["| rule | model | n | lr | steps | test acc (%) | test NLL | train loss | ECE | NEP warmup | NEP end | APE end |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['rule']} | {r['model']} | {r['n_train']} | {num(r['lr'], '.2g')} | {num(r['steps'], '.0f')} | "
            f"{pm(r, 'test_acc', 100, 1)} | {pm(r, 'test_loss')} | {pm(r, 'train_loss')} | {pm(r, 'ece')} | "
            f"{num(r.get('nep_warmup'), '.2f')} | {num(r.get('nep_end'), '.2f')} | {num(r.get('ape_end'), '.3g')} |")
    return "\n".join(lines)


def gaps_markdown(gaps: pd.DataFrame, scale: float = 100.0, unit: str = " pt") -> str:
    lines = ["| rule | model − reference | " + " | ".join(str(n) for n in sorted(gaps["n_train"].unique())) + " |",
             "|---|---|" + "---:|" * gaps["n_train"].nunique()]
    for (rule, model, reference), group in gaps.groupby(["rule", "model", "reference"]):
        cells = {int(r["n_train"]): f"{scale * r['mean']:+.1f} ± {scale * r['std']:.1f}{unit}" for _, r in group.iterrows()}
        lines.append(f"| {rule} | {model} − {reference} | " +
                     " | ".join(cells.get(int(n), "") for n in sorted(gaps["n_train"].unique())) + " |")
    return "\n".join(lines)


def plot_regimes(summary: pd.DataFrame) -> Any:
    """Rows: budget rules; columns: test accuracy, test NLL, training loss against n (log axis),
    one line per model, shaded ±1 std over seeds."""
    from bench.analysis.figures import band, model_colors, new_figure

    rules = sorted(summary["rule"].unique(), key=lambda r: (r != "epochs", r))
    columns = (("test_acc", 100.0, "test accuracy (%)"), ("test_loss", 1.0, "test NLL"),
               ("train_loss", 1.0, "training loss (last epoch, smoothed CE)"))
    fig, axes = new_figure(len(rules), len(columns), width=13.0, height=3.6 * len(rules))
    colors = model_colors(sorted(summary["model"].unique()))
    for i, rule in enumerate(rules):
        for j, (name, scale, label) in enumerate(columns):
            ax = axes[i * len(columns) + j]
            for model, group in summary[summary["rule"] == rule].groupby("model"):
                group = group.sort_values("n_train")
                band(ax, group["n_train"].to_numpy(float), scale * group[f"{name}_mean"].to_numpy(),
                     scale * group[f"{name}_std"].to_numpy(), colors[model], model)
            ax.set_xscale("log")
            sizes = sorted(summary["n_train"].unique())
            ax.set_xticks(sizes, [str(int(s)) for s in sizes])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            ax.set_ylabel(label)
            ax.set_xlabel("training images")
            title = "equal epochs (15)" if rule == "epochs" else f"equal optimizer steps ({rule.split()[1]})"
            ax.set_title(f"{label.split(' (')[0]}: {title}", fontsize=10)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    return fig


def plot_hessian_regimes(summary: pd.DataFrame) -> Any:
    """NEP at the end of warmup and of training against n, per model, one panel per rule."""
    from bench.analysis.figures import model_colors, new_figure

    rules = sorted(summary["rule"].unique(), key=lambda r: (r != "epochs", r))
    fig, axes = new_figure(1, len(rules), width=5.5 * len(rules), height=3.8)
    colors = model_colors(sorted(summary["model"].unique()))
    for ax, rule in zip(axes, rules):
        for model, group in summary[summary["rule"] == rule].groupby("model"):
            group = group.sort_values("n_train")
            x = group["n_train"].to_numpy(float)
            for point, style in (("warmup", "--"), ("end", "-")):
                if f"nep_{point}" not in group:
                    continue
                y, s = group[f"nep_{point}"].to_numpy(float), group[f"nep_{point}_seed_std"].to_numpy(float)
                ax.errorbar(x, y, yerr=s, linestyle=style, marker="o" if point == "end" else "s", markersize=4,
                            capsize=3, color=colors[model], label=f"{model}, {'end of warmup' if point == 'warmup' else 'end'}")
        ax.set_xscale("log")
        sizes = sorted(summary["n_train"].unique())
        ax.set_xticks(sizes, [str(int(s)) for s in sizes])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.set_xlabel("training images")
        ax.set_ylabel("NEP (share of negative eigenvalues)")
        ax.set_title("equal epochs" if rule == "epochs" else f"equal steps ({rule.split()[1]})", fontsize=10)
    axes[-1].legend(fontsize=7, loc="upper right")
    return fig


def main(argv: list[str] | None = None) -> int:
    from bench.query import load

    parser = argparse.ArgumentParser(prog="python -m bench.analysis.regimes", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--results", default="results")
    parser.add_argument("--figures", default=None, help="write data_regime.png and data_regime_hessian.png here")
    parser.add_argument("--reference", default="resnet18", help="the CNN the gaps are taken against")
    args = parser.parse_args(argv)
    tables = load(args.sweep, args.results)
    summary = regime_summary(tables["trials"], tables["analysis"])
    print(to_markdown(summary))
    models = [m for m in sorted(summary["model"].unique()) if m != args.reference]
    for column, scale, unit in (("test_acc", 100.0, " pt"), ("test_loss", 1.0, "")):
        gaps = pd.concat([paired_gaps(tables["trials"], m, args.reference, column) for m in models], ignore_index=True)
        print(f"\n{column}: paired gap to {args.reference} (per seed, mean ± std over seeds)\n")
        print(gaps_markdown(gaps, scale, unit))
    if args.figures:
        out = Path(args.figures)
        out.mkdir(parents=True, exist_ok=True)
        plot_regimes(summary).savefig(out / "data_regime.png", dpi=110)
        plot_hessian_regimes(summary).savefig(out / "data_regime_hessian.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
