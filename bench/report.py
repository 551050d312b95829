"""`bench report SWEEP`: one self-contained HTML page and its Markdown twin.

Why: after a sweep, a researcher wants one thing to read and to send: the comparison
tables with the papers' numbers side by side, the figures, the sweep that produced
them, and the environment it ran in. The HTML embeds its figures as base64 data URIs
and its CSS inline, so it reads offline and travels as one file; the Markdown version
links the figure files written next to it.

Tables come from the store through `bench.query` (the same numbers as `bench results
table --vs-reference`); figures from `bench.plots.plot_sweep` when that module is
installed (the report says so when it is not).
"""

from __future__ import annotations

import base64
import html
import json
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bench.errors import BenchInputError

#: Columns a table's columns axis is chosen from, in order: the first that varies wins.
COL_CANDIDATES = ("train_size", "dataset", "dataset.shuffle_grid", "transfer", "stage", "model_args.patch_size")
METRICS = ("test_acc", "test_loss", "ece", "train_loss")  # ece: calibration of the test predictions (bench.calibration)


@dataclass
class Table:
    """One comparison table: its title, the summary (long form, with reference columns) and its axes."""

    title: str
    summary: pd.DataFrame
    rows: str
    cols: str
    metric: str
    mixed: list[str] = field(default_factory=list)


def choose_cols(trials: pd.DataFrame) -> str:
    """The columns axis: the first candidate field that takes more than one value."""
    from bench.query import with_config_columns

    df = with_config_columns(trials, list(COL_CANDIDATES))
    for name in COL_CANDIDATES:
        if name in df.columns and df[name].astype(str).nunique() > 1:
            return name
    return "train_size"


def build_tables(trials: pd.DataFrame, sweep: str) -> list[Table]:
    """The report's tables: each metric the trials have, split by dataset when the columns are not datasets."""
    from bench.query import filter_trials, mixed_fields, ok_trials, summarize, with_config_columns
    from bench.reference import attach_reference

    ok = ok_trials(trials)
    if ok.empty:
        return []
    cols = choose_cols(ok)
    datasets = sorted(ok["dataset"].dropna().unique()) if cols != "dataset" else [None]
    tables = []
    for metric in METRICS:
        if metric not in ok.columns or ok[metric].isna().all():
            continue
        for dataset in datasets:
            where = None if dataset is None or len(datasets) == 1 else f"dataset == {dataset!r}"
            summary = summarize(trials, "model", cols, metric, where)
            if summary.empty:
                continue
            selected = filter_trials(with_config_columns(ok, ["model", cols, metric], where), where)
            summary = attach_reference(summary, selected, ["model", cols], metric, sweep)
            title = f"{metric} by model and {cols}" + (f" on {dataset}" if dataset else "")
            tables.append(Table(title, summary, "model", cols, metric, mixed_fields(selected, "model", cols)))
    return tables


def sweep_text(trials: pd.DataFrame, sweep_file: str | None) -> tuple[str, str]:
    """(where it came from, YAML): the sweep file if given, else rebuilt from the stored configs."""
    if sweep_file:
        return f"sweep file {sweep_file}", Path(sweep_file).read_text()
    from bench.reference import flatten

    configs = [flatten(json.loads(c)) for c in trials["config"].dropna()] if "config" in trials else []
    if not configs:
        return "no stored configs", ""
    skip = {"trial_id", "sweep", "source"}  # and `recorded.*`: what a trial recorded (parameter groups), not its setting
    keys = sorted(k for k in {k for c in configs for k in c} - skip if not k.startswith("recorded."))
    common: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    for key in keys:
        values = []
        for c in configs:
            v = c.get(key)
            if v not in values:
                values.append(v)
        if key.startswith("model_args.") and None in values and len(values) == 2:
            values.remove(None)  # absent for the models that do not take it: the sweep's model_args, not a grid axis
        if len(values) == 1:
            common[key] = values[0]
        else:
            grid[key] = sorted(values, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
    nested: dict[str, Any] = {}
    for key, value in common.items():
        target = nested
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {}) if isinstance(target.get(p, {}), dict) else target
        target[leaf] = value
    doc = {"name": trials["sweep"].iloc[0] if "sweep" in trials else None, **nested, "grid": grid}
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    return f"rebuilt from the {len(configs)} stored trial configs (fields shared by all, then the grid)", text


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(trials: pd.DataFrame) -> dict[str, str]:
    """What produced and what rendered the results: versions, devices, git commit."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + (" (with uncommitted changes)" if dirty else "")) if commit else "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        commit = "git not available"
    import bench

    def values(col: str) -> str:
        return ", ".join(sorted(map(str, trials[col].dropna().unique()))) if col in trials else "unknown"

    return {
        "bench (rendering)": bench.__version__,
        "bench (trials)": values("bench_version"),
        "git commit": commit,
        "devices (trials)": values("device"),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "mlflow": _version("mlflow"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rendered at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def make_figures(results: str, sweep: str, out: Path) -> tuple[list[Path], str]:
    """The sweep's figures from `bench.plots.plot_sweep`, and a note when there are none."""
    try:
        from bench.plots import plot_sweep
    except ImportError:
        return [], "no figures: bench.plots is not available in this installation"
    try:
        paths = [Path(p) for p in plot_sweep(results, sweep, out / "figures", formats=("png", "svg"))]
    except BenchInputError as exc:
        return [], f"no figures: {exc}"
    return paths, "" if paths else "no figures for this sweep"


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix, "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _wide(table: Table) -> pd.DataFrame:
    from bench.query import pivot

    return pivot(table.summary, table.rows, table.cols, table.metric)


