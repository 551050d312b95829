"""`bench results plot`: a sweep's figures from the result store, as PNG and SVG files.

One figure of accuracy and NLL against the training-set size per model (mean +- std over
seeds, from the trials table); transfer curves when trials have transfer modes; accuracy
against the block-shuffle grid when the sweep varies it; and one per analysis present in the analysis table, drawn
by the plot function the analysis registered (`bench.analysis.registry.register_plot`),
from its rows joined with the trials' model, dataset, train_size, n_train, seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.errors import BenchInputError

FORMATS = ("png", "svg")
#: Trial columns joined onto analysis rows for the plot functions.
TRIAL_COLUMNS = ("trial_id", "model", "dataset", "train_size", "n_train", "seed", "stage", "transfer")


def latest_ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's latest row, kept when its status is ok."""
    if trials.empty:
        return trials
    if "finished_at" in trials.columns:
        trials = trials.sort_values("finished_at")
    latest = trials.drop_duplicates("trial_id", keep="last")
    return latest[latest["status"] == "ok"]


def plot_scaling(trials: pd.DataFrame) -> Any:
    """Test accuracy and test NLL against the number of training images, one line per model."""
    from bench.analysis.figures import band, mean_std, model_colors, new_figure

    fig, (acc_ax, nll_ax) = new_figure(1, 2, width=11.0, height=4.2)
    frame = trials.copy()
    frame["x"] = frame["n_train"].fillna(frame["train_size"]) if "n_train" in frame else frame["train_size"]
    colors = model_colors(sorted(frame["model"].unique()))
    if frame["x"].nunique() == 1:  # one training-set size: a bar per model, not lone dots on a size axis
        return plot_single_size(frame, fig, acc_ax, nll_ax, colors)
    for column, ax, scale, label in ((("test_acc", acc_ax, 100.0, "test accuracy (%)")),
                                     (("test_loss", nll_ax, 1.0, "test NLL"))):
        stats = mean_std(frame.dropna(subset=[column]), ["model", "x"], column)
        for model, group in stats.groupby("model"):
            group = group.sort_values("x")
            band(ax, group["x"].to_numpy(float), scale * group["mean"].to_numpy(), scale * group["std"].to_numpy(),
                 colors[model], f"{model} (n={int(group['count'].max())} per point)")
        if frame["x"].nunique() > 1 and (frame["x"] > 0).all():
            ax.set_xscale("log")
        label_sizes(ax, frame["x"])
        ax.set_xlabel("training images")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    reference_lines(acc_ax, frame)
    acc_ax.set_title("Accuracy vs training-set size")
    nll_ax.set_title("NLL vs training-set size")
    acc_ax.legend(fontsize=8)
    return fig


