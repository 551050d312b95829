"""Compaction: one part file per folder, reads unchanged, safe while writers and readers run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.compact import _remove_if_same, compact_folder, compact_sweep, is_part
from bench.errors import BenchInputError
from bench.perf.store import synthetic_row
from bench.store import ResultStore

SWEEP = "sw"


def write(store: ResultStore, indices, **kw) -> None:
    for i in indices:
        row = synthetic_row(SWEEP, i, **kw)
        store.write_trial(row)
        store.write_epochs(row["trial_id"], [{"epoch": e, "test_acc": row["test_acc"]} for e in (1, 2)])


def files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_compaction_merges_files_and_reads_stay_the_same(tmp_path):
    store = ResultStore(tmp_path, SWEEP)
    write(store, range(30))
    before = {t: store.read(t).sort_values(list(store.read(t).columns[:2])).reset_index(drop=True) for t in ("trials", "epochs")}
    results = compact_sweep(tmp_path, SWEEP)
    assert [(r.table, r.merged_files, r.rows) for r in results] == [("trials", 30, 30), ("epochs", 30, 60), ("analysis", 0, 0, )]
    for table in ("trials", "epochs"):
        names = files(tmp_path / SWEEP / table)
        assert len(names) == 1 and is_part(names[0]) and names[0].endswith(".parquet")
        after = store.read(table).sort_values(list(before[table].columns[:2])).reset_index(drop=True)
        pd.testing.assert_frame_equal(after, before[table])
    # plain pandas, the store's contract, reads the compacted folder too
    assert sorted(pd.read_parquet(tmp_path / SWEEP / "trials")["trial_id"]) == sorted(before["trials"]["trial_id"])


def test_a_trial_rewritten_after_compaction_overrides_its_compacted_row(tmp_path):
    store = ResultStore(tmp_path, SWEEP)
    write(store, range(5), test_acc=0.5)
    compact_sweep(tmp_path, SWEEP)
    write(store, [2], test_acc=0.99)  # a retry / --fresh rerun of one trial
    write(store, [7], test_acc=0.7)   # a new trial
    trials = store.read_trials()
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert trials.set_index("trial_id").loc[synthetic_row(SWEEP, 2)["trial_id"], "test_acc"] == 0.99
    epochs = store.read_epochs()
    assert len(epochs) == 12 and set(epochs.loc[epochs["trial_id"] == synthetic_row(SWEEP, 2)["trial_id"], "test_acc"]) == {0.99}
    # a second compaction folds the newer rows into a new part and drops the old one
    compact_sweep(tmp_path, SWEEP)
    assert len(files(tmp_path / SWEEP / "trials")) == 1
    again = store.read_trials().set_index("trial_id")
    assert len(again) == 6 and again.loc[synthetic_row(SWEEP, 2)["trial_id"], "test_acc"] == 0.99


def test_a_file_replaced_while_being_compacted_is_kept(tmp_path):
    folder = tmp_path / "trials"
    folder.mkdir()
    path = folder / "abc.parquet"
    path.write_bytes(b"merged version")
    inode = os.stat(path).st_ino
    temp = folder / ".abc.tmp"
    temp.write_bytes(b"newer version")
    os.replace(temp, path)  # a writer's atomic replace after the compactor read the file
    assert _remove_if_same(path, inode) is False
    assert path.read_bytes() == b"newer version" and files(folder) == ["abc.parquet"]
    assert _remove_if_same(path, os.stat(path).st_ino) is True and files(folder) == []


def test_overlapping_parts_and_files_show_each_trial_once(tmp_path):
    """A reader listing mid-compaction: new part in, old part and merged files not yet removed."""
    store = ResultStore(tmp_path, SWEEP)
    write(store, range(4), test_acc=0.4)
    folder = tmp_path / SWEEP / "trials"
    old_files = {n: (folder / n).read_bytes() for n in files(folder)}
    compact_folder(folder)
    first_part = files(folder)[0]
    first_bytes = (folder / first_part).read_bytes()
    write(store, range(2, 6), test_acc=0.6)
    compact_folder(folder)
    assert first_part not in files(folder)
    # put the older part and the files of trials 0 and 1 back, as if not yet removed
    (folder / first_part).write_bytes(first_bytes)
    for name in [f"{synthetic_row(SWEEP, i)['trial_id']}.parquet" for i in (0, 1)]:
        (folder / name).write_bytes(old_files[name])
    assert len(files(folder)) == 4
    trials = store.read_trials().set_index("trial_id")
    assert len(trials) == 6 and trials.index.is_unique
    acc = {i: trials.loc[synthetic_row(SWEEP, i)["trial_id"], "test_acc"] for i in range(6)}
    # trials 0, 1 from their files; 2, 3 from the newer part (0.6), not the older (0.4); 4, 5 only there
    assert acc == {0: 0.4, 1: 0.4, 2: 0.6, 3: 0.6, 4: 0.6, 5: 0.6}


def test_readers_never_see_a_trial_twice_or_miss_one_while_writers_and_compaction_run(tmp_path):
    store = ResultStore(tmp_path, SWEEP)
    write(store, range(20))
    written: set[str] = {synthetic_row(SWEEP, i)["trial_id"] for i in range(20)}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def writer():
        i = 20
        while not stop.is_set():
            write(ResultStore(tmp_path, SWEEP), [i, i % 20])  # a new trial and a rewrite of an old one
            with lock:
                written.add(synthetic_row(SWEEP, i)["trial_id"])
            i += 1

    def compactor():
        while not stop.is_set():
            compact_folder(tmp_path / SWEEP / "trials")
            compact_folder(tmp_path / SWEEP / "epochs")

    threads = [threading.Thread(target=writer), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    reads = 0
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            with lock:
                expected = set(written)
            trials = ResultStore(tmp_path, SWEEP).read_trials()
            ids = list(trials["trial_id"])
            if len(ids) != len(set(ids)):
                errors.append(f"a trial twice in read {reads}")
            if not expected <= set(ids):
                errors.append(f"read {reads} missed {sorted(expected - set(ids))[:3]}")
            reads += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert reads >= 3
    final = ResultStore(tmp_path, SWEEP)
    assert set(final.read_trials()["trial_id"]) == written and final.read_trials()["trial_id"].is_unique
    assert len(final.read_epochs()) == 2 * len(written)
    assert not [n for n in files(tmp_path / SWEEP / "trials") if n.startswith(".")]  # no temp left behind


def test_cli_compact_and_bad_input(tmp_path, capsys):
    write(ResultStore(tmp_path, SWEEP), range(3))
    assert main(["results", "compact", SWEEP, "--results", str(tmp_path)]) == 0
    assert f"{SWEEP}/trials: 3 files merged into part-" in capsys.readouterr().out
    assert main(["results", "compact", "nope", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no sweep under" in err
    (tmp_path / SWEEP / "trials" / ".compact.lock").write_text("123")  # a dead compaction's lock file: taken over
    assert compact_folder(tmp_path / SWEEP / "trials").rows == 3
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        from bench.compact import _compaction_lock
        from pathlib import Path
        import time
        with _compaction_lock(Path({str(tmp_path / SWEEP / "trials")!r})):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BenchInputError, match=f"another compaction is running \\(pid {holder.pid}\\)"):
            compact_folder(tmp_path / SWEEP / "trials")
    finally:
        holder.kill()
        holder.wait()
    assert compact_folder(tmp_path / SWEEP / "trials").rows == 3  # its owner died: the lock is free again


def test_store_perf_suite_quick_run(monkeypatch, tmp_path):
    """The `store` suite end to end on a small store (its figures are recorded in docs/PERF.md, not asserted)."""
    from bench.perf import list_suites, run_perf
    import json

    monkeypatch.setenv("BENCH_PERF_STORE_TRIALS", "60")
    assert "store" in list_suites()
    out = tmp_path / "perf.json"
    assert run_perf(["store"], quick=True, out=str(out)) == 0
    suite = json.loads(out.read_text())["suites"]["store"]
    names = [r["name"] for r in suite["rows"]]
    assert names[0] == "write 60 trial files (process pool)" and "compact 60 trial files" in names
    assert any(n.startswith("`bench results sql` command") for n in names)
    assert all(r["median"] > 0 and r["unit"] == "s" for r in suite["rows"]) and suite["settings"]["trials"] == 60


def test_a_compaction_killed_between_rename_and_link_hides_no_newer_file(tmp_path):
    """The kill lands after the merged file was taken away and a writer put a newer one back: the
    newer write is only under the hidden `.compacting` name. Readers (table and SQL) see it, and the
    next compaction puts it back."""
    from bench.sql import query

    store = ResultStore(tmp_path, SWEEP)
    write(store, range(3), test_acc=0.5)
    compact_sweep(tmp_path, SWEEP)
    newer = synthetic_row(SWEEP, 1, test_acc=0.9)
    path = store.write_trial(newer)  # a retry after the compaction: overrides the part
    grabbed = Path(path).with_name(f".{Path(path).name}.{'ab' * 16}.compacting")
    os.rename(path, grabbed)  # ... where the killed compaction left it
    assert dict(zip(*store.read_trials()[["trial_id", "test_acc"]].to_dict("list").values()))[newer["trial_id"]] == 0.9
    via_sql = query("SELECT test_acc FROM trials WHERE trial_id = " + repr(newer["trial_id"]), tmp_path)
    assert via_sql["test_acc"].tolist() == [0.9]
    compact_sweep(tmp_path, SWEEP)
    assert not list(Path(path).parent.glob(".*.compacting"))
    trials = store.read_trials().set_index("trial_id")
    assert len(trials) == 3 and trials.loc[newer["trial_id"], "test_acc"] == 0.9


def test_the_compaction_lock_does_not_follow_a_symlink(tmp_path):
    write(ResultStore(tmp_path, SWEEP), range(2))
    target = tmp_path / "elsewhere"
    (tmp_path / SWEEP / "trials" / ".compact.lock").symlink_to(target)
    with pytest.raises(BenchInputError, match="symbolic link"):
        compact_folder(tmp_path / SWEEP / "trials")
    assert not target.exists()
