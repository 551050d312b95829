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
import re
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


def _sources(folder: Path, skip: frozenset[str]) -> list[str] | None:
    """What one table folder's view reads: a glob of its Parquet files, or (when some must be left
    out or added) the files one by one; None when it has none. Left out: unreadable files set aside
    (`skip`); added: files a killed compaction left hidden (bench.compact.orphaned_grabs)."""
    from bench.compact import _visible, orphaned_grabs

    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    visible = sorted(n for n in names if _visible(n))
    orphans = sorted(orphaned_grabs(names))
    files = [str(folder / n) for n in visible + orphans if str(folder / n) not in skip]
    if not files:
        return None
    if not orphans and len(files) == len(visible):
        return [str(folder / "*.parquet")]
    return files


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(root: Path, table: str, sweeps: list[str], skip: frozenset[str] = frozenset()) -> str:
    """The SELECT behind one view: the folders' files, deduplicated by source precedence."""
    from bench.store import TABLES

    sources = [f for s in sweeps for f in (_sources(root / s / table, skip) or [])]
    if not sources:
        cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS \"{f.name}\"" for f in TABLES[table] if f.name != "sweep")
        return f"SELECT CAST(NULL AS VARCHAR) AS sweep, {cols} WHERE false"
    globs = "[" + ", ".join(_quote(f) for f in sources) + "]"
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


def connect(results: str | os.PathLike[str] = "results", sweep: str | None = None, skip: frozenset[str] = frozenset()):
    """A DuckDB connection with the views `trials`, `epochs`, `analysis` (and `reference`), that can
    read only the store and the reference folder; `skip`: unreadable files to leave out."""
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
    # No extension is installed or loaded on the fly (Parquet and CSV are built in).
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                             "allow_community_extensions": False})
    for table in VIEWS:
        con.execute(f"CREATE VIEW {table} AS {view_sql(root, table, sweeps, skip)}")
    from bench.reference import reference_dir

    ref = reference_dir().resolve()
    if any(ref.glob("*.csv")):
        con.execute(f"CREATE VIEW reference AS SELECT * FROM read_csv({_quote(str(ref / '*.csv'))}, "
                    "union_by_name = true, header = true, all_varchar = false)")
    # What a query may touch from here on: the store and the reference numbers, nothing else on
    # this machine or the network; and no statement can change that (the configuration is locked).
    allowed = ", ".join(_quote(str(folder).rstrip("/") + "/") for folder in (root, ref))
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


#: Statements a query may be: reading only (COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, CREATE ... are refused).
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def check_statement(sql: str) -> None:
    """One read-only statement, or BenchInputError naming what was refused."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise BenchInputError(f"sql: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise BenchInputError(f"sql: expected one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        words = sql.split()
        keyword = words[0].upper()[:20] if words and words[0].isalpha() else kind  # INSTALL is a LOAD statement
        raise BenchInputError(f"sql: {keyword} statements are not allowed: bench results sql runs one SELECT "
                              "over the store's views (trials, epochs, analysis, reference)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


_NAMED_FILE = re.compile(r"""[Ff]ile ['"]([^'"]+\.parquet)['"]""")


def _unreadable_file(exc: BaseException, root: Path, skip: frozenset[str]) -> str | None:
    """The store file a DuckDB error names as not a Parquet file (zero-length, truncated, corrupt), if any."""
    text = str(exc)
    if not any(word in text for word in ("too small to be a Parquet file", "No magic bytes", "corrupt", "Corrupt",
                                         "thrift", "Thrift", "Invalid Parquet")):
        return None
    match = _NAMED_FILE.search(text)
    if not match:
        return None
    path = os.path.realpath(match.group(1))
    inside = path.startswith(str(root).rstrip("/") + "/")
    return path if inside and path not in skip else None


def query(sql: str, results: str | os.PathLike[str] = "results", sweep: str | None = None, retries: int = 5) -> pd.DataFrame:
    """Run one read-only SQL statement over the store; the result as a DataFrame.

    A file that vanishes mid-query (a compaction finished) makes DuckDB fail; the query
    is then run again on a fresh listing. A file that is not a whole Parquet file is set
    aside (one warning naming it) and the query runs again without it.
    """
    import duckdb

    from bench.compact import report_unreadable

    check_statement(sql)
    root = Path(os.fspath(results).removeprefix("file://")).resolve()
    skip: frozenset[str] = frozenset()
    attempt = 0
    while True:
        con = None
        try:
            con = connect(results, sweep, skip)  # creating the views reads the files' footers already
            return con.execute(sql).df()
        except duckdb.Error as exc:
            bad = _unreadable_file(exc, root, skip)
            if bad is not None:
                report_unreadable(bad, _first_line(exc))
                skip |= {bad}
                continue
            if not isinstance(exc, duckdb.IOException):
                raise BenchInputError(f"sql: {_first_line(exc)}") from None
            attempt += 1
            if attempt >= retries:
                raise BenchInputError(f"sql: could not read the store ({_first_line(exc)})") from None
            time.sleep(0.05)
        finally:
            if con is not None:
                con.close()


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