def plot_single_size(frame: pd.DataFrame, fig: Any, acc_ax: Any, nll_ax: Any, colors: dict[str, Any]) -> Any:
    """Test accuracy and NLL per model (mean, +-1 std over seeds as error bars) at the one training-set size."""
    from bench.analysis.figures import mean_std

    size = frame["x"].iloc[0]
    size_text = f"{int(size):,} training images" if size > 1 else f"training fraction {size:g}"
    for column, ax, scale, label in (("test_acc", acc_ax, 100.0, "test accuracy (%)"), ("test_loss", nll_ax, 1.0,
                                                                                         "test NLL")):
        stats = mean_std(frame.dropna(subset=[column]), ["model"], column).sort_values("model")
        positions = range(len(stats))
        ax.bar(positions, scale * stats["mean"], yerr=scale * stats["std"], capsize=4,
               color=[colors[m] for m in stats["model"]], alpha=0.85)
        for i, (mean, count) in enumerate(zip(scale * stats["mean"], stats["count"])):
            ax.annotate(f"{mean:.3g} (n={int(count)})", (i, mean), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
        ax.set_xticks(list(positions), stats["model"].tolist())
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    acc_ax.set_title(f"Accuracy ({size_text})")
    nll_ax.set_title(f"NLL ({size_text})")
    return fig


#: Exact accuracies of reference rules stored with each trial (spatial data), drawn as lines.
REFERENCE_RULES = (("baseline_chance", "chance"), ("baseline_counting", "counting rule"), ("baseline_bayes", "Bayes rule"))


def label_sizes(ax: Any, sizes: pd.Series) -> None:
    """Ticks at the training-set sizes the sweep has, as plain numbers (a log axis would
    otherwise label 3x10^2, 6x10^2 and leave 256 and 1024 to guess)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    values = sorted(v for v in sizes.dropna().unique())
    if not values or len(values) > 12:
        return
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" if v <= 1 else f"{int(round(v)):,}" for v in values])


def reference_lines(ax: Any, trials: pd.DataFrame) -> None:
    """Dashed lines at the reference rules' accuracies when every trial has the same one."""
    for column, name in REFERENCE_RULES:
        if column not in trials.columns:
            continue
        values = trials[column].dropna().unique()
        if len(values) == 1:
            ax.axhline(100.0 * values[0], color="0.45", linestyle="--", linewidth=1.0)
            ax.annotate(f"{name} {100.0 * values[0]:.1f}", (0.0, 100.0 * values[0]), xycoords=("axes fraction", "data"),
                        xytext=(3, 2), textcoords="offset points", fontsize=7, color="0.35", va="bottom")


def analysis_frames(trials: pd.DataFrame, analysis: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Analysis rows of ok trials joined with their trial columns, per analysis name."""
    if analysis.empty:
        return {}
    columns = [c for c in TRIAL_COLUMNS if c in trials.columns]
    joined = analysis.merge(trials[columns], on="trial_id", how="inner")
    return {name: group.reset_index(drop=True) for name, group in joined.groupby("analysis")}


def plot_transfer(trials: pd.DataFrame) -> Any | None:
    """Transfer curves: downstream test accuracy against training images, one panel per model,
    one line per transfer mode (scratch is the baseline). None when no trial has a transfer mode."""
    from bench.analysis.figures import band, mean_std, model_colors, new_figure

    if "transfer" not in trials or trials["transfer"].isna().all():
        return None
    frame = trials[trials["transfer"].notna()].copy()
    frame["x"] = frame["n_train"].fillna(frame["train_size"])
    models = sorted(frame["model"].unique())
    fig, axes = new_figure(1, len(models), width=max(6.4, 5.2 * len(models)), height=4.2)
    colors = model_colors(sorted(frame["transfer"].unique()))
    for ax, model in zip(axes, models):
        stats = mean_std(frame[frame["model"] == model].dropna(subset=["test_acc"]), ["transfer", "x"], "test_acc")
        for mode, group in stats.groupby("transfer"):
            group = group.sort_values("x")
            band(ax, group["x"].to_numpy(float), 100 * group["mean"].to_numpy(), 100 * group["std"].to_numpy(),
                 colors[mode], f"{mode} (n={int(group['count'].max())})")
        if frame["x"].nunique() > 1 and (frame["x"] > 0).all():
            ax.set_xscale("log")
        label_sizes(ax, frame["x"])
        reference_lines(ax, frame[frame["model"] == model])
        ax.set_title(f"{model}: transfer")
        ax.set_xlabel("downstream training images")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def shuffle_grids(trials: pd.DataFrame) -> pd.Series:
    """Each trial's dataset.shuffle_grid (from its stored config; None where it has none)."""
    import json

    return trials["config"].map(lambda c: json.loads(c).get("dataset", {}).get("shuffle_grid") if isinstance(c, str) else None)


def plot_shuffle_grid(trials: pd.DataFrame) -> Any | None:
    """Block-shuffle curves: test accuracy against the shuffle grid (block size in pixels; the image
    size is the unshuffled image), one line per model. None unless the sweep varies the grid."""
    from bench.analysis.figures import band, mean_std, model_colors, new_figure

    if "config" not in trials:
        return None
    frame = trials.assign(grid=shuffle_grids(trials)).dropna(subset=["grid"])
    if frame["grid"].nunique() < 2:
        return None
    fig, (ax,) = new_figure(1, 1, width=6.4, height=4.2)
    colors = model_colors(sorted(frame["model"].unique()))
    stats = mean_std(frame.dropna(subset=["test_acc"]), ["model", "grid"], "test_acc")
    for model, group in stats.groupby("model"):
        group = group.sort_values("grid")
        band(ax, group["grid"].to_numpy(float), 100 * group["mean"].to_numpy(), 100 * group["std"].to_numpy(),
             colors[model], f"{model} (n={int(group['count'].max())} per point)")
    ax.set_xscale("log", base=2)
    label_sizes(ax, frame["grid"])
    ax.set_xlabel("shuffle block size (px; the image size = no shuffle)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs block-shuffle grid")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save(fig: Any, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None)
        paths.append(path)
    return paths


def plot_sweep(results_dir: str | Path, sweep: str, out_dir: str | Path,
               formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the sweep's figures under `out_dir`; the paths written, scaling figure first."""
    from bench.analysis import analysis_entry, list_analyses
    from bench.store import ResultStore

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise BenchInputError(f"--format {', '.join(unknown)}: expected png or svg")
    store = ResultStore(str(results_dir), sweep)
    trials = latest_ok_trials(store.read("trials"))
    if trials.empty:
        raise BenchInputError(f"{sweep}: no ok trials under {results_dir}/{sweep} (bench results ls lists the sweeps)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = save(plot_scaling(trials), out, "accuracy_vs_train_size", formats)
    for stem, fig in (("transfer", plot_transfer(trials)), ("accuracy_vs_shuffle_grid", plot_shuffle_grid(trials))):
        if fig is not None:
            paths += save(fig, out, stem, formats)
    known = set(list_analyses())
    for name, frame in sorted(analysis_frames(trials, store.read("analysis")).items()):
        entry = analysis_entry(name) if name in known else None
        if entry is None or entry.plot is None:
            continue
        paths += save(entry.plot(frame), out, name, formats)
    return paths
