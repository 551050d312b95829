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

A compaction killed between taking a file away and putting it back leaves it under a hidden
`.<file>.<id>.compacting` name: readers read such a file in place of the missing one, and the
next compaction puts it back. Files that cannot be read (zero-length, truncated, corrupt) are
set aside with one warning each: not read, not merged, not removed; their trial counts as not
run, and its next run replaces the file.

Compaction needs a local store (it relies on POSIX renames and inodes); one compaction per
folder at a time (an advisory lock on `.compact.lock`, released by the kernel when its holder
dies, so a killed compaction never blocks the next).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
        listed = [f.base_name for f in fs.get_file_info(pafs.FileSelector(folder)) if f.type == pafs.FileType.File]
        names = sorted(n for n in listed if _visible(n))
        names += sorted(orphaned_grabs(listed))  # a killed compaction's: they read as the trial files they were
        try:
            tables = [(n, t) for n in names if (t := _read_readable(fs, f"{folder}/{n}")) is not None]
        except FileNotFoundError:
            time.sleep(0.01)  # a compaction removed a file it had merged: list again
            continue
        return select_latest(tables) if tables else empty.empty_table()
    raise RuntimeError(f"{folder}: files kept vanishing while reading (is a compaction looping?)")


#: Unreadable files already reported by this process: each is named once, however often it is read.
_reported: set[str] = set()


def is_damaged(exc: BaseException) -> bool:
    """Whether a read failed because the file is not a whole Parquet file (zero-length, truncated,
    corrupt), rather than because it vanished or the storage could not be reached."""
    if isinstance(exc, pa.ArrowInvalid):
        return True
    text = str(exc).lower()
    return (isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))
            and any(word in text for word in ("thrift", "parquet", "corrupt", "magic bytes")))


def report_unreadable(path: str, reason: BaseException | str) -> None:
    """One warning per unreadable file and process: the file is set aside (left where it is, not
    read), so the trial it held counts as pending and its next run replaces the file."""
    if path in _reported:
        return
    _reported.add(path)
    detail = str(reason).strip().splitlines()[0][:200] if str(reason).strip() else type(reason).__name__
    print(f"bench: warning: {path}: unreadable Parquet file set aside ({detail}); its trial counts as not run",
          file=sys.stderr, flush=True)


def _read_readable(fs: pafs.FileSystem, path: str) -> pa.Table | None:
    """One file's rows, or None (with one warning) if it is damaged; a vanished file raises FileNotFoundError."""
    try:
        return _read_file(fs, path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        if not is_damaged(exc):
            raise
        report_unreadable(path, exc)
        return None


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
    with _compaction_lock(folder):
        _recover_grabbed(folder)  # what a compaction killed mid-way left hidden
        return _compact_locked(folder, table)


@contextlib.contextmanager
def _compaction_lock(folder: Path) -> Iterator[None]:
    """One compaction per folder: an advisory `flock` on `.compact.lock`, which the kernel drops when
    its holder dies, so a killed compaction never blocks the next (a lock file left behind is reused).
    The lock file is opened without following symlinks."""
    import fcntl

    lock = folder / ".compact.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BenchInputError(f"{lock}: cannot open the compaction lock ({exc.strerror}; a symbolic link is "
                                  "refused)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BenchInputError(f"{folder}: another compaction is running (pid {holder}); wait for it") from None
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed it after we opened it: lock the file that is there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: whoever opened this file re-checks and retries
        os.close(fd)  # releases the lock


def grabbed_name(name: str) -> re.Match[str] | None:
    """`.<file>.<hex>.compacting`: a per-trial file a compaction took away to check it (see _remove_if_same)."""
    return _GRABBED.fullmatch(name)


_GRABBED = re.compile(r"\.(?P<file>[^/]+\.parquet)\.[0-9a-f]{32}\.compacting")


def orphaned_grabs(names: list[str]) -> dict[str, str]:
    """{grabbed file: the file it was}, for grabbed files whose file is absent: a compaction was
    killed between taking the file away and putting it back (or removing it). Readers read them in
    its place (they hold its rows, or newer ones), so nothing written is ever hidden."""
    present = set(names)
    found = {}
    for name in names:
        match = grabbed_name(name)
        if match and match["file"] not in present and match["file"] not in found.values():
            found[name] = match["file"]
    return found


def _recover_grabbed(folder: Path) -> None:
    """Put back what a killed compaction took away: a grabbed file returns under its name unless a
    newer file took that name meanwhile (then the grabbed one is stale and goes)."""
    for entry in os.scandir(folder):
        match = grabbed_name(entry.name)
        if not match:
            continue
        try:
            os.link(entry.path, folder / match["file"])
        except FileExistsError:
            pass
        Path(entry.path).unlink(missing_ok=True)


def _compact_locked(folder: Path, table: str) -> CompactionResult:
    entries = [e for e in os.scandir(folder) if e.is_file() and _visible(e.name)]
    if len(entries) <= 1 and all(is_part(e.name) for e in entries):
        return CompactionResult(table, 0, sum(_rows_of(e.path) for e in entries), None, 0)
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
        except (pa.ArrowException, OSError) as exc:
            if not is_damaged(exc):
                raise
            report_unreadable(e.path, exc)  # left in place, not merged: a rerun of its trial replaces it
            continue
        merged.append((e.name, inode))
    if not tables:
        return CompactionResult(table, 0, 0, None, 0)
    data = select_latest(tables)
    name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    temp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    with open(temp, "wb") as handle:
        pq.write_table(data, handle, row_group_size=64 * 1024)
        handle.flush()
        os.fsync(handle.fileno())  # whole on disk before it replaces the files it merges
    os.replace(temp, folder / name)  # from here on the part holds every merged row
    kept = 0
    for file_name, inode in merged:
        kept += not _remove_if_same(folder / file_name, inode)
    return CompactionResult(table, len(merged), data.num_rows, name, kept)


def _rows_of(path: str) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        if not is_damaged(exc):
            raise
        report_unreadable(path, exc)
        return 0


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
    from bench.store import check_name

    try:  # a name, not a path: `../x` must not compact a folder outside the store
        check_name("sweep", sweep)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None
    base = Path(root_s.removeprefix("file://")) / sweep
    if not (base / "trials").is_dir():
        raise BenchInputError(f"{sweep}: no sweep under {root_s} (bench results ls lists the sweeps)")
    return [compact_folder(base / t) for t in tables]
