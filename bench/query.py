"""Comparison tables from the result store: mean ± std over seeds, in md, csv, latex, html or json."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.errors import BenchInputError

FORMATS = ("md", "csv", "latex", "html", "json")


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The latest row of every trial, kept if it finished ok (or was stopped early by a search's scheduler)."""
    if trials.empty:
        return trials
    latest = trials.sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    return latest[latest["status"].isin(("ok", "stopped"))]


def select_phase(trials: pd.DataFrame, phase: str = "final") -> pd.DataFrame:
    """Rows of one phase of a tuned sweep: `final` (also every row of an untuned sweep) or `search`."""
    column = trials["phase"] if "phase" in trials else pd.Series(None, index=trials.index, dtype=object)
    if phase == "search":
        return trials[column == "search"]
    return trials[column.isna() | (column == "final")]


def best_configs(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell of a tuned sweep: the values its search chose, the search trial they came from,
    its validation score and the budget the cell spent (`bench results best`)."""
    finals = select_phase(trials, "final")
    finals = finals[finals["selected_from"].notna()] if "selected_from" in finals else finals.iloc[0:0]
    if finals.empty:
        return pd.DataFrame()
    search = trials.drop_duplicates("trial_id", keep="last").set_index("trial_id")
    rows = []
    for selected, group in finals.groupby("selected_from", sort=False):
        first = group.iloc[0]
        config = json.loads(first["config"])
        chosen = search.loc[selected] if selected in search.index else None
        rows.append({"model": first["model"], "train_size": first["train_size"], **config.get("tuned", {}),
                     "val_acc": None if chosen is None else chosen.get("val_acc"), "selected_from": selected,
                     "search_trials": first.get("budget_trials"), "search_epochs": first.get("budget_epochs"),
                     "search_wall_s": first.get("budget_wall_s"), "final_trials": len(group)})
    return pd.DataFrame(rows)


def summarize(
    trials: pd.DataFrame, rows: str = "model", cols: str = "train_size", metric: str = "test_acc", where: str | None = None
) -> pd.DataFrame:
    """Long table: one line per (rows, cols) cell with mean, std and n over the trials in it (seeds)."""
    df = with_config_columns(ok_trials(trials), [rows, cols, metric], where)
    for name, column in (("--rows", rows), ("--cols", cols), ("--metric", metric)):
        if column not in df.columns:
            raise BenchInputError(f"{name} {column}: no such column (columns: {', '.join(map(str, df.columns))})")
    df = filter_trials(df, where)
    grouped = df.groupby([rows, cols], sort=True, dropna=False)[metric]
    summary = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    summary["std"] = summary["std"].fillna(0.0)
    return summary


CONFIG_ROOTS = ("dataset", "model_args", "train", "tune", "analysis", "resources")


def with_config_columns(df: pd.DataFrame, names: list[str], where: str | None = None) -> pd.DataFrame:
    """`df` plus the config fields that `names` or `where` refer to by dotted path (`train.lr`).

    Lets a table group or filter by any trial field, e.g. `--cols dataset.shuffle_grid`
    or `--where "`train.epochs` == 300"`; only parses the configs when one is named.
    """
    wanted = {n for n in names if n not in df.columns and "." in n}
    if where:
        from bench.where import parse_where

        wanted |= set(parse_where(where).names)
        wanted = {w for w in wanted if w not in df.columns and w.split(".")[0] in CONFIG_ROOTS}
    if not wanted or df.empty or "config" not in df.columns:
        return df
    from bench.reference import flatten

    flat = pd.DataFrame([flatten(json.loads(c)) if isinstance(c, str) else {} for c in df["config"]], index=df.index)
    extra = {w: flat[w] if w in flat.columns else None for w in wanted}
    return df.assign(**extra)


def filter_trials(df: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows for which the condition `where` holds (bench.where: comparisons, and/or/not, in, columns,
    config paths, constants; evaluated by bench, never by Python); anything else is bad input."""
    if not where:
        return df
    from bench.where import parse_where

    return df[parse_where(where).mask(df)]


def mixed_fields(trials: pd.DataFrame, rows: str, cols: str) -> list[str]:
    """Config fields (other than the seed) that differ between trials averaged into one cell.

    A store can hold several versions of a sweep (say, `--set train.epochs=1` and the
    full run); a table that silently averaged them would mislead.
    """
    df = ok_trials(trials)
    if df.empty or "config" not in df.columns:
        return []
    # Cells normally hold one config up to the seed. Compare the configs as text with their
    # per-trial fields blanked first, and parse only the distinct texts of cells that differ:
    # 100,000 trials take a fraction of a second instead of many. Blanking can only miss
    # (then a cell looks mixed and the exact check below decides), never hide a difference.
    blanked = [_blank_per_trial(c, s, t, w) for c, s, t, w in zip(
        df["config"], df.get("seed", [None] * len(df)), df.get("trial_id", [None] * len(df)),
        df.get("sweep", [None] * len(df)))]
    texts = pd.DataFrame({"r": df[rows].to_numpy(), "c": df[cols].to_numpy(), "cfg": blanked}).drop_duplicates()
    sizes = texts.groupby(["r", "c"], dropna=False)["cfg"].transform("size")
    texts = texts[sizes > 1]
    if texts.empty:
        return []
    flat = pd.json_normalize([json.loads(c) for c in texts["cfg"]]).astype(str)
    flat.index = texts.index
    ignore = {"seed", "trial_id", "sweep", "source", rows, cols}  # a source trial follows its seed
    varying: set[str] = set()
    for _, cell in flat.groupby([texts["r"], texts["c"]], dropna=False):
        # `recorded.*` is what the worker observed (frozen parameters, steps per epoch), not a setting
        varying |= {c for c in cell.columns if c not in ignore and not c.startswith("recorded.")
                    and cell[c].nunique() > 1}
    return sorted(varying)


def _blank_per_trial(config: str, seed, trial_id, sweep) -> str:
    """The config text with its top-level seed, trial_id and sweep values set to null."""
    if not isinstance(config, str):
        return ""
    if seed is not None and not (isinstance(seed, float) and math.isnan(seed)):
        # Keys are sorted, and what follows the trial's own seed (source, stage, train, ...) holds no
        # `seed`, while analysis options before it may (`hessian: {seed: 0}`): the last one is the trial's.
        head, found, tail = config.rpartition(f'"seed": {int(seed)}')
        if found:
            config = f'{head}"seed": null{tail}'
    for key, value in (("trial_id", trial_id), ("sweep", sweep)):
        if isinstance(value, str):
            config = config.replace(f'"{key}": {json.dumps(value)}', f'"{key}": null', 1)
    return config


def _label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
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
    return text + f" (n={n})"


def _ref_cell(value: float, published: str, source: str, diff: float, percent: bool) -> str:
    """`paper ≈90.2% (figure), Δ -0.4`: the matched reference number next to a cell."""
    if not published:
        return ""
    if published == "not published" or value is None or math.isnan(value):
        return "paper: not published"
    scale, digits, unit = (100.0, 1, " pt") if percent else (1.0, 4, "")
    delta = "" if diff is None or math.isnan(diff) else f", Δ {diff * scale:+.{digits}f}{unit}"
    return f"paper {published} ({source}){delta}"


def pivot(summary: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """Wide, human-readable table: accuracies in percent, `mean ± std` over n seeds."""
    percent = metric.endswith("_acc")
    cells = [_cell(m, s, n, percent) for m, s, n in zip(summary["mean"], summary["std"], summary["n"])]
    if "ref_published" in summary.columns:
        refs = [_ref_cell(*r, percent) for r in zip(summary["ref_value"], summary["ref_published"],
                                                     summary["ref_source"], summary["diff"])]
        cells = [f"{c} · {r}" if r else c for c, r in zip(cells, refs)]
    table = summary.assign(cell=cells, col=summary[cols].map(_label))
    order = list(dict.fromkeys(_label(v) for v in sorted(
        summary[cols].unique(), key=lambda v: (isinstance(v, str), pd.isna(v), 0 if pd.isna(v) else v))))
    wide = table.pivot(index=rows, columns="col", values="cell").reindex(columns=order).fillna("")
    wide.columns.name = None
    wide.index.name = f"{rows} \\ {cols}"
    return wide


BASELINES = {"baseline_chance": "(chance)", "baseline_counting": "(counting rule)", "baseline_bayes": "(Bayes rule)"}


def baseline_rows(trials: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """Reference rows beside the models: the exact chance, counting-rule and Bayes accuracies of
    each column's data (spatial data), in the summary's long format with n = 0.

    A model is credited with learning the spatial structure only where it beats counting.
    """
    present = [c for c in BASELINES if c in trials.columns and trials[c].notna().any()]
    if metric != "test_acc" or not present or trials.empty:
        return pd.DataFrame()
    parts = []
    for column in present:
        means = trials.groupby(cols, dropna=False)[column].mean().dropna()
        parts.append(pd.DataFrame({rows: BASELINES[column], cols: means.index, "mean": means.values,
                                   "std": 0.0, "n": 0}))
    return pd.concat(parts, ignore_index=True)


def _with_baselines(wide: pd.DataFrame, baselines: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """The wide table with the reference rows at the bottom (value only, no seed count)."""
    scale, digits = (100.0, 1) if metric.endswith("_acc") else (1.0, 4)
    for label, group in baselines.groupby(rows, sort=False):
        values = {_label(c): f"{m * scale:.{digits}f}" for c, m in zip(group[cols], group["mean"])}
        wide.loc[label] = [values.get(str(c), "") for c in wide.columns]
    return wide


def render(summary: pd.DataFrame, rows: str, cols: str, metric: str, fmt: str = "md", mixed: list[str] = (),
           baselines: pd.DataFrame | None = None) -> str:
    if fmt not in FORMATS:
        raise BenchInputError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if summary.empty:
        return "(no finished trials)"
    has_baselines = baselines is not None and not baselines.empty
    if fmt in ("csv", "json"):
        long = pd.concat([summary, baselines], ignore_index=True) if has_baselines else summary
        if fmt == "csv":
            return long.to_csv(index=False).rstrip("\n")
        return json.dumps(long.to_dict(orient="records"), indent=2, default=str)
    wide = pivot(summary, rows, cols, metric)
    if has_baselines:
        wide = _with_baselines(wide, baselines, rows, cols, metric)
    n = int(summary["n"].max())
    caption = (f"{metric}{' (%)' if metric.endswith('_acc') else ''}, mean ± std over the trials (seeds) of a cell, "
               f"n of them (up to {n})")
    if "ref_published" in summary.columns:
        caption += "; paper: the published number (results/reference), Δ = ours - paper"
    if has_baselines:
        caption += ("; (rows): exact accuracies of reference rules on the same data: a model learned the "
                    "spatial structure only where it beats the counting rule")
    if mixed:
        caption += (f"; WARNING: cells average trials that differ in {', '.join(mixed)}"
                    " (narrow with --where, or name the sweep file to keep only its trials)")
    if fmt == "latex":
        return _latex(wide, caption)
    if fmt == "html":
        return wide.to_html()
    return _markdown(wide) + f"\n\n{caption}"


_LATEX_SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "Δ": r"$\Delta$", "·": r"$\cdot$"}


def _latex(wide: pd.DataFrame, caption: str) -> str:
    """LaTeX that compiles: `%`, `_`, `\\` escaped in cells, labels and caption; ±, ≈, Δ as math."""
    def esc(text: str) -> str:
        for ch, rep in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"), ("#", r"\#")):
            text = text.replace(ch, rep)
        for ch, rep in _LATEX_SYMBOLS.items():
            text = text.replace(ch, rep)
        return text

    safe = wide.map(lambda v: esc(str(v)))
    safe.index = [esc(str(i)) for i in wide.index]
    safe.index.name = esc(str(wide.index.name)) if wide.index.name else None
    safe.columns = [esc(str(c)) for c in wide.columns]
    return safe.to_latex(caption=esc(caption), escape=False)


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
    where: str | None = None, fmt: str = "md", vs_reference: bool = False, sweep: str | None = None,
) -> str:
    """The comparison table as text; `vs_reference` adds the papers' numbers (bench.reference) per cell."""
    summary = summarize(trials, rows, cols, metric, where)
    selected = filter_trials(with_config_columns(ok_trials(trials), [rows, cols, metric], where), where)
    if vs_reference and not summary.empty:
        from bench.reference import attach_reference

        summary = attach_reference(summary, selected, [rows, cols], metric, sweep)
    return render(summary, rows, cols, metric, fmt, mixed_fields(selected, rows, cols),
                  baselines=baseline_rows(selected, rows, cols, metric))


def load(sweep: str, results: str = "results") -> dict[str, pd.DataFrame]:
    """A sweep's tables for a notebook: {'trials', 'epochs', 'analysis'} as DataFrames.

    Reads through the store (compacted parts honoured, each trial once); bad names are
    BenchInputError, as on the command line.
    """
    from bench.store import ResultStore, TABLES, list_sweeps

    if sweep not in list_sweeps(results):
        known = ", ".join(list_sweeps(results)) or "none"
        raise BenchInputError(f"{sweep}: no sweep of that name under {results} (sweeps: {known})")
    store = ResultStore(results, sweep)
    return {table: store.read(table) for table in TABLES}
