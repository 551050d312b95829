"""Tuned comparisons (`tune:` in a sweep file): every cell gets the same search, then its best
configuration is retrained with the sweep's seeds and tested.

A comparison is only as fair as the tuning each side got. The grid's trials are grouped
into cells by the `per` keys (e.g. model x train_size; `seed` is never one: the final
phase runs every seed). Each cell's search trials train on the cell's training subset
minus a validation split and report `val_acc`/`val_loss` per epoch, never test metrics;
the search metric picks the best, whose values are then applied to every trial of the
cell (its seeds, and grid keys outside `per`): the `final` phase, tested as usual.

Resume: `random` samples are drawn up front from a seed of the sweep and cell, so every
search trial has a stable id and a re-run skips or resumes it like a grid trial. An
`optuna` search is rebuilt from the store: finished search trials are given to TPE as
evaluated points, and only the rest of the budget is sampled. No Ray here: bench.sweep
runs what this module plans.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.errors import BenchInputError, suggestion

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
#: What a trial reports every epoch that a search may select on, and its direction.
SEARCH_METRICS = {"val_acc": "max", "val_loss": "min", "train_acc": "max", "train_loss": "min"}
SEARCHABLE_ROOTS = ("train", "model_args")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerSpec(_Strict):
    """ASHA: stop a trial at a rung (grace_period x reduction_factor^k epochs) unless it is in the top 1/rf."""

    name: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class TuneSpec(_Strict):
    space: dict[str, dict[str, Any]]
    algorithm: Literal["random", "optuna"] = "random"
    num_samples: int = Field(8, ge=1)
    scheduler: SchedulerSpec | None = None
    per: list[str] | None = None  # default: every grid key but seed
    metric: str = "val_acc"
    mode: Literal["max", "min"] | None = None  # default: the metric's natural direction
    #: The validation split carved from the training data: a fraction (<= 1) or an image count.
    val_size: float = Field(0.1, gt=0)
    seed: int = 0  # of the random samples and of TPE

    @field_validator("space")
    @classmethod
    def _space_not_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("an empty search space: give at least one key, e.g. {train.lr: {loguniform: [1e-4, 1e-2]}}")
        return v


@dataclass
class Cell:
    """One independent search: its id, the values of the `per` keys, the trial it searches
    around, and the grid trials its best configuration is applied to."""

    id: str
    label: dict[str, Any]
    template: dict[str, Any]
    members: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------- parsing


def parse_tune(raw: Any, grid: dict[str, list[Any]], template: dict[str, Any], source: str) -> TuneSpec:
    """Validate a `tune:` section against the sweep's grid and a resolved trial of it."""
    from bench.spec import _describe

    if not isinstance(raw, dict):
        raise BenchInputError(f"{source}: tune: expected a mapping with 'space', 'num_samples', ...")
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as exc:
        raise BenchInputError(f"{source}: {_describe(exc, prefix='tune')}") from None
    if spec.metric not in SEARCH_METRICS:
        raise BenchInputError(
            f"{source}: tune.metric: {spec.metric!r} is not reported by trials during a search "
            f"(one of: {', '.join(SEARCH_METRICS)}; test metrics are never used for selection)")
    if spec.per is not None:
        for key in spec.per:
            if key not in grid:
                raise BenchInputError(f"{source}: tune.per: {key!r} is not a grid key{suggestion(key, list(grid))}")
            if key == "seed":
                raise BenchInputError(f"{source}: tune.per: 'seed' cannot be a cell: every seed of a cell gets "
                                      "the cell's best configuration in the final phase")
    for key, dist in spec.space.items():
        _check_distribution(key, dist, template, grid, source)
    return spec