def _caption(table: Table) -> str:
    unit = " (%)" if table.metric.endswith("_acc") else ""
    text = f"{table.metric}{unit}: mean ± std over the seeds of a cell (n trials)"
    if table.summary["ref_published"].astype(bool).any():
        text += "; paper: the published number (results/reference), Δ = ours - paper"
    if table.mixed:
        text += f". WARNING: cells average trials that differ in {', '.join(table.mixed)}"
    return text


@dataclass
class Report:
    sweep: str
    trials: pd.DataFrame
    tables: list[Table]
    figures: list[Path]
    figures_note: str
    sweep_source: str
    sweep_yaml: str
    env: dict[str, str]
    references: pd.DataFrame


def collect(sweep: str, results: str = "results", out: Path | None = None, sweep_file: str | None = None,
            trial_ids: set[str] | None = None) -> Report:
    """Everything the report shows, read from the store."""
    from bench.query import load
    from bench.reference import load_reference

    tables = load(sweep, results)
    trials = tables["trials"]
    if trial_ids is not None:
        trials = trials[trials["trial_id"].isin(trial_ids)]
    if trials.empty:
        raise BenchInputError(f"{sweep}: no trials under {results}/{sweep}")
    out = out or Path(results) / sweep / "report"
    built = build_tables(trials, sweep)
    figures, note = make_figures(results, sweep, out)
    source, text = sweep_text(trials, sweep_file)
    ref = load_reference()
    matched = {(r, e) for t in built for r, e in zip(t.summary["ref_published"], t.summary["ref_experiment"]) if r}
    experiments = {e for _, e in matched} | ({sweep} if sweep in set(ref["experiment"]) else set())
    return Report(sweep, trials, built, figures, note, source, text, environment(trials),
                  ref[ref["experiment"].isin(experiments)].drop(columns=["file"]))


