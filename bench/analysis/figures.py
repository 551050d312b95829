"""Shared pieces of the analysis figures: Agg figures without pyplot's global state, one
colour per model, and the reductions every plot needs (last epoch, mean and spread over seeds).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def new_figure(rows: int = 1, cols: int = 1, width: float = 6.4, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """A Figure on the Agg canvas (no pyplot: safe in workers and threads) and its axes, flat."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, list(axes.ravel())


def model_colors(models: list[str]) -> dict[str, Any]:
    """The same colour for a model in every figure of a sweep (sorted names -> tab10)."""
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(models))}


def last_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    """Each trial's rows of its last analysed epoch (analyses may also run at checkpoints)."""
    if "epoch" not in frame.columns or frame.empty or frame["epoch"].isna().all():
        return frame
    last = frame.groupby("trial_id")["epoch"].transform("max")
    return frame[frame["epoch"] == last]


def metric(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["metric"] == name]


def mean_std(frame: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean and standard deviation (0 for a single trial) of `value` per group, e.g. over seeds."""
    out = frame.groupby(by, dropna=False)[value].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: Any, label: str, marker: str = "o") -> None:
    """A mean line with markers and a shaded +-1 std band."""
    ax.plot(x, mean, marker=marker, markersize=4, linewidth=1.6, color=color, label=label)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


def no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} rows", ha="center", va="center", transform=ax.transAxes, color="0.4")


def legend_outside(fig: Figure, ax: Axes) -> None:
    """The axes' legend to the right of the plot, where it cannot cover a curve or its band."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
