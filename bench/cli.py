"""`bench` command line: argument parsing only; the work happens in the modules it calls.

Bad input (BenchInputError, a bad flag) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from pathlib import Path
from typing import Sequence

from bench.errors import BenchInputError

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchInputError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark vision architectures with Ray Tune sweeps.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    run = sub.add_parser("run", help="run a sweep (resumes: trials with an ok result are skipped)")
    run.add_argument("sweep", help="sweep file (YAML)")
    _results_flag(run)
    run.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<results>/mlflow.db)")
    run.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    _set_flag(run)
    _smoke_flag(run)
    run.add_argument("--dry-run", action="store_true", help="list the trials that would run, run nothing")
    run.add_argument("--fresh", action="store_true", help="rerun every trial, even those with results")

    validate = sub.add_parser("validate", help="parse and expand a sweep file; print the trial count")
    validate.add_argument("sweep")
    _set_flag(validate)
    _smoke_flag(validate)

    submit = sub.add_parser("submit", help="send a sweep to a Ray cluster through the Ray Jobs API")
    submit.add_argument("sweep", help="sweep file (YAML)")
    submit.add_argument("--address", help="the cluster's Jobs API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    submit.add_argument("--results", help="result store as the cluster sees it: a shared folder or s3://, gs:// "
                                          "(default: the cluster's $BENCH_RESULTS)")
    submit.add_argument("--mlflow-uri", help="MLflow tracking server as the cluster sees it (default: the cluster's "
                                             "MLFLOW_TRACKING_URI)")
    submit.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    _set_flag(submit)
    submit.add_argument("--fresh", action="store_true", help="rerun every trial, even those with results")
    submit.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its exit code")
    submit.add_argument("--no-ship-code", dest="ship_code", action="store_false",
                        help="run the cluster image's bench instead of shipping this checkout's bench package")

    k8s = sub.add_parser("k8s", help="Kubernetes (KubeRay) manifests")
    ksub = k8s.add_subparsers(dest="k8s_command", required=True, parser_class=_Parser, metavar="SUBCOMMAND")
    render = ksub.add_parser("render", help="print a RayJob (and a ConfigMap with the sweep file) for a sweep")
    render.add_argument("sweep", help="sweep file (YAML)")
    render.add_argument("--image", required=True, help="the worker image built from k8s/Dockerfile")
    render.add_argument("--gpus", type=int, default=1, help="GPUs per worker pod (default 1; 0 for CPU workers)")
    render.add_argument("--workers", default="0:4", help="MIN:MAX worker pods for the autoscaler (default 0:4)")
    render.add_argument("--worker-cpus", type=int, default=8, help="CPUs per worker pod (default 8)")
    render.add_argument("--worker-memory", default="32Gi", help="memory per worker pod (default 32Gi)")
    render.add_argument("--namespace", default="bench", help="namespace of k8s/ (default bench)")

    trial = sub.add_parser("trial", help="run one trial of a sweep in this process, without Ray (for debugging)")
    trial.add_argument("sweep")
    which = trial.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="the trial's position in the expanded grid")
    which.add_argument("--trial-id", help="the trial's id")
    trial.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    _set_flag(trial)
    _smoke_flag(trial)

    results = sub.add_parser("results", help="query the result store")
    rsub = results.add_subparsers(dest="results_command", required=True, parser_class=_Parser, metavar="SUBCOMMAND")
    ls = rsub.add_parser("ls", help="list the sweeps in the store")
    _results_flag(ls)
    table = rsub.add_parser("table", help="comparison table: mean ± std over seeds")
    table.add_argument("sweep", help="sweep name (or its sweep file)")
    _results_flag(table)
    table.add_argument("--rows", default="model")
    table.add_argument("--cols", default="train_size")
    table.add_argument("--metric", default="test_acc")
    table.add_argument("--where", help="condition on trial columns or config paths: comparisons, and/or/not, "
                                         "in [...], constants, e.g. \"dataset == 'cifar10' and train.lr in [0.1, 0.01]\"")
    table.add_argument("--format", default="md", choices=("md", "csv", "latex", "html", "json"))
    table.add_argument("--phase", choices=("final", "search"), default="final",
                       help="tuned sweeps: the final comparison (default) or the search trials (--metric val_acc)")
    table.add_argument("--vs-reference", action="store_true",
                       help="add the papers' published number (results/reference) and the difference per cell")
    from bench.sql import VIEW_HELP

    sql = rsub.add_parser("sql", help="SQL (DuckDB) over the Parquet store", description=f"DuckDB over the store. {VIEW_HELP}.")
    sql.add_argument("query", help="one SQL statement, e.g. \"SELECT model, avg(test_acc) FROM trials GROUP BY model\"")
    _results_flag(sql)
    sql.add_argument("--sweep", help="views over this sweep only (default: every sweep, see the sweep column)")
    sql.add_argument("--format", default="md", choices=("md", "csv", "json", "html"))
    compact = rsub.add_parser("compact", help="merge a sweep's per-trial files into one part file (safe while it runs)")
    compact.add_argument("sweep", help="sweep name")
    _results_flag(compact)
    best = rsub.add_parser("best", help="tuned sweeps: each cell's chosen values, their search trial and budget")
    best.add_argument("sweep", help="sweep name (or its sweep file)")
    _results_flag(best)
    sync = rsub.add_parser("sync-mlflow", help="give every stored trial one MLflow run (backfill after an outage)")
    sync.add_argument("sweep", help="sweep name")
    _results_flag(sync)
    sync.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the store's own)")
    plot = rsub.add_parser("plot", help="figures (PNG/SVG): accuracy vs training-set size, one per analysis")
    plot.add_argument("sweep", help="sweep name (or its sweep file)")
    _results_flag(plot)
    plot.add_argument("--out", help="output folder (default <results>/<sweep>/figures)")
    plot.add_argument("--format", dest="formats", action="append", choices=("png", "svg"),
                      help="figure format (repeatable; default: png and svg)")

    report = sub.add_parser("report", help="one HTML page (+ Markdown): tables, figures, sweep, environment, paper numbers")
    report.add_argument("sweep", help="sweep name (or its sweep file)")
    _results_flag(report)
    report.add_argument("--out", help="output folder (default <results>/<sweep>/report)")

    models = sub.add_parser("models", help="the model registry with params and FLOPs")
    models.add_argument("--img-size", type=int, default=32)
    models.add_argument("--num-classes", type=int, default=100)
    models.add_argument("--pattern", default="*", help="shell pattern on model names")
    perf = sub.add_parser("perf", help="the performance suite (figures recorded in docs/PERF.md)")
    perf.add_argument("--suite", action="append", help="run only this suite (repeatable; default: all)")
    perf.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run, not figures to record")
    perf.add_argument("--out", help="also write the measured figures as JSON to this file")
    return parser


def _results_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="result store folder (default ./results)")


def _set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep field, e.g. --set train.epochs=3 (repeatable)")


def _smoke_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true",
                   help="the sweep file's scaled-down variant: apply its 'smoke:' section (before any --set); "
                        "results go to <name>-smoke")


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from bench.spec import load_sweep

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise BenchInputError("--max-concurrent: expected a whole number >= 1")
    sweep = load_sweep(args.sweep, args.overrides, smoke=args.smoke)
    if args.dry_run:
        return _dry_run(sweep, args)

    from bench.query import comparison_table
    from bench.store import ResultStore
    from bench.sweep import run_sweep

    outcome = run_sweep(sweep, args.results, mlflow_uri=args.mlflow_uri, address=args.address,
                        max_concurrent=args.max_concurrent, fresh=args.fresh)
    trials = ResultStore(args.results, sweep.name).read_trials()
    if sweep.tune is not None:  # the comparison is the final phase: each cell's best values, retrained and tested
        cells = {c.id for c in sweep.cells}
        trials = trials[(trials["phase"] == "final") & trials["tune_cell"].isin(cells)] if "phase" in trials else trials.iloc[0:0]
    else:
        ids = {t["trial_id"] for t in sweep.trials}
        trials = trials[trials["trial_id"].isin(ids)]
    for stage in sweep.stages:  # one table per stage; a transfer stage compares its modes
        if len(sweep.stages) > 1:
            print(f"\nstage {stage}" + (f" (from {sweep.sources[stage]})" if stage in sweep.sources else ""))
        rows = "transfer" if stage in sweep.sources else "model"
        print()
        print(comparison_table(trials[trials["stage"] == stage], rows=rows))
    if outcome.diverged:
        print(f"\n{outcome.diverged} of {outcome.total} trials diverged (loss not finite); status 'diverged', "
              "with the epoch in 'diverged_epoch'", file=sys.stderr)
    if outcome.failed:
        print(f"\n{outcome.failed} of {outcome.total} trials failed; see the 'error' column "
              f"(bench results table {sweep.name} --metric ... or pandas)", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return EXIT_OK


def _dry_run(sweep, args: argparse.Namespace) -> int:
    from bench.store import ResultStore
    from bench.sweep import pending_trials

    pending = {t["trial_id"] for t in pending_trials(sweep, ResultStore(args.results, sweep.name), args.fresh)}
    for t in sweep.trials:
        state = "run " if t["trial_id"] in pending else "done"
        stage = f" stage={t['stage']} transfer={t['transfer']} source={t['source']}" if t["source"] else ""
        print(f"{state} {t['trial_id']} {t['model']} {t['dataset']['name']} train_size={t['train_size']} "
              f"seed={t['seed']}{stage}")
    print(f"{sweep.name}: {len(sweep.trials)} trials, {len(pending)} to run")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.spec import load_sweep

    sweep = load_sweep(args.sweep, args.overrides, smoke=args.smoke)
    models = sorted({t["model"] for t in sweep.trials})
    search = (f" after {len(sweep.cells)} searches of {sweep.tune.num_samples} trials ({sweep.tune.algorithm}"
              f"{', ' + sweep.tune.scheduler.name if sweep.tune.scheduler else ''})" if sweep.tune is not None else "")
    print(f"{sweep.name}: {len(sweep.trials)} trials ({', '.join(models)}){search}")
    return EXIT_OK


def cmd_trial(args: argparse.Namespace) -> int:
    from bench.spec import load_sweep
    from bench.train import run_trial

    sweep = load_sweep(args.sweep, args.overrides, smoke=args.smoke)
    if args.trial_id:
        matches = [t for t in sweep.trials if t["trial_id"] == args.trial_id]
        if not matches:
            raise BenchInputError(f"--trial-id {args.trial_id}: not a trial of {args.sweep}")
        config = matches[0]
    else:
        if not 0 <= args.index < len(sweep.trials):
            raise BenchInputError(f"--index {args.index}: {args.sweep} has trials 0..{len(sweep.trials) - 1}")
        config = sweep.trials[args.index]
    print(json.dumps(config, indent=2), file=sys.stderr)
    result = run_trial(config, device=args.device,
                       on_epoch=lambda row, _: print(json.dumps(row), file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    from bench.query import comparison_table
    from bench.store import ResultStore, list_sweeps

    if args.results_command == "sql":
        from bench.sql import query, render

        print(render(query(args.query, args.results, args.sweep), args.format))
        return EXIT_OK
    if args.results_command == "compact":
        from bench.compact import compact_sweep

        for r in compact_sweep(args.results, args.sweep):
            kept = f", {r.kept_newer} newer files kept" if r.kept_newer else ""
            print(f"{args.sweep}/{r.table}: {r.merged_files} files merged into {r.part or '(nothing to do)'}, {r.rows} rows{kept}")
        return EXIT_OK
    if args.results_command == "best":
        from bench.query import best_configs

        name, _ = _sweep_selection(args.sweep)
        chosen = best_configs(ResultStore(args.results, name).read_trials() if name in list_sweeps(args.results)
                              else __import__("pandas").DataFrame())
        if chosen.empty:
            raise BenchInputError(f"{args.sweep}: no final trials of a tuned sweep under {args.results}/{name}")
        print(_markdown(chosen))
        return EXIT_OK
    if args.results_command == "sync-mlflow":
        return _sync_mlflow(args)
    if args.results_command == "plot":
        from bench.plots import plot_sweep

        name, _ = _sweep_selection(args.sweep)
        out = args.out or str(Path(args.results) / name / "figures")
        for path in plot_sweep(args.results, name, out, formats=tuple(args.formats or ("png", "svg"))):
            print(f"wrote {path}")
        return EXIT_OK
    if args.results_command == "ls":
        names = list_sweeps(args.results)
        if not names:
            print(f"no sweeps under {args.results}")
        for name in names:
            print(_sweep_summary(name, ResultStore(args.results, name).read_trials()))
        return EXIT_OK
    name, trial_ids = _sweep_selection(args.sweep)
    trials = ResultStore(args.results, name).read_trials()
    if trial_ids is not None and not ("phase" in trials and trials["phase"].notna().any()):
        trials = trials[trials["trial_id"].isin(trial_ids)]  # a tuned sweep's ids come from its search
    from bench.query import select_phase

    trials = select_phase(trials, args.phase)
    if trials.empty:
        raise BenchInputError(f"{args.sweep}: no results under {args.results}/{name} (bench results ls lists the sweeps)")
    print(comparison_table(trials, args.rows, args.cols, args.metric, args.where, args.format,
                           vs_reference=args.vs_reference, sweep=name))
    return EXIT_OK


def _sweep_summary(name: str, trials) -> str:
    """`name: 3 ok, 1 failed, 2 diverged, last finished ...`: each status of each trial's latest row."""
    import pandas as pd

    latest = trials.sort_values("finished_at").drop_duplicates("trial_id", keep="last")
    counts = latest["status"].value_counts() if len(latest) else pd.Series(dtype=int)
    shown = ["ok", "failed"] + [s for s in ("diverged", "stopped") if counts.get(s, 0)]
    shown += sorted(str(s) for s in counts.index if s not in shown)  # anything else a store holds
    parts = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in shown)
    last = latest["finished_at"].max() if len(latest) else pd.NaT
    when = "no trial finished yet" if pd.isna(last) else f"last finished {last:%Y-%m-%d %H:%M} UTC"
    return f"{name}: {parts}, {when}"


