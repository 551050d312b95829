"""SQL over the result store: DuckDB views on the Parquet folders, read in place.

Why: a store of thousands of trials is a table like any other; `bench results sql`
lets a researcher join, filter and aggregate it without loading it into pandas first.

Views (one DuckDB connection, in memory; nothing is copied):
- `trials`   one row per trial (the store's trials table),
- `epochs`   one row per trial and epoch,
- `analysis` long format: trial_id, analysis, metric, layer, index, value,
each with a `sweep` column (the sweep's folder name), over every sweep under the
results folder, or over one with `sweep=`. `reference` holds the papers' published
numbers (results/reference/*.csv). Views honour compaction exactly as
`ResultStore.read` does: each trial's rows come from its per-trial file if there is
one, else from the newest compacted part (see bench.compact).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchInputError

if TYPE_CHECKING:  # pandas and pyarrow load only when a query runs: `bench --help` stays quick
    import pandas as pd

VIEWS = ("trials", "epochs", "analysis")
VIEW_HELP = (
    "views: trials (one row per trial), epochs (per trial and epoch), analysis (trial_id, analysis, metric, "
    "layer, index, value), each with a sweep column; reference (the papers' published numbers)"
)


def _has_parquet(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.endswith(".parquet") and not e.name.startswith((".", "_")) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(root: Path, table: str, sweeps: list[str]) -> str:
    """The SELECT behind one view: the folders' files, deduplicated by source precedence."""
    from bench.store import TABLES

    folders = [root / s / table for s in sweeps if _has_parquet(root / s / table)]
    if not folders:
        cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS \"{f.name}\"" for f in TABLES[table] if f.name != "sweep")
        return f"SELECT CAST(NULL AS VARCHAR) AS sweep, {cols} WHERE false"
    globs = "[" + ", ".join(_quote(str(f / "*.parquet")) for f in folders) + "]"
    drop = ", sweep" if table == "trials" else ""  # the folder name is the sweep, whatever a row says
    # A source's precedence: per-trial files ('~') over parts, newer parts (names sort by time) over older.
    return f"""
        WITH src AS (
            SELECT *,
                   regexp_extract(filename, '([^/]+)/{table}/[^/]+$', 1) AS __sweep,
                   CASE WHEN regexp_extract(filename, '[^/]+$') LIKE 'part-%'
                        THEN regexp_extract(filename, '[^/]+$') ELSE '~' END AS __prec
            FROM read_parquet({globs}, union_by_name = true, filename = true)
        ),
        ranked AS (
            SELECT *, max(__prec) OVER (PARTITION BY __sweep, trial_id) AS __best FROM src
        )
        SELECT __sweep AS sweep, * EXCLUDE (filename, __sweep, __prec, __best{drop})
        FROM ranked WHERE __prec = __best
    """


def _duck_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    return "VARCHAR"


def connect(results: str | os.PathLike[str] = "results", sweep: str | None = None):
    """A DuckDB connection with the views `trials`, `epochs`, `analysis` (and `reference`)."""
    import duckdb

    from bench.store import list_sweeps

    text = os.fspath(results)
    if "://" in text and not text.startswith("file://"):
        raise BenchInputError(f"--results {text}: SQL reads a local store (sync the bucket to a folder first)")
    root = Path(text.removeprefix("file://")).resolve()
    sweeps = list_sweeps(root)
    if sweep is not None:
        if sweep not in sweeps:
            raise BenchInputError(f"--sweep {sweep}: no sweep of that name under {results} (bench results ls lists them)")
        sweeps = [sweep]
    con = duckdb.connect(":memory:")
    for table in VIEWS:
        con.execute(f"CREATE VIEW {table} AS {view_sql(root, table, sweeps)}")
    from bench.reference import reference_dir

    ref = reference_dir()
    if any(ref.glob("*.csv")):
        con.execute(f"CREATE VIEW reference AS SELECT * FROM read_csv({_quote(str(ref / '*.csv'))}, "
                    "union_by_name = true, header = true, all_varchar = false)")
    return con


def query(sql: str, results: str | os.PathLike[str] = "results", sweep: str | None = None, retries: int = 5) -> pd.DataFrame:
    """Run one SQL statement over the store; the result as a DataFrame.

    A file that vanishes mid-query (a compaction finished) makes DuckDB fail; the query
    is then run again on a fresh listing.
    """
    import duckdb

    for attempt in range(retries):
        con = connect(results, sweep)
        try:
            return con.execute(sql).df()
        except duckdb.IOException as exc:
            if attempt == retries - 1:
                raise BenchInputError(f"sql: could not read the store ({exc})") from None
            time.sleep(0.05)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchInputError(f"sql: {first}") from None
        finally:
            con.close()
    raise AssertionError("unreachable")


def render(df: pd.DataFrame, fmt: str = "md") -> str:
    """A query result as md (default), csv, json or html."""
    import pandas as pd
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return df.to_json(orient="records", indent=2, date_format="iso")
    if fmt == "html":
        return df.to_html(index=False)
    if df.empty:
        return "(no rows)" if len(df.columns) == 0 else "| " + " | ".join(map(str, df.columns)) + " |\n(no rows)"
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
