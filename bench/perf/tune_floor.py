"""Ray Tune alone, with no bench code: the floor of any tool built on a fresh local Ray Tune.

Why: the orchestration suite's overhead is only ours where it exceeds this. The trials
here sleep for the times the suite's real trials took in process, so the ideal is the
same; what is left is Python start, `import ray.tune`, Ray's start, Tune's scheduling of
the trials on reused actors, and Ray's shutdown.

Run as `python -m bench.perf.tune_floor TIMES_JSON STORAGE_DIR SLOTS` (the suite does).
"""

from __future__ import annotations

import json
import os
import sys
import time

# Tune as bench runs it (bench.sweep sets the same): no JSON/CSV/TensorBoard logger per trial.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def sleeping_trial(config: dict) -> None:
    from ray import tune

    time.sleep(config["seconds"])
    tune.report({"slept": config["seconds"]})


def main(times: list[float], storage: str, slots: int) -> list[float]:
    """The sleeps the trials reported (one per trial)."""
    import ray
    from ray import tune

    ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        grid = tune.Tuner(
            tune.with_resources(sleeping_trial, {"cpu": 1}),
            param_space={"seconds": tune.grid_search(times)},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage, verbose=0),
        ).fit()
        return [result.metrics["slept"] for result in grid]
    finally:
        ray.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
