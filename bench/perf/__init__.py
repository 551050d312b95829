"""`bench perf`: the performance suites, run side by side, reported as medians of repeats.

Suites register themselves (`bench.perf.registry.register_suite`); `run_perf` runs the
chosen ones, prints a table per suite and can write every figure, with the machine it
came from, as JSON. The figures we quote are recorded in docs/PERF.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.perf import data as _data  # noqa: F401  (registers the `data` suite)
from bench.perf import store as _store  # noqa: F401  (registers the `store` suite)
from bench.perf import hessian as _hessian  # noqa: F401  (registers the `hessian` suite)
from bench.perf import asha as _asha  # noqa: F401  (registers the `asha` suite)
from bench.perf import orchestration as _orchestration  # noqa: F401  (registers the `orchestration` suite)
from bench.perf import stacking as _stacking  # noqa: F401  (registers the `stacking` suite)
from bench.perf import models as _models  # noqa: F401  (registers the `models` suite)
from bench.perf.registry import Suite, get_suite, list_suites, register_suite
from bench.perf.timing import machine_info

__all__ = ["Suite", "format_result", "list_suites", "register_suite", "run_perf"]


def format_result(result: dict[str, Any]) -> str:
    """A suite's figures as a fixed-width table, then its ratios."""
    rows = result.get("rows", [])
    width = max([len(r["name"]) for r in rows] + [6])
    lines = [f"{'figure':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}  n"]
    for r in rows:
        lo, hi = min(r["repeats"]), max(r["repeats"])
        unit = r.get("unit", "")
        spec = ",.0f" if r["median"] >= 100 else ".3f"  # img/s counts; seconds with their decimals
        lines.append(f"{r['name']:<{width}}  {r['median']:>12{spec}}  {lo:>12{spec}}  {hi:>12{spec}}  {len(r['repeats'])}  {unit}")
    for name, value in result.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value:.1f}x")
    return "\n".join(lines)


def run_perf(suites: list[str] | None, quick: bool, out: str | None) -> int:
    """Run the named suites (all when None); print the figures; write them as JSON to `out` if given."""
    chosen = [get_suite(name) for name in (suites or list_suites())]  # unknown names fail before any work
    argv = " ".join(f"--suite {s.name}" for s in chosen) if suites else ""
    report: dict[str, Any] = {
        "command": " ".join(p for p in ("bench perf", argv, "--quick" if quick else "") if p),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "machine": machine_info(),
        "suites": {},
    }
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"GPU: {m['gpu'] or 'none'}", flush=True)
    for suite in chosen:
        print(f"\n== {suite.name}: {suite.description}" + (" [quick: not figures to record]" if quick else ""), flush=True)
        started = time.perf_counter()
        result = suite.run(quick)
        result["wall_s"] = time.perf_counter() - started
        report["suites"][suite.name] = result
        print(format_result(result), flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}", file=sys.stderr)
    return 0
