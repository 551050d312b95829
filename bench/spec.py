"""The sweep file: schema, loading, grid expansion and trial ids.

A sweep file is turned into a list of fully resolved trial configs (plain JSON-able
dicts). Everything a trial needs is in its config, so a trial can be re-run anywhere
from its stored `config` column, and its `trial_id` is a hash of that config.

Errors are `BenchInputError`s whose message names the file and the field.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench import data as data_registry
from bench import models as model_registry
from bench.errors import BenchInputError

AugmentName = Literal["crop", "flip", "randaugment", "mixup", "cutmix"]
TRANSFER_MODES = ("scratch", "linear_probe", "finetune", "freeze_attention")
SINGLE_STAGE = "main"

# Fields of a trial that a grid key may start with.
TRIAL_ROOTS = ("dataset", "model", "model_args", "train", "train_size", "seed", "transfer", "analysis")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSpec(_Strict):
    """How one trial trains. Every field changes the science, so every field is hashed."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    step_gamma: float = Field(0.1, gt=0)
    augment: list[AugmentName] = Field(default_factory=list)
    crop_padding: int = Field(4, ge=0)
    randaugment_n: int = Field(2, ge=0)
    randaugment_m: int = Field(9, ge=0, le=30)
    mixup_alpha: float = Field(1.0, gt=0)
    cutmix_alpha: float = Field(0.8, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)