def _check_distribution(key: str, dist: Any, template: dict[str, Any], grid: dict[str, list[Any]], source: str) -> None:
    where = f"{source}: tune.space.{key}"
    if key.split(".")[0] not in SEARCHABLE_ROOTS or "." not in key:
        raise BenchInputError(f"{where}: only train.* and model_args.* fields can be searched")
    if key in grid:
        raise BenchInputError(f"{where}: is also a grid key; a field is either swept or searched")
    if not isinstance(dist, dict) or len(dist) != 1:
        raise BenchInputError(f"{where}: expected one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}")
    (name, args), = dist.items()
    if name not in DISTRIBUTIONS:
        raise BenchInputError(f"{where}: unknown distribution {name!r}{suggestion(str(name), list(DISTRIBUTIONS))}")
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise BenchInputError(f"{where}: choice: expected a non-empty list of values")
        candidates = list(args)
    else:
        if (not isinstance(args, list) or len(args) != 2
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
            raise BenchInputError(f"{where}: {name}: expected [low, high]")
        low, high = args
        if not low < high:
            raise BenchInputError(f"{where}: {name}: bounds reversed or equal (low {low} must be < high {high})")
        if name == "loguniform" and low <= 0:
            raise BenchInputError(f"{where}: loguniform: low must be > 0, got {low}")
        if name == "randint" and not all(isinstance(a, int) for a in args):
            raise BenchInputError(f"{where}: randint: expected whole numbers [low, high)")
        candidates = [low, high - 1 if name == "randint" else high]
    for value in candidates:  # every value the search may try is a valid trial
        try:
            apply_values(template, {key: value})
        except BenchInputError as exc:
            raise BenchInputError(f"{where}: {value!r} is not a valid value ({exc})") from None


# ------------------------------------------------------------------------- planning


def plan_cells(trials: list[dict[str, Any]], axes: list[dict[str, Any]], per: list[str]) -> list[Cell]:
    """Group the grid's trials by their values of the `per` keys; the first trial of a cell (in
    grid order) is the one its search runs around."""
    cells: dict[str, Cell] = {}
    for trial, values in zip(trials, axes):
        label = {k: values[k] for k in per}
        cid = hashlib.sha256(json.dumps(label, sort_keys=True, default=str).encode()).hexdigest()[:8]
        if cid not in cells:
            cells[cid] = Cell(cid, label, trial)
        cells[cid].members.append(trial)
    return list(cells.values())


def random_samples(spec: TuneSpec, sweep: str, cell: Cell) -> list[dict[str, Any]]:
    """The cell's `num_samples` random configurations: the same on every run of the sweep, and the
    same for a cell of another sweep with the same space and seed (an ASHA search and a full-budget
    one compare on the same samples)."""
    space = json.dumps(spec.space, sort_keys=True)
    seed = int(hashlib.sha256(f"{cell.id}/{space}/{spec.seed}".encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    return [{key: _draw(dist, rng) for key, dist in spec.space.items()} for _ in range(spec.num_samples)]


def _draw(dist: dict[str, Any], rng: random.Random) -> Any:
    (name, args), = dist.items()
    if name == "choice":
        return rng.choice(args)
    if name == "randint":
        return rng.randrange(args[0], args[1])
    if name == "uniform":
        return rng.uniform(args[0], args[1])
    return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))


def optuna_distributions(spec: TuneSpec) -> dict[str, Any]:
    """The space as Optuna distributions (for TPE), under names without dots."""
    from optuna import distributions as od

    out = {}
    for key, dist in spec.space.items():
        (name, args), = dist.items()
        if name == "choice":
            out[encode(key)] = od.CategoricalDistribution(args)
        elif name == "randint":
            out[encode(key)] = od.IntDistribution(args[0], args[1] - 1)
        else:
            out[encode(key)] = od.FloatDistribution(args[0], args[1], log=name == "loguniform")
    return out


def encode(key: str) -> str:
    return key.replace(".", "__")


def decode(name: str) -> str:
    return name.replace("__", ".")


def apply_values(config: dict[str, Any], values: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`config` with searched values set (validated as the sweep file's would be), extra top-level
    `fields` (phase, val_size, ...), and its trial id recomputed."""
    from bench.models import check_model_arg
    from bench.spec import TrainSpec, _describe, trial_id

    out = copy.deepcopy(config)
    for key, value in values.items():
        root, name = key.split(".", 1)
        out[root] = {**out[root], name: value}
    try:
        out["train"] = TrainSpec.model_validate(out["train"]).model_dump()
    except ValidationError as exc:
        raise BenchInputError(_describe(exc, prefix="train")) from None
    for key, value in values.items():
        if key.startswith("model_args."):
            problem = check_model_arg(out["model"], key.split(".", 1)[1], value)
            if problem:
                raise BenchInputError(problem)
    out.update(fields)
    out["trial_id"] = trial_id(out)
    return out


def search_config(cell: Cell, spec: TuneSpec, values: dict[str, Any]) -> dict[str, Any]:
    """A search trial: the cell's template with `values`, trained without its validation split."""
    return apply_values(cell.template, values, phase="search", val_size=spec.val_size,
                        tune_cell=cell.id, tuned=dict(values), analysis=[])  # analyses are for the final trials


def final_config(member: dict[str, Any], values: dict[str, Any], selected_from: str,
                 budget: dict[str, Any], cell_id: str) -> dict[str, Any]:
    """A final trial: a grid trial of the cell with the best values, trained on its whole subset and tested."""
    return apply_values(member, values, phase="final", selected_from=selected_from, tuned=dict(values),
                        budget=budget, tune_cell=cell_id)


# ------------------------------------------------------------------------- selection


@dataclass
class Selection:
    values: dict[str, Any]
    trial_id: str
    score: float
    budget: dict[str, Any]


def select_best(search_rows: list[dict[str, Any]], spec: TuneSpec) -> Selection | None:
    """The cell's best finished search trial by the search metric at its last epoch.

    Trials stopped early by ASHA compete with what they reached; a trial without the metric
    (it failed) does not compete. The budget counts every search trial of the cell.
    """
    mode = spec.mode or SEARCH_METRICS[spec.metric]
    scored = [r for r in search_rows if r.get(spec.metric) is not None and not _isnan(r[spec.metric])]
    budget = {"trials": len(search_rows),
              "epochs": int(sum(r.get("epochs") or 0 for r in search_rows)),
              "wall_s": float(sum(r.get("wall_s") or 0.0 for r in search_rows))}
    if not scored:
        return None
    best = (max if mode == "max" else min)(scored, key=lambda r: r[spec.metric])
    config = json.loads(best["config"]) if isinstance(best["config"], str) else best["config"]
    return Selection(config["tuned"], best["trial_id"], float(best[spec.metric]), budget)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
