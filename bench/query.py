"""Comparison tables from the result store: mean ± std over seeds, in md, csv, latex, html or json."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.errors import BenchInputError

FORMATS = ("md", "csv", "latex", "html", "json")


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The latest row of every trial, kept if it finished ok."""
    if trials.empty:
        return trials
    latest = trials.sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    return latest[latest["status"] == "ok"]


def summarize(
    trials: pd.DataFrame, rows: str = "model", cols: str = "train_size", metric: str = "test_acc", where: str | None = None
) -> pd.DataFrame:
    """Long table: one line per (rows, cols) cell with mean, std and n over the trials in it (seeds)."""
    df = ok_trials(trials)
    for name, column in (("--rows", rows), ("--cols", cols), ("--metric", metric)):
        if column not in df.columns:
            raise BenchInputError(f"{name} {column}: no such column (columns: {', '.join(map(str, df.columns))})")
    if where:
        try:
            df = df.query(where)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise BenchInputError(f"--where {where!r}: not a valid filter ({exc})") from None
    grouped = df.groupby([rows, cols], sort=True)[metric]
    summary = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    summary["std"] = summary["std"].fillna(0.0)
    return summary


def mixed_fields(trials: pd.DataFrame, rows: str, cols: str) -> list[str]:
    """Config fields (other than the seed) that differ between trials averaged into one cell.

    A store can hold several versions of a sweep (say, `--set train.epochs=1` and the
    full run); a table that silently averaged them would mislead.
    """
    df = ok_trials(trials)
    if df.empty or "config" not in df.columns:
        return []
    flat = pd.json_normalize([json.loads(c) for c in df["config"]]).astype(str)
    flat.index = df.index
    ignore = {"seed", "trial_id", "sweep", rows, cols}
    varying: set[str] = set()
    for _, cell in flat.groupby([df[rows], df[cols]]):
        varying |= {c for c in cell.columns if c not in ignore and cell[c].nunique() > 1}
    return sorted(varying)


def _label(value) -> str:
    if isinstance(value, float) and value.is_integer() and value > 1:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(mean: float, std: float, n: int, percent: bool) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    scale, digits = (100.0, 1) if percent else (1.0, 4)
    text = f"{mean * scale:.{digits}f}"
    if n > 1:
        text += f" ± {std * scale:.{digits}f}"
    return text


def pivot(summary: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """Wide, human-readable table: accuracies in percent, `mean ± std` over n seeds."""
    percent = metric.endswith("_acc")
    table = summary.assign(
        cell=[_cell(m, s, n, percent) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])],
        col=summary[cols].map(_label),
    )
    order = [_label(v) for v in sorted(summary[cols].unique(), key=lambda v: (isinstance(v, str), v))]
    wide = table.pivot(index=rows, columns="col", values="cell").reindex(columns=order).fillna("")
    wide.columns.name = None
    wide.index.name = f"{rows} \\ {cols}"
    return wide


def render(summary: pd.DataFrame, rows: str, cols: str, metric: str, fmt: str = "md", mixed: list[str] = ()) -> str:
    if fmt not in FORMATS:
        raise BenchInputError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if summary.empty:
        return "(no finished trials)"
    if fmt == "csv":
        return summary.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return json.dumps(summary.to_dict(orient="records"), indent=2, default=str)
    wide = pivot(summary, rows, cols, metric)
    n = int(summary["n"].max())
    caption = f"{metric}{' (%)' if metric.endswith('_acc') else ''}, mean ± std over up to {n} trials per cell"
    if mixed:
        caption += (f"; WARNING: cells average trials that differ in {', '.join(mixed)}"
                    " (narrow with --where, or name the sweep file to keep only its trials)")
    if fmt == "latex":
        return wide.to_latex(caption=caption)
    if fmt == "html":
        return wide.to_html()
    return _markdown(wide) + f"\n\n{caption}"


def _markdown(wide: pd.DataFrame) -> str:
    """A GitHub-style table without the optional `tabulate` dependency."""
    header = [str(wide.index.name)] + [str(c) for c in wide.columns]
    body = [[str(idx)] + [str(v) for v in row] for idx, row in zip(wide.index, wide.values)]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt_row = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt_row(header), sep] + [fmt_row(r) for r in body])


def comparison_table(
    trials: pd.DataFrame, rows: str = "model", cols: str = "train_size", metric: str = "test_acc",
    where: str | None = None, fmt: str = "md",
) -> str:
    summary = summarize(trials, rows, cols, metric, where)
    selected = trials if not where else ok_trials(trials).query(where)
    return render(summary, rows, cols, metric, fmt, mixed_fields(selected, rows, cols))