def _markdown(frame) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _sync_mlflow(args: argparse.Namespace) -> int:
    from bench.mlflow_sync import sync_sweep
    from bench.store import list_sweeps
    from bench.tracking import check_reachable, resolve_tracking

    if args.sweep not in list_sweeps(args.results):
        raise BenchInputError(f"{args.sweep}: no results under {args.results}/{args.sweep} (bench results ls lists the sweeps)")
    uri, artifact_location = resolve_tracking(args.results, args.mlflow_uri)
    check_reachable(uri)
    try:
        report = sync_sweep(args.results, args.sweep, uri, artifact_location)
    except RuntimeError as exc:
        print(f"bench: {exc}; run it again when the server answers (synced runs are not repeated)", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    print(f"{args.sweep}: {report.created} runs created, {report.completed} completed, "
          f"{report.present} already in MLflow ({uri})")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.store import check_name, list_sweeps

    name, trial_ids = _sweep_selection(args.sweep)
    try:  # before anything is created: `bench report ../x` must not make ../x/report
        check_name("sweep", name)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None
    if name not in list_sweeps(args.results):
        raise BenchInputError(f"{name}: no sweep of that name under {args.results} (bench results ls lists them)")
    html, md = write_report(name, args.results, args.out, sweep_file=args.sweep if trial_ids is not None else None,
                            trial_ids=trial_ids)
    print(f"wrote {html}\nwrote {md}")
    return EXIT_OK


def _sweep_selection(sweep: str) -> tuple[str, set[str] | None]:
    """A sweep by name (all its stored trials) or by its file (only the trials the file defines)."""
    if sweep.endswith((".yaml", ".yml")):
        from bench.spec import load_sweep

        loaded = load_sweep(sweep)
        return loaded.name, {t["trial_id"] for t in loaded.trials}
    return sweep, None


def cmd_models(args: argparse.Namespace) -> int:
    from bench.models.summary import describe_models, format_models_table

    rows = describe_models(args.pattern, args.img_size, args.num_classes)
    if not rows:
        raise BenchInputError(f"--pattern {args.pattern!r}: no model matches")
    print(format_models_table(rows, args.img_size, args.num_classes))
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from bench.submit import submit

    return submit(args.sweep, args.address, results=args.results, mlflow_uri=args.mlflow_uri,
                  max_concurrent=args.max_concurrent, overrides=args.overrides, fresh=args.fresh,
                  wait=args.wait, ship_code=args.ship_code)


def cmd_k8s(args: argparse.Namespace) -> int:
    from bench.k8s import parse_workers, render_rayjob

    print(render_rayjob(args.sweep, args.image, gpus=args.gpus, workers=parse_workers(args.workers),
                        namespace=args.namespace, worker_cpus=args.worker_cpus, worker_memory=args.worker_memory),
          end="")
    return EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import run_perf

    return run_perf(suites=args.suite, quick=args.quick, out=args.out)


COMMANDS = {
    "run": cmd_run, "validate": cmd_validate, "trial": cmd_trial, "results": cmd_results,
    "models": cmd_models, "perf": cmd_perf, "report": cmd_report, "submit": cmd_submit, "k8s": cmd_k8s,
}


def _check_results_folder(results: str | None) -> None:
    """`--results` is a folder (it may not exist yet) or a bucket URI; an existing file is bad input."""
    if not results or ("://" in results and not results.startswith("file://")):
        return
    path = Path(results.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise BenchInputError(f"--results {results}: is a file; expected the result store's folder "
                              "(or a bucket URI: s3://BUCKET/PATH, gs://BUCKET/PATH)")


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`| head -1`); a BrokenPipeError
    from anything else (a socket) is a real error and is not silenced."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is not a file (captured)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from bench import plugins

        plugins.load()  # users' own models and datasets (BENCH_PLUGINS), before any sweep file is read
        _check_results_folder(getattr(args, "results", None))
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # The reader took what it wanted: stop quietly. Point stdout at /dev/null so the
        # interpreter's last flush of what is still buffered cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except BenchInputError as exc:
        from bench.storage import redact

        message = redact(" ".join(str(exc).split()))  # one line, whatever the message held; no URI credentials
        print(f"bench: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: a sweep says what it saved (bench.sweep.SweepInterrupted)
        print(f"bench: {exc}" if str(exc) else "bench: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `bench` command: `main()`, then an exit that skips the interpreter's teardown.

    Why: with torch, Ray Tune and MLflow loaded, tearing the interpreter down (module and
    C++ destructors) takes 1-3 s after every result is written, at the end of every command.
    Nothing is skipped that could hold a result: other threads are joined, atexit handlers
    run and the streams are flushed first, as a normal exit would. Tests call `main()`.
    """
    code = main()
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit
    import logging
    import threading

    for thread in threading.enumerate():  # what the interpreter's own shutdown waits for first
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # Ray's and MLflow's handlers among them
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader is gone or the stream closed: nothing left to lose
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