def _status_counts(trials: pd.DataFrame) -> str:
    latest = trials.sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    counts = latest["status"].value_counts()
    return html.escape(", ".join(f"{n} {s}" for s, n in counts.items()))  # stored data: text, never markup


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d2430}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde6;padding-bottom:.2rem}
h3{font-size:1rem;margin-bottom:.3rem} .meta{color:#5a6475;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 .3rem;font-size:.88rem} th,td{border:1px solid #d8dde6;padding:.3rem .55rem;text-align:left;vertical-align:top}
thead th{background:#f1f4f9} td.num{text-align:right;white-space:nowrap} .ref{color:#5a35a8;display:block;font-size:.8rem}
.caption{color:#5a6475;font-size:.82rem;margin:0 0 1rem} .warn{color:#9a3412}
pre{background:#f6f8fb;border:1px solid #d8dde6;padding:.7rem;overflow:auto;font-size:.82rem}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #e3e7ee} figcaption{color:#5a6475;font-size:.82rem}
"""


def _html_table(table: Table) -> str:
    from bench.query import _cell, _label, _ref_cell

    s = table.summary
    percent = table.metric.endswith("_acc")
    col_labels = list(dict.fromkeys(_label(v) for v in _wide(table).columns))
    row_labels = list(dict.fromkeys(s[table.rows].map(_label)))
    cells: dict[tuple[str, str], str] = {}
    for r in s.itertuples(index=False):
        rd = r._asdict()
        ours = _cell(rd["mean"], rd["std"], rd["n"], percent)
        ref = _ref_cell(rd["ref_value"], rd["ref_published"], rd["ref_source"], rd["diff"], percent)
        key = (_label(getattr(r, table.rows)), _label(getattr(r, table.cols)))
        cells[key] = html.escape(ours) + (f'<span class="ref">{html.escape(ref)}</span>' if ref else "")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in col_labels)
    body = "".join(
        f"<tr><th>{html.escape(row)}</th>" + "".join(f'<td class="num">{cells.get((row, c), "")}</td>' for c in col_labels) + "</tr>"
        for row in row_labels)
    return (f'<table data-metric="{html.escape(table.metric)}" data-rows="{html.escape(table.rows)}" data-cols="{html.escape(table.cols)}">'
            f"<thead><tr><th>{html.escape(table.rows)} \\ {html.escape(table.cols)}</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _html_frame(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """The page: one file, figures inline as data URIs, no external resources."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>bench report: {html.escape(report.sweep)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>bench report: {html.escape(report.sweep)}</h1>",
             f'<p class="meta">{len(report.trials.drop_duplicates("trial_id"))} trials ({_status_counts(report.trials)}); '
             f"rendered {html.escape(report.env['rendered at'])}</p>",
             "<h2>Comparison tables</h2>"]
    if not report.tables:
        parts.append("<p>No finished trials yet.</p>")
    for t in report.tables:
        cls = ' class="caption warn"' if t.mixed else ' class="caption"'
        parts += [f"<h3>{html.escape(t.title)}</h3>", _html_table(t), f"<p{cls}>{html.escape(_caption(t))}</p>"]
    parts.append("<h2>Figures</h2>")
    shown = [p for p in report.figures if p.suffix == ".png"] or [p for p in report.figures if p.suffix == ".svg"]
    for p in shown:
        parts.append(f'<figure><img alt="{html.escape(p.stem)}" src="{_data_uri(p)}"><figcaption>{html.escape(p.stem)}</figcaption></figure>')
    if report.figures_note:
        parts.append(f"<p>{html.escape(report.figures_note)}</p>")
    parts.append("<h2>Published numbers</h2>")
    if report.references.empty:
        parts.append("<p>No reference row matches this sweep (results/reference/*.csv).</p>")
    else:
        parts.append(_html_frame(report.references.assign(setting=report.references["setting"].str.replace(";", "; "))))
    parts += [f"<h2>Sweep</h2><p class=meta>{html.escape(report.sweep_source)}</p><pre>{html.escape(report.sweep_yaml)}</pre>",
              "<h2>Environment</h2>", _html_frame(pd.DataFrame(list(report.env.items()), columns=["", "value"])),
              "</body></html>"]
    return "\n".join(parts)


def render_markdown(report: Report, out: Path) -> str:
    """The Markdown twin: the same tables, figures linked relative to the page."""
    from bench.query import _markdown

    lines = [f"# bench report: {report.sweep}", "",
             f"{len(report.trials.drop_duplicates('trial_id'))} trials ({_status_counts(report.trials)}); "
             f"rendered {report.env['rendered at']}", "", "## Comparison tables", ""]
    for t in report.tables:
        lines += [f"### {t.title}", "", _markdown(_wide(t)), "", _caption(t), ""]
    if not report.tables:
        lines += ["No finished trials yet.", ""]
    lines += ["## Figures", ""]
    for p in report.figures:
        if p.suffix == ".png":
            rel = p.relative_to(out) if p.is_relative_to(out) else p
            lines += [f"![{p.stem}]({rel.as_posix()})", ""]
    if report.figures_note:
        lines += [report.figures_note, ""]
    lines += ["## Published numbers", ""]
    if report.references.empty:
        lines += ["No reference row matches this sweep (results/reference/*.csv).", ""]
    else:
        lines += [_markdown(report.references.set_index(report.references.columns[0])), ""]
    lines += ["## Sweep", "", report.sweep_source, "", "```yaml", report.sweep_yaml.rstrip(), "```", "",
              "## Environment", "", "| | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.env.items()]
    return "\n".join(lines) + "\n"


def write_report(sweep: str, results: str = "results", out: str | None = None, sweep_file: str | None = None,
                 trial_ids: set[str] | None = None) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` for a sweep; return their paths."""
    out_dir = Path(out) if out else Path(results) / sweep / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = collect(sweep, results, out_dir, sweep_file, trial_ids)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(render_html(report))
    md_path.write_text(render_markdown(report, out_dir))
    return html_path, md_path