class ResourcesSpec(_Strict):
    """What each trial asks Ray for, and the retry policy. Not hashed: it does not change results."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)


class SweepFile(_Strict):
    """The top level of a sweep file; its trial fields are defaults for every trial."""

    name: str
    description: str = ""
    dataset: dict[str, Any] = Field(default_factory=lambda: {"name": "spatial"})
    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    train: TrainSpec = Field(default_factory=TrainSpec)
    train_size: float = 1.0
    seed: int = 0
    transfer: str | None = None
    analysis: list[str] = Field(default_factory=list)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    stages: list[dict[str, Any]] | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names the results folder)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_lists_not_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: an empty list gives no trials")
        return v


@dataclass
class Sweep:
    """A loaded sweep: its settings and its expanded, resolved trials (in grid order)."""

    name: str
    description: str
    resources: ResourcesSpec
    trials: list[dict[str, Any]]
    source_path: str | None = None


# ---------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, validate and expand a sweep file; `overrides` are `--set dotted.key=value` strings."""
    path = Path(path)
    if not path.is_file():
        raise BenchInputError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BenchInputError(f"{path}:{where}: not valid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise BenchInputError(f"{path}: not a text file") from None
    return parse_sweep(raw, source=str(path), overrides=overrides)


def parse_sweep(raw: Any, source: str = "<sweep>", overrides: list[str] | None = None) -> Sweep:
    """Validate a sweep given as a dict (the YAML's content) and expand its grid."""
    if not isinstance(raw, dict):
        raise BenchInputError(f"{source}: a sweep file must be a mapping with at least 'name'")
    raw = copy.deepcopy(raw)
    for override in overrides or []:
        _apply_override(raw, override, source)
    try:
        top = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise BenchInputError(f"{source}: {_describe(exc)}") from None
    if top.stages is not None:
        raise BenchInputError(
            f"{source}: stages: multi-stage (transfer) sweeps are not yet supported by this version of bench"
        )
    trials = _expand(top, source)
    return Sweep(
        name=top.name,
        description=top.description,
        resources=top.resources,
        trials=trials,
        source_path=source,
    )


def _apply_override(raw: dict[str, Any], override: str, source: str) -> None:
    """`--set train.epochs=3`: the value is parsed as YAML, so lists and numbers work."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise BenchInputError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BenchInputError(f"--set {override!r}: the value is not valid YAML") from None
    _set_dotted(raw, key, value)


# --------------------------------------------------------------------------- expansion


def _expand(top: SweepFile, source: str) -> list[dict[str, Any]]:
    defaults: dict[str, Any] = {
        "dataset": top.dataset,
        "model": top.model,
        "model_args": top.model_args,
        "train": top.train.model_dump(),
        "train_size": top.train_size,
        "seed": top.seed,
        "transfer": top.transfer,
        "analysis": top.analysis,
    }
    for key in top.grid:
        if key.split(".")[0] not in TRIAL_ROOTS:
            raise BenchInputError(
                f"{source}: grid.{key}: cannot sweep '{key.split('.')[0]}' (sweepable: {', '.join(TRIAL_ROOTS)})"
            )
    keys = list(top.grid)
    trials = []
    seen: dict[str, int] = {}
    for values in itertools.product(*(top.grid[k] for k in keys)):
        trial = copy.deepcopy(defaults)
        for key, value in zip(keys, values):
            _set_dotted(trial, key, copy.deepcopy(value))
        resolved = _resolve_trial(trial, top.name, source, grid_keys=keys)
        if resolved["trial_id"] in seen:
            continue  # two grid points that resolve to the same trial run once
        seen[resolved["trial_id"]] = len(trials)
        trials.append(resolved)
    return trials


def _resolve_trial(trial: dict[str, Any], sweep: str, source: str, grid_keys: list[str]) -> dict[str, Any]:
    def where(field_name: str) -> str:
        for key in grid_keys:
            if key == field_name or key.startswith(field_name + ".") or field_name.startswith(key + "."):
                return f"{source}: grid.{key}"
        return f"{source}: {field_name}"

    model = trial["model"]
    if model is None:
        raise BenchInputError(f"{source}: model: no model given (set 'model:' or sweep 'grid: {{model: [...]}}')")
    if not isinstance(model, str) or not model_registry.is_model(model):
        known = model_registry.list_models()
        hint = difflib.get_close_matches(str(model), known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(known)})"
        raise BenchInputError(f"{where('model')}: unknown model '{model}'{suggestion}")

    try:
        train = TrainSpec.model_validate(trial["train"])
    except ValidationError as exc:
        raise BenchInputError(f"{where('train')}: {_describe(exc, prefix='train')}") from None

    try:
        dataset = data_registry.resolve_dataset(trial["dataset"])
    except BenchInputError as exc:
        raise BenchInputError(f"{where('dataset')}: {exc}") from None

    model_args = trial["model_args"]
    if not isinstance(model_args, dict):
        raise BenchInputError(f"{where('model_args')}: expected a mapping of arguments for create_model")
    model_args = _model_args_for(model, model_args, lambda: where("model_args"))

    train_size = _check_train_size(trial["train_size"], where("train_size"))
    seed = trial["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BenchInputError(f"{where('seed')}: expected an integer, got {seed!r}")
    if trial["transfer"] is not None:
        raise BenchInputError(
            f"{where('transfer')}: transfer settings need a multi-stage sweep ('stages'), not yet supported"
        )
    analysis = trial["analysis"]
    if not isinstance(analysis, list) or not all(isinstance(a, str) for a in analysis):
        raise BenchInputError(f"{where('analysis')}: expected a list of analysis names")
    if analysis:
        raise BenchInputError(
            f"{where('analysis')}: analyses ({', '.join(analysis)}) are not yet supported by this version of bench"
        )

    config = {
        "sweep": sweep,
        "stage": SINGLE_STAGE,
        "dataset": dataset,
        "model": model,
        "model_args": model_args,
        "train": train.model_dump(),
        "train_size": train_size,
        "seed": seed,
        "transfer": None,
        "source": None,
        "analysis": analysis,
    }
    config["trial_id"] = trial_id(config)
    return config


def _model_args_for(model: str, args: dict[str, Any], where) -> dict[str, Any]:
    """Keep the args this model takes; an arg no model takes is a typo and an error.

    One `model_args` block serves every model of a grid (`patch_size` for the ViTs of a
    sweep that also has ResNets), so an argument that this model does not take is
    dropped for it, and it is not part of its trial id. None values are dropped too,
    as timm's create_model does.
    """
    accepted = model_registry.model_arg_names(model)
    anywhere = model_registry.all_model_arg_names()
    kept = {}
    for key, value in args.items():
        if key not in anywhere:
            hint = difflib.get_close_matches(key, sorted(anywhere), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise BenchInputError(f"{where()}: '{key}' is not an argument of any model{suggestion}")
        if key in accepted and value is not None:
            kept[key] = value
    return dict(sorted(kept.items()))


def _check_train_size(value: Any, where: str) -> float | int:
    """A fraction (<= 1.0) or an image count (> 1); 1 and 1.0 both mean the whole set."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BenchInputError(f"{where}: expected a fraction in (0, 1] or an image count > 1, got {value!r}")
    if value <= 1:
        return float(value)
    if float(value) != int(value):
        raise BenchInputError(f"{where}: an image count must be a whole number, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------- trial id

HASHED_FIELDS = ("stage", "dataset", "model", "model_args", "train", "train_size", "seed", "transfer", "source")
_TRAIN_DEFAULTS = TrainSpec().model_dump()


def trial_id(config: dict[str, Any]) -> str:
    """A stable 12-hex-digit hash of the resolved trial config.

    Fields left at their schema default are left out of the hash, so adding a new
    option to a later bench (with a default that keeps the old behaviour) does not
    change the ids of existing results. Paths (dataset root) are left out too: the
    same data on another machine is the same trial.
    """
    view = {k: config.get(k) for k in HASHED_FIELDS}
    view["train"] = {k: v for k, v in config["train"].items() if _TRAIN_DEFAULTS.get(k, object()) != v}
    view["dataset"] = data_registry.dataset_hash_view(config["dataset"])
    text = json.dumps(view, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- helpers


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise BenchInputError(f"{key}: '{part}' is not a mapping, so it has no field '{parts[-1]}'")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """One line from pydantic's first error: `train.lrr: unknown key (expected one of ...)`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if prefix:
        loc = f"{prefix}.{loc}" if loc else prefix
    if err["type"] == "extra_forbidden":
        model = _model_at(exc.title, err["loc"])
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        tip = f"; did you mean '{hint[0]}'?" if hint else (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        return f"{loc}: unknown key{tip}"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"]


def _model_at(title: str, loc: tuple) -> type[BaseModel] | None:
    """The schema class whose field list explains an unknown key at `loc`."""
    roots: dict[str, type[BaseModel]] = {"SweepFile": SweepFile, "TrainSpec": TrainSpec, "ResourcesSpec": ResourcesSpec}
    model = roots.get(title)
    for part in loc[:-1]:
        if model is None:
            return None
        annotation = model.model_fields.get(str(part))
        sub = getattr(annotation, "annotation", None) if annotation else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return model
