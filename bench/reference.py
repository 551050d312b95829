"""The papers' published numbers (results/reference/*.csv) and their match to a table's cells.

Why: a researcher reads a result next to the number the paper published; the CSVs
keep those numbers with how each was obtained, and `attach_reference` finds, for each
cell of a comparison table, the reference row that describes the same experiment.

CSV columns: `experiment, paper, model, dataset, setting, metric, value, published,
source, note`.
- `value` is in the store's units (`test_acc` 0..1, `params` a count, `flops` per
  image), so it compares with a trial column directly; `published` is the number as
  the paper gives it (with its ≈, %, M, GFLOP).
- `source`: `table` (an exact number from a table or the text), `text` (stated in the
  text), `figure` (read off a figure: approximate), `computed` (a reference value
  computed by the team, not from a paper), `not published` (no number: `value` empty).
- `setting`: the conditions under which the number holds, `;`-separated `key=value`
  with `key` a dotted path into the trial's config (`dataset.shuffle_grid`,
  `model_args.patch_size`) or a trials column (`train_size`, `transfer`); a value may
  list alternatives with `|`, and `none` matches a missing or null field (the default).
  Empty: no conditions. `model`/`dataset` `*` match any.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

COLUMNS = ["experiment", "paper", "model", "dataset", "setting", "metric", "value", "published", "source", "note"]
SOURCES = ("table", "text", "figure", "computed", "not published")


def reference_dir() -> Path:
    """`results/reference/` of the repository (or `$BENCH_REFERENCE_DIR`)."""
    env = os.environ.get("BENCH_REFERENCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "results" / "reference"


def load_reference(folder: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Every reference row of every CSV in the folder, with the file it came from."""
    folder = Path(folder) if folder is not None else reference_dir()
    frames = [pd.read_csv(p, dtype={"setting": str, "note": str}, keep_default_na=False, na_values={"value": [""]})
              .assign(file=p.name) for p in sorted(folder.glob("*.csv"))]
    if not frames:
        return pd.DataFrame(columns=COLUMNS + ["file"])
    ref = pd.concat(frames, ignore_index=True)
    ref["value"] = pd.to_numeric(ref["value"], errors="coerce")
    return ref


def parse_setting(setting: str | None) -> list[tuple[str, list[str]]]:
    """`'a.b=1|none;c=x'` -> `[('a.b', ['1', 'none']), ('c', ['x'])]`."""
    out = []
    for part in (setting or "").split(";"):
        part = part.strip()
        if part:
            key, _, values = part.partition("=")
            out.append((key.strip(), [v.strip() for v in values.split("|")]))
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted paths: {'dataset': {'name': 'x'}} -> {'dataset.name': 'x'}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _same(actual: Any, wanted: str) -> bool:
    if wanted == "none":
        return actual is None or (isinstance(actual, float) and math.isnan(actual))
    if actual is None:
        return False
    try:
        return float(actual) == float(wanted)
    except (TypeError, ValueError):
        return str(actual) == wanted


def setting_holds(setting: str | None, fields: dict[str, Any]) -> bool:
    """Whether every condition of a setting holds for one trial's fields (flat config + row)."""
    return all(any(_same(fields.get(key), v) for v in values) for key, values in parse_setting(setting))


def trial_fields(row: pd.Series) -> dict[str, Any]:
    """A trial's fields for matching: its row, then its flattened config (the config wins)."""
    fields = {k: v for k, v in row.items() if k != "config"}
    config = row.get("config")
    if isinstance(config, str) and config:
        fields.update(flatten(json.loads(config)))
        fields["dataset"] = fields.get("dataset.name", row.get("dataset"))
    return fields


def best_match(reference: pd.DataFrame, fields: dict[str, Any], metric: str, sweep: str | None = None) -> pd.Series | None:
    """The reference row for one cell: same metric, model and dataset, setting holds.

    Rows of the experiment named like the sweep come first, then the most specific
    setting (most conditions), then file order.
    """
    if reference.empty:
        return None
    cand = reference[(reference["metric"] == metric)
                     & reference["model"].isin([fields.get("model"), "*"])
                     & reference["dataset"].isin([fields.get("dataset"), "*"])]
    cand = cand[[setting_holds(s, fields) for s in cand["setting"]]]
    if cand.empty:
        return None
    order = cand.assign(
        __exp=(cand["experiment"] != sweep).astype(int),
        __spec=[-len(parse_setting(s)) for s in cand["setting"]],
    ).sort_values(["__exp", "__spec"], kind="stable")
    return order.iloc[0].drop(labels=["__exp", "__spec"])


def attach_reference(
    summary: pd.DataFrame, trials: pd.DataFrame, keys: Iterable[str], metric: str,
    sweep: str | None = None, reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The summary with `ref_value, ref_published, ref_source, ref_experiment, diff` per cell.

    A cell's fields are those of its first trial (cells average seeds of one config;
    `bench.query.mixed_fields` warns when they do not). `diff` = mean - ref_value, in
    the metric's units.
    """
    keys = list(keys)
    reference = load_reference() if reference is None else reference
    first = trials.drop_duplicates(keys).set_index(keys) if not trials.empty else trials
    found = []
    for cell in summary[keys].itertuples(index=False, name=None):
        key = cell if len(keys) > 1 else cell[0]
        row = first.loc[key] if key in first.index else None
        match = best_match(reference, trial_fields(row.copy()) | dict(zip(keys, cell)), metric, sweep) \
            if row is not None else None
        found.append(match)
    out = summary.copy()
    out["ref_value"] = [m["value"] if m is not None else float("nan") for m in found]
    out["ref_published"] = [m["published"] if m is not None else "" for m in found]
    out["ref_source"] = [m["source"] if m is not None else "" for m in found]
    out["ref_experiment"] = [m["experiment"] if m is not None else "" for m in found]
    out["diff"] = out["mean"] - out["ref_value"]
    return out
