"""The learning-curve figure: each model's error per trial and its seed spread against the
training-set size (log axis), the fitted a·n^(−b) + c curves, and each placed crossover with
its bootstrap interval as a band. matplotlib (Agg, no pyplot) is imported only when drawing.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np

from bench.results.curves import LearningCurves, power_law


def plot_learning_curves(curves: LearningCurves, title: str | None = None) -> Any:
    """A matplotlib Figure of `curves` (see the module docstring); the method is named under it."""
    from bench.analysis.figures import model_colors, new_figure

    fig, (ax,) = new_figure(1, 1, width=7.6, height=5.0)
    models = curves.models
    colors = model_colors([str(m) for m in models["model"]])
    placed = curves.pairs[curves.pairs["where"] != "none"]
    low, high = _x_limits(curves, placed)
    for row in models.itertuples(index=False):
        color = colors[str(row.model)]
        points = curves.points[curves.points["model"] == row.model]
        ax.scatter(points["n"], points["error"], s=9, color=color, alpha=0.35, linewidths=0)
        spread = points.groupby("n")["error"].agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(spread["n"], spread["mean"], yerr=spread["std"].fillna(0.0), fmt="o", markersize=4, capsize=3,
                    color=color, label=f"{row.model}: b={_fmt(row.b)} [{_fmt(row.b_lo)}, {_fmt(row.b_hi)}], "
                                       f"c={_fmt(row.c)} [{_fmt(row.c_lo)}, {_fmt(row.c_hi)}]")
        inside = np.geomspace(row.n_min, row.n_max, 200)
        ax.plot(inside, power_law(inside, row.a, row.b, row.c), color=color, linewidth=1.6)
        for start, stop in ((low, row.n_min), (row.n_max, high)):
            if stop > start:
                outside = np.geomspace(start, stop, 100)
                ax.plot(outside, power_law(outside, row.a, row.b, row.c), color=color, linewidth=1.0, linestyle="--")
    for pair in placed.itertuples(index=False):
        ax.axvspan(pair.crossover_lo, pair.crossover_hi, color="0.5", alpha=0.15, linewidth=0)
        ax.axvline(pair.crossover_n, color="0.25", linestyle=":", linewidth=1.2)
        ax.annotate(f"{pair.model_a} = {pair.model_b}\nn≈{pair.crossover_n:,.0f} "
                    f"[{pair.crossover_lo:,.0f}, {pair.crossover_hi:,.0f}]\n({pair.where})",
                    (pair.crossover_n, 0.98), xycoords=("data", "axes fraction"), xytext=(4, 0),
                    textcoords="offset points", va="top", fontsize=7, color="0.2")
    unplaced = curves.pairs[curves.pairs["where"] == "none"]
    if len(unplaced):
        text = "no crossing placed: " + "; ".join(f"{p.model_a} vs {p.model_b}" for p in unplaced.itertuples())
        ax.annotate(text, (0.01, 0.01), xycoords="axes fraction", fontsize=7, color="0.35", va="bottom")
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.set_xlabel("training images (n)")
    ax.set_ylabel(f"error ({curves.error_label})")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or f"Learning curves: {curves.error_label} = a·n^(−b) + c")
    ax.legend(fontsize=7, loc="upper right")
    fig.supxlabel("\n".join(textwrap.wrap(curves.label, 130)), fontsize=6.5, color="0.35")
    return fig


def _x_limits(curves: LearningCurves, placed: Any) -> tuple[float, float]:
    """The measured sizes with some margin, widened to show placed crossovers and their bands."""
    low, high = float(curves.models["n_min"].min()) / 1.5, float(curves.models["n_max"].max()) * 1.5
    for column in ("crossover_n", "crossover_lo", "crossover_hi"):
        values = placed[column].to_numpy(float)
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            low, high = min(low, values.min() / 1.2), max(high, values.max() * 1.2)
    return low, high


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"
