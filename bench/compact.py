"""Compaction of a sweep's one-file-per-trial folders into one part file, safe while writers run.

Why: a sweep writes one Parquet file per trial (atomic, simple, resumable), but a store
of 100,000 files takes minutes to open one by one. `compact` merges a folder's files
into a single `part-<time>-<id>.parquet`, then removes the files it merged.

What a reader sees (`read_folder`, used by `ResultStore.read`; `bench.sql` does the same
in SQL): every row of the folder, each trial from exactly one source, chosen by
precedence: a per-trial file `<trial_id>.parquet` beats any part (it is the newer
write: a retry or `--fresh` after compaction), and a newer part beats an older one
(part names sort by creation time). So a reader that lists the folder while a
compaction is half done (new part renamed in, merged files not yet removed) sees no
trial twice; a reader whose listed file vanished under it (removed by a compaction
that finished meanwhile) lists again, so it misses none.

The compactor never loses a newer write: each merged file is taken away by an atomic
rename and removed only if it is the very file (same inode) that was merged; if a
writer replaced it meanwhile, the newer file is put back (or, if the writer wrote yet
again, left to that newer file). Part files are visible to plain
`pandas.read_parquet(folder)` (that contract holds); a trial rewritten after a
compaction then shows twice there until the next compaction, never through bench.

Compaction needs a local store (it relies on POSIX renames and inodes); one
compaction per folder at a time (a `.compact.lock` file).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bench.errors import BenchInputError

PART_PREFIX = "part-"
#: Reads retried this often when a listed file vanishes (a compaction finished meanwhile).
READ_RETRIES = 20


def is_part(name: str) -> bool:
    """Whether a file name is a compacted part (trial ids are hex hashes, never `part-...`)."""
    return name.startswith(PART_PREFIX)


def _visible(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _precedence(name: str) -> str:
    """Sort key of a source: parts by creation (their names sort by time), trial files above all."""
    return name if is_part(name) else "~"  # '~' sorts after every 'part-...'


def select_latest(tables: list[tuple[str, pa.Table]]) -> pa.Table:
    """Union of the tables, each trial's rows taken from its highest-precedence source only."""
    if not tables:
        raise ValueError("no tables")
    ranked = sorted(tables, key=lambda nt: _precedence(nt[0]))
    tagged = [t.append_column("__rank", pa.array([i] * t.num_rows, pa.int32())) for i, (_, t) in enumerate(ranked)]
    # One chunk per column: 100,000 one-row chunks make every later step (join, write) crawl.
    data = pa.concat_tables(tagged, promote_options="permissive").combine_chunks()
    if len(ranked) > 1 and any(is_part(n) for n, _ in ranked):
        best = data.group_by("trial_id").aggregate([("__rank", "max")])
        joined = data.join(best, "trial_id")
        data = joined.filter(pc.equal(joined["__rank"], joined["__rank_max"])).drop_columns(["__rank_max"])
    return data.drop_columns(["__rank"])


def read_folder(fs: pafs.FileSystem, folder: str, empty: pa.Schema) -> pa.Table:
    """Every row of one table folder (parts and per-trial files), each trial once; see the module doc."""
    for _ in range(READ_RETRIES):
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            return empty.empty_table()
        names = sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(folder))
                       if f.type == pafs.FileType.File and _visible(f.base_name))
        if not names:
            return empty.empty_table()
        try:
            tables = [(n, _read_file(fs, f"{folder}/{n}")) for n in names]
        except FileNotFoundError:
            time.sleep(0.01)  # a compaction removed a file it had merged: list again
            continue
        return select_latest(tables)
    raise RuntimeError(f"{folder}: files kept vanishing while reading (is a compaction looping?)")


def _read_file(fs: pafs.FileSystem, path: str) -> pa.Table:
    """One Parquet file; `ParquetFile.read` costs a third of `pq.read_table` on a one-row file."""
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read()


@dataclass
class CompactionResult:
    table: str
    merged_files: int
    rows: int
    part: str | None
    kept_newer: int  # merged files a writer replaced meanwhile: left in place, they override the part


def compact_folder(folder: str | os.PathLike[str]) -> CompactionResult:
    """Merge a table folder's parts and per-trial files into one new part; remove what was merged."""
    folder = Path(folder)
    table = folder.name
    if not folder.is_dir():
        return CompactionResult(table, 0, 0, None, 0)
    lock = folder / ".compact.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise BenchInputError(f"{folder}: another compaction is running (remove {lock} if it is stale)") from None
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return _compact_locked(folder, table)
    finally:
        lock.unlink(missing_ok=True)


def _compact_locked(folder: Path, table: str) -> CompactionResult:
    entries = [e for e in os.scandir(folder) if e.is_file() and _visible(e.name)]
    if len(entries) <= 1 and all(is_part(e.name) for e in entries):
        return CompactionResult(table, 0, sum(pq.ParquetFile(e.path).metadata.num_rows for e in entries), None, 0)
    # Read each file through an open descriptor and remember its inode: that is what was merged.
    merged: list[tuple[str, int]] = []
    tables: list[tuple[str, pa.Table]] = []
    for e in sorted(entries, key=lambda e: e.name):
        try:
            with open(e.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                tables.append((e.name, pq.ParquetFile(f).read()))
        except FileNotFoundError:
            continue  # nothing else removes files while we hold the lock, but be safe
        merged.append((e.name, inode))
    if not tables:
        return CompactionResult(table, 0, 0, None, 0)
    data = select_latest(tables)
    name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    temp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(data, temp, row_group_size=64 * 1024)
    os.replace(temp, folder / name)  # from here on the part holds every merged row
    kept = 0
    for file_name, inode in merged:
        kept += not _remove_if_same(folder / file_name, inode)
    return CompactionResult(table, len(merged), data.num_rows, name, kept)


def _remove_if_same(path: Path, inode: int) -> bool:
    """Remove `path` if it is still the file (inode) that was merged; True if removed.

    The file is first taken away by an atomic rename, so a writer replacing it at the
    same moment either lands before (we get its file, see another inode and put it back)
    or after (its file stays; ours is removed).
    """
    grabbed = path.with_name(f".{path.name}.{uuid.uuid4().hex}.compacting")
    try:
        os.rename(path, grabbed)
    except FileNotFoundError:
        return True
    if os.stat(grabbed).st_ino == inode:
        grabbed.unlink()
        return True
    try:
        os.link(grabbed, path)  # put the newer file back, unless a yet newer one is there already
    except FileExistsError:
        pass
    grabbed.unlink()
    return False


def compact_sweep(root: str | os.PathLike[str], sweep: str, tables: tuple[str, ...] = ("trials", "epochs", "analysis")) -> list[CompactionResult]:
    """Compact every table folder of one sweep (a local store)."""
    root_s = os.fspath(root)
    if "://" in root_s and not root_s.startswith("file://"):
        raise BenchInputError(f"--results {root_s}: compaction needs a local result store")
    base = Path(root_s.removeprefix("file://")) / sweep
    if not (base / "trials").is_dir():
        raise BenchInputError(f"{sweep}: no sweep under {root_s} (bench results ls lists the sweeps)")
    return [compact_folder(base / t) for t in tables]
