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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench import analysis as analysis_registry
from bench import data as data_registry
from bench import models as model_registry
from bench.errors import BenchInputError
from bench.recipes import list_recipes, recipe_model_args, recipe_train
from bench.transfer import mode_problem

AugmentName = Literal["crop", "flip", "randaugment", "mixup", "cutmix"]
SINGLE_STAGE = "main"

# Fields of a trial that a grid key may start with.
TRIAL_ROOTS = ("dataset", "model", "model_args", "train", "train_size", "seed", "transfer", "analysis")

# Caps on what a sweep file can make bench do: past them it is bad input (exit 2) before any
# work, instead of minutes of expansion or gigabytes of memory (a 300-byte YAML alias bomb
# expands to millions of values; a few grid axes multiply to 10^9 trials).
MAX_SWEEP_FILE_BYTES = 1_000_000
MAX_YAML_VALUES = 100_000  # values in the file once aliases are expanded
MAX_YAML_DEPTH = 64  # levels of nesting
MAX_MESSAGE_CHARS = 400  # an error line stays readable whatever the input held
DEFAULT_MAX_TRIALS = 100_000  # trials per sweep (resources.max_trials raises it)
MAX_DATA_SAMPLES = 10_000_000  # num_train + num_test of generated data
MAX_IMAGE_SIDE = 4096  # pixels: img_size, or grid * patch_size of patch data in image form
MAX_DATA_VALUES = 4_000_000_000  # samples x values per sample (16 GB as float32)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainBudget(_Strict):
    """Train for a number of optimizer steps instead of `epochs` passes (bench.train.training_plan)."""

    steps: int = Field(ge=1)


class TrainSpec(_Strict):
    """How one trial trains. Every field changes the science, so every field is hashed."""

    epochs: int = Field(10, ge=0)
    #: Images per step, or 'full': the whole training subset, one step per epoch (full-batch GD).
    batch_size: Annotated[int, Field(gt=0)] | Literal["full"] = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd: 0 is plain gradient descent; Nesterov when > 0
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    #: Defaults that train every zoo model on a small dataset in a few epochs (issue 13): without
    #: warmup and clipping, a 12-layer ViT-Ti stayed at chance on 1,437 digit images.
    warmup_epochs: float = Field(1.0, ge=0)
    step_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    step_gamma: float = Field(0.1, gt=0)
    augment: list[AugmentName] = Field(default_factory=list)
    crop_padding: int = Field(4, ge=0)
    randaugment_n: int = Field(2, ge=0)
    randaugment_m: int = Field(9, ge=0, le=30)
    mixup_alpha: float = Field(1.0, gt=0)
    cutmix_alpha: float = Field(0.8, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)  # global norm; null for plain (paper) gradient descent
    #: Training steps in bf16 autocast ('auto': on a GPU that has bf16; fp32 on a CPU). Analyses run in fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: `torch.compile` the model for the training steps; the compile time is recorded apart (`compile_s`).
    compile: bool = False
    #: null: `epochs` passes over the subset (a smaller subset gets fewer steps). {steps: N}: N
    #: optimizer steps at every subset size, in as many epochs as that takes (the last cut short);
    #: warmup keeps its share warmup_epochs / epochs and the schedule runs over the N steps.
    budget: TrainBudget | None = None


class ResourcesSpec(_Strict):
    """What each trial asks Ray for, and the retry policy. Not hashed: it does not change results."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    #: A trial reports (checkpoint, progress, MLflow epoch metrics) at most this often; its
    #: last epoch always. A 10^4-step full-batch run has 10^4 one-step epochs: reporting each
    #: would cost more than the training. The epochs table still gets every epoch.
    report_every_s: float = Field(5.0, ge=0)
    #: Train up to this many seeds of otherwise equal trials as one vmapped model in one process
    #: (bench.stacking): K trial rows as usual, from one Ray slot. For small models on a GPU.
    #: Not stacked: batch-norm models, drop-path, analyses, transfer stages.
    stack_seeds: int = Field(1, ge=1)
    #: The most trials the sweep may expand to: a grid whose product is larger is refused before it
    #: is expanded (a typo of one axis can multiply a sweep by 1,000). Not hashed, like all resources.
    max_trials: int = Field(DEFAULT_MAX_TRIALS, ge=1)


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
    analysis: list[Any] = Field(default_factory=list)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    stages: list[dict[str, Any]] | None = None
    #: Keep every trial's final weights in the store (`models/`), not only those a later stage uses.
    keep_weights: bool = False
    #: A named preset of train settings (bench.recipes), under the `train:` block.
    recipe: str | None = None
    #: The scaled-down variant: dotted `--set`-style overrides applied by `--smoke` (see parse_sweep).
    smoke: dict[str, Any] | None = None
    #: A search per cell before the comparison (bench.tuning): space, algorithm, num_samples, per, ...
    tune: dict[str, Any] | None = None

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
    #: Stage names in run order and, for each stage that starts from another, its source.
    stages: list[str] = field(default_factory=lambda: [SINGLE_STAGE])
    sources: dict[str, str] = field(default_factory=dict)

    def stage_trials(self, stage: str) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["stage"] == stage]

    keep_weights: bool = False
    #: `tune:` sweeps: the search settings and the cells that each get a search (bench.tuning).
    tune: Any = None
    cells: list[Any] = field(default_factory=list)

    @property
    def source_stages(self) -> set[str]:
        """Stages whose trials' final weights are kept in the store: those a later stage starts
        from, or every stage with `keep_weights: true`."""
        return set(self.stages) if self.keep_weights else set(self.sources.values())


# ---------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> Sweep:
    """Read, validate and expand a sweep file; `overrides` are `--set dotted.key=value` strings,
    `smoke` applies the file's `smoke:` section first."""
    path = Path(path)
    if not path.is_file():
        raise BenchInputError(f"{path}: no such sweep file")
    if path.stat().st_size > MAX_SWEEP_FILE_BYTES:
        raise BenchInputError(f"{path}: {path.stat().st_size:,} bytes; a sweep file has at most {MAX_SWEEP_FILE_BYTES:,}")
    try:
        raw = load_yaml(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BenchInputError(cut(f"{path}:{where}: not valid YAML: {problem}")) from None
    except UnicodeDecodeError:
        raise BenchInputError(f"{path}: not a text file") from None
    return parse_sweep(raw, source=str(path), overrides=overrides, smoke=smoke)


def cut(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message of at most `limit` characters (what was cut is counted, not shown)."""
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message) - limit:,} more characters)"


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load`, with caps: at most MAX_YAML_VALUES values once aliases are expanded (the
    loaded object shares aliased values, but validation, messages and trial configs copy them
    out) and MAX_YAML_DEPTH levels of nesting; a recursive alias is refused. libyaml's parser when
    present: the pure-Python one takes seconds on a few thousand nested brackets."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise BenchInputError(f"{where}: nested too deeply (at most {MAX_YAML_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _check_yaml_size(root: yaml.Node, where: str) -> None:
    """Count the values a node graph expands to (aliases share nodes), without expanding it."""
    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    done: dict[int, tuple[int, int]] = {}  # node -> (values, depth) once expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = [done[id(c)] for c in children(node)]
            count, depth = 1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)
            if count > MAX_YAML_VALUES:
                raise BenchInputError(f"{where}: expands to more than {MAX_YAML_VALUES:,} values (aliases "
                                      "included); a sweep file that large is refused")
            if depth > MAX_YAML_DEPTH:
                raise BenchInputError(f"{where}: nested too deeply (at most {MAX_YAML_DEPTH} levels)")
            done[key] = (count, depth)
            open_nodes.discard(key)
        elif key not in done:
            if key in open_nodes:
                raise BenchInputError(f"{where}: a recursive alias (a value that contains itself)")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children(node))


def parse_sweep(raw: Any, source: str = "<sweep>", overrides: list[str] | None = None, smoke: bool = False) -> Sweep:
    """Validate a sweep given as a dict (the YAML's content) and expand its grid.

    `smoke`: apply the file's `smoke:` section (dotted overrides, as `--set` takes them)
    before `overrides`; the sweep is then named `<name>-smoke` unless the section sets a
    name, so a smoke run never mixes its trials into the full run's results. Without
    `smoke` the section is not applied, but the smoke variant is still parsed and
    expanded, so a broken section is an error on every read of the file.
    """
    try:
        return _parse_sweep(raw, source, overrides, smoke)
    except BenchInputError as exc:
        raise BenchInputError(cut(str(exc))) from None
    except RecursionError:  # a structure too deep for validation (parse_sweep given a dict directly)
        raise BenchInputError(f"{source}: nested too deeply") from None


def _parse_sweep(raw: Any, source: str, overrides: list[str] | None, smoke: bool) -> Sweep:
    if not isinstance(raw, dict):
        raise BenchInputError(f"{source}: a sweep file must be a mapping with at least 'name'")
    raw = copy.deepcopy(raw)
    section = _smoke_section(raw.pop("smoke", None), source)
    written = copy.deepcopy(raw) if section and not smoke else None
    if smoke:
        if not section:
            raise BenchInputError(f"{source}: --smoke: this sweep has no 'smoke:' section (a mapping of dotted "
                                  "overrides, e.g. {train.epochs: 1, grid.seed: [0]})")
        _apply_smoke(raw, section, source)
    for override in overrides or []:
        _apply_override(raw, override, source)
    sweep = _parse(raw, source)
    if written is not None:
        _apply_smoke(written, section, source)
        _parse(written, f"{source}: smoke")
    return sweep


def _smoke_section(section: Any, source: str) -> dict[str, Any]:
    """The `smoke:` section: a mapping of dotted keys (`train.epochs`, `grid.seed`) to values."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise BenchInputError(f"{source}: smoke: expected a mapping of dotted overrides, e.g. "
                              f"{{train.epochs: 1, 'grid.seed': [0]}}, got {section!r}")
    for key in section:
        if not isinstance(key, str) or not key or key.split(".")[0] == "smoke":
            raise BenchInputError(f"{source}: smoke: {key!r} is not a dotted field path such as train.epochs")
    return section


def _apply_smoke(raw: dict[str, Any], section: dict[str, Any], source: str) -> None:
    """The smoke overrides, through the same setter as `--set`; the name gets `-smoke` unless set."""
    if "name" not in section and isinstance(raw.get("name"), str):
        raw["name"] = f"{raw['name']}-smoke"
    for key, value in section.items():
        try:
            _set_override(raw, key, copy.deepcopy(value))
        except BenchInputError as exc:
            raise BenchInputError(f"{source}: smoke: {exc}") from None


def _parse(raw: dict[str, Any], source: str) -> Sweep:
    try:
        top = SweepFile.model_validate(_with_recipe(raw, source))
    except ValidationError as exc:
        raise BenchInputError(f"{source}: {_describe(exc)}") from None
    if top.smoke is not None:  # only --set can bring one back after parse_sweep took the file's
        raise BenchInputError(f"{source}: smoke: the smoke section is read from the file before --set applies; "
                              "give its overrides as --set instead")
    if top.stages is not None:
        if top.tune is not None:
            raise BenchInputError(f"{source}: tune: a tuned sweep has one stage (tuning inside stages is not supported)")
        return _parse_stages(raw, top, source)
    if top.transfer is not None:
        raise BenchInputError(f"{source}: transfer: a transfer mode needs a stage with a 'source' (see 'stages')")
    axes: list[dict[str, Any]] = []
    trials = _expand(top, source, axes_out=axes)
    sweep = Sweep(
        name=top.name,
        description=top.description,
        resources=top.resources,
        trials=trials,
        source_path=source,
        keep_weights=top.keep_weights,
    )
    if top.tune is not None:
        from bench import tuning

        sweep.tune = tuning.parse_tune(top.tune, top.grid, trials[0], source)
        per = sweep.tune.per if sweep.tune.per is not None else [k for k in top.grid if k != "seed"]
        sweep.cells = tuning.plan_cells(trials, axes, per)
    return sweep


class StageSpec(_Strict):
    """One stage of a multi-stage sweep; its fields override the sweep's top-level defaults."""

    name: str
    source: str | None = None
    #: Replaces the sweep's recipe for this stage; the sweep's `train:` block still applies on top.
    recipe: str | None = None
    dataset: dict[str, Any] | None = None
    model: str | None = None
    model_args: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    train_size: float | None = None
    seed: int | None = None
    transfer: str | None = None
    analysis: list[Any] | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        return SweepFile._name_is_a_folder_name(v)


def _parse_stages(raw: dict[str, Any], top: SweepFile, source: str) -> Sweep:
    """Expand each stage's grid and link every downstream trial to its source trial.

    A trial of a stage with `source: S` starts from the final weights of the one trial of
    stage S that agrees with it on the grid keys both stages sweep (model, seed, ...) and
    has the same model. The stage inherits S's model and the grid axes of S it does not
    sweep or set itself (`_inherit_from_source`), so those are shared keys too. No match, or
    several, is an error before anything runs.
    """
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise BenchInputError(f"{source}: stages: expected a non-empty list of stages")
    specs: list[StageSpec] = []
    for i, stage_raw in enumerate(stages_raw):
        try:
            specs.append(StageSpec.model_validate(stage_raw))
        except ValidationError as exc:
            raise BenchInputError(f"{source}: stages[{i}].{_describe(exc)}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BenchInputError(f"{source}: stages: stage names must be unique, got {names}")
    _check_stage_order(specs, source)

    defaults = {k: v for k, v in raw.items() if k not in ("stages", "name", "description", "resources", "keep_weights")}
    trials: list[dict[str, Any]] = []
    by_stage: dict[str, list[dict[str, Any]]] = {}
    grids: dict[str, dict[str, list[Any]]] = {}
    stage_fields: dict[str, dict[str, Any]] = {}
    for spec in specs:
        stage_raw = _stage_fields(defaults, spec)
        if spec.source is not None:
            stage_raw = _inherit_from_source(stage_raw, spec, stage_fields[spec.source], grids[spec.source])
        stage_fields[spec.name] = stage_raw
        where = f"{source}: stages.{spec.name}"
        try:
            stage_top = SweepFile.model_validate({"name": top.name, **_with_recipe(stage_raw, where)})
        except ValidationError as exc:
            raise BenchInputError(f"{where}.{_describe(exc)}") from None
        expanded = _expand(stage_top, where, stage=spec.name, has_source=spec.source is not None,
                           max_trials=top.resources.max_trials)
        if spec.source is not None:
            expanded = _link_sources(expanded, by_stage[spec.source], grids[spec.source], stage_top.grid,
                                     f"{where}: source {spec.source}")
        by_stage[spec.name] = expanded
        grids[spec.name] = stage_top.grid
        trials += expanded
    return Sweep(
        name=top.name, description=top.description, resources=top.resources, trials=trials, source_path=source,
        stages=names, sources={s.name: s.source for s in specs if s.source is not None}, keep_weights=top.keep_weights,
    )


def _inherit_from_source(stage_raw: dict[str, Any], spec: StageSpec, source_raw: dict[str, Any],
                         source_grid: dict[str, list[Any]]) -> dict[str, Any]:
    """A downstream stage's fields with what it inherits from its source stage (DESIGN.md's
    two-stage example): the source's model, unless the stage names or sweeps its own, and every
    axis of the source's grid that the stage neither sweeps nor sets itself, so each trial of
    the stage starts from the source trial with the same model, seed, ... The inherited axes
    come first (outer loops); the stage's own grid follows. An axis is not inherited when one of
    its fields overlaps a field the stage sweeps (`train` vs `train.lr`), is set in the stage's
    own block (`train: {lr: ...}`), or is a dataset field while the stage names another dataset.
    """
    given = spec.model_dump(exclude_unset=True, exclude={"name", "source"})
    own_grid = stage_raw.get("grid") or {}
    own = _grid_fields(own_grid) if isinstance(own_grid, dict) else set()
    other_dataset = (isinstance(given.get("dataset"), dict) and isinstance(source_raw.get("dataset"), dict)
                     and given["dataset"].get("name", source_raw["dataset"].get("name")) != source_raw["dataset"].get("name"))

    def taken(field_key: str) -> bool:
        if any(_overlapping(field_key, g) for g in own):
            return True
        if other_dataset and (field_key == "dataset" or field_key.startswith("dataset.")):
            return True
        node: Any = given
        for part in field_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    out = dict(stage_raw)
    if "model" not in given and not taken("model"):
        out["model"] = source_raw.get("model")
    inherited = {key: copy.deepcopy(values) for key, values in source_grid.items()
                 if key not in own_grid and not any(taken(f) for f in _grid_fields({key: values}))}
    if inherited:
        out["grid"] = {**inherited, **own_grid}
    return out


def _overlapping(a: str, b: str) -> bool:
    """Whether dotted fields `a` and `b` set some of the same value (equal, or one inside the other)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _check_stage_order(specs: list[StageSpec], source: str) -> None:
    """Sources must be stages of this sweep, with no cycle; a source must come before its stage."""
    names = {s.name: s for s in specs}
    for spec in specs:
        seen, node = [spec.name], spec
        while node.source is not None:
            if node.source not in names:
                hint = difflib.get_close_matches(node.source, list(names), n=1)
                tip = f"; did you mean '{hint[0]}'?" if hint else f" (stages: {', '.join(names)})"
                raise BenchInputError(f"{source}: stages.{node.name}.source: unknown stage '{node.source}'{tip}")
            if node.source in seen:
                raise BenchInputError(f"{source}: stages: the sources form a cycle ({' -> '.join(seen + [node.source])})")
            seen.append(node.source)
            node = names[node.source]
    order = [s.name for s in specs]
    for spec in specs:
        if spec.source is not None and order.index(spec.source) > order.index(spec.name):
            raise BenchInputError(f"{source}: stages.{spec.name}.source: stage '{spec.source}' must come before it")


def _stage_fields(defaults: dict[str, Any], spec: StageSpec) -> dict[str, Any]:
    """The sweep's top-level fields with the stage's on top: `train` and `model_args` merge key by key,
    `dataset` too unless the stage names another dataset (then only `root`/`download` carry over),
    the rest (grid included) replace."""
    merged = copy.deepcopy(defaults)
    given = spec.model_dump(exclude_unset=True, exclude={"name", "source"})
    for key, value in given.items():
        base = merged.get(key)
        same_dataset = key == "dataset" and isinstance(base, dict) and value.get("name", base.get("name")) == base.get("name")
        if key in ("train", "model_args") and isinstance(base, dict) or same_dataset:
            merged[key] = {**base, **value}
        elif key == "dataset" and isinstance(base, dict):  # another dataset: only where data lives carries over
            merged[key] = {**{k: base[k] for k in DATA_LOCATION_KEYS if k in base}, **value}
        else:
            merged[key] = value
    return merged


#: Dataset options that say where data is, not what it is: `--set dataset.root=...` reaches every stage.
DATA_LOCATION_KEYS = ("root", "download")


def _with_recipe(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields with their recipe's train settings under their `train:` block (and its model
    arguments under their `model_args:`, e.g. park2022's drop_path_rate).

    Precedence: TrainSpec defaults < recipe < the sweep's `train:` < a stage's `train:` (merged
    into it by _stage_fields) < grid and `--set`. Only values reach the trials: a recipe's name
    is not part of a trial config, so it never changes a trial id by itself.
    """
    name = fields.get("recipe")
    if name is None:
        return fields
    if not isinstance(name, str):
        raise BenchInputError(f"{where}: recipe: expected a recipe name ({', '.join(list_recipes())}), got {name!r}")
    try:
        base = recipe_train(name)
    except BenchInputError as exc:
        raise BenchInputError(f"{where}: recipe: {exc}") from None
    train = fields.get("train")
    if train is None:
        train = {}
    if not isinstance(train, dict):
        return fields  # not a mapping: the schema says so
    out = {**fields, "train": {**base, **train}}
    model_args = fields.get("model_args")
    if model_args is None or isinstance(model_args, dict):  # a recipe's model_args under the sweep's
        out["model_args"] = {**recipe_model_args(name), **(model_args or {})}
    return out


def _grid_fields(grid: dict[str, list[Any]]) -> set[str]:
    """The dotted fields a grid sets (a named axis sets those of its mappings)."""
    fields: set[str] = set()
    for key, values in grid.items():
        fields |= {k for v in values for k in v} if _is_linked_axis(values) and key not in TRIAL_ROOTS else {key}
    return fields


def _link_sources(trials: list[dict[str, Any]], sources: list[dict[str, Any]], source_grid: dict[str, list[Any]],
                  grid: dict[str, list[Any]], where: str) -> list[dict[str, Any]]:
    shared = sorted(_grid_fields(source_grid) & _grid_fields(grid))
    linked, seen = [], set()
    for trial in trials:
        matches = [s for s in sources if s["model"] == trial["model"]
                   and all(_get_dotted(s, k) == _get_dotted(trial, k) for k in shared)]
        label = f"{trial['model']} " + " ".join(f"{k}={_get_dotted(trial, k)}" for k in shared)
        if not matches:
            raise BenchInputError(f"{where}: no source trial matches {label.strip()} "
                                  f"(matched on model and the grid keys both stages sweep: {', '.join(shared) or 'none'})")
        if len(matches) > 1:
            raise BenchInputError(f"{where}: {len(matches)} source trials match {label.strip()}; sweep a key that tells "
                                  f"them apart (e.g. seed) in both stages (shared keys: {', '.join(shared) or 'none'})")
        trial = {**trial, "source": matches[0]["trial_id"]}
        trial["trial_id"] = trial_id(trial)
        if trial["trial_id"] not in seen:
            seen.add(trial["trial_id"])
            linked.append(trial)
    return linked


def _get_dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _apply_override(raw: dict[str, Any], override: str, source: str) -> None:
    """`--set train.epochs=3`: the value is parsed as YAML, so lists and numbers work."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise BenchInputError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        value = load_yaml(text, f"--set {key}")
    except yaml.YAMLError:
        raise BenchInputError(f"--set {override!r}: the value is not valid YAML") from None
    _set_override(raw, key, value)


def _set_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set one `--set` or `smoke:` override. A grid key stays one key whatever dots it holds
    (`grid.model_args.patch_size=[2, 4]` sets the grid key `model_args.patch_size`), unless the
    key indexes into a named axis (`grid.setting.0.train.lr=0.1`)."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-2]):
        if part == "grid" and (i == 0 or (i >= 2 and parts[i - 2] == "stages")) and not parts[i + 2].isdigit():
            parts = parts[: i + 1] + [".".join(parts[i + 1 :])]
            break
    _set_path(raw, parts, key, value)


# --------------------------------------------------------------------------- expansion


def _expand(top: SweepFile, source: str, stage: str = SINGLE_STAGE, has_source: bool = False,
            axes_out: list[dict[str, Any]] | None = None, max_trials: int | None = None) -> list[dict[str, Any]]:
    """The grid's resolved trials, in grid order; `axes_out` gets each kept trial's grid values."""
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
    for key, values in top.grid.items():
        if key.split(".")[0] not in TRIAL_ROOTS and not _is_linked_axis(values):
            raise BenchInputError(
                f"{source}: grid.{key}: cannot sweep '{key.split('.')[0]}' (sweepable: {', '.join(TRIAL_ROOTS)}; "
                "or a named axis whose values are mappings of fields set together)"
            )
        if _is_linked_axis(values):
            for value in values:
                for field_key in value:
                    if field_key.split(".")[0] not in TRIAL_ROOTS:
                        raise BenchInputError(f"{source}: grid.{key}: cannot set '{field_key}' "
                                              f"(sweepable: {', '.join(TRIAL_ROOTS)})")
    keys = list(top.grid)
    planned, cap = math.prod(len(top.grid[k]) for k in keys), max_trials or top.resources.max_trials
    if planned > cap:  # before anything is expanded
        raise BenchInputError(
            f"{source}: grid: {planned:,} trials ({' x '.join(str(len(top.grid[k])) for k in keys)}) is more than "
            f"resources.max_trials ({cap:,}); narrow the grid, or raise resources.max_trials")
    trials = []
    seen: dict[str, int] = {}
    for values in itertools.product(*(top.grid[k] for k in keys)):
        trial = copy.deepcopy(defaults)
        for key, value in zip(keys, values):
            if key.split(".")[0] in TRIAL_ROOTS:
                _set_dotted(trial, key, copy.deepcopy(value))
            else:  # a linked axis: one value sets several fields together
                for field_key, field_value in value.items():
                    _set_dotted(trial, field_key, copy.deepcopy(field_value))
        resolved = _resolve_trial(trial, top.name, source, grid_keys=keys, stage=stage, has_source=has_source)
        _check_data_size(resolved["dataset"], source)
        if resolved["trial_id"] in seen:
            continue  # two grid points that resolve to the same trial run once
        seen[resolved["trial_id"]] = len(trials)
        trials.append(resolved)
        if axes_out is not None:
            axes_out.append(dict(zip(keys, values)))
    return trials


def _check_data_size(dataset: dict[str, Any], source: str) -> None:
    """Generated data and resized images within MAX_DATA_SAMPLES, MAX_IMAGE_SIDE and MAX_DATA_VALUES:
    a typo (`num_train: 4096000000`) is bad input, not a worker that allocates until it dies."""
    def number(key: str) -> int:
        value = dataset.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    samples = number("num_train") + number("num_test")
    side = number("img_size") or number("grid") * number("patch_size")
    channels = number("channels") or 3
    per_sample = max(number("num_patches") * number("patch_dim"), side * side * channels)
    name = dataset.get("name")
    if samples > MAX_DATA_SAMPLES:
        raise BenchInputError(f"{source}: dataset {name}: num_train + num_test = {samples:,}; at most "
                              f"{MAX_DATA_SAMPLES:,} generated samples")
    if side > MAX_IMAGE_SIDE:
        raise BenchInputError(f"{source}: dataset {name}: images of {side:,} pixels a side; at most {MAX_IMAGE_SIDE:,}")
    if samples * per_sample > MAX_DATA_VALUES:
        raise BenchInputError(f"{source}: dataset {name}: {samples:,} samples of {per_sample:,} values "
                              f"({samples * per_sample:,}) is more than {MAX_DATA_VALUES:,} values in memory")


def _is_linked_axis(values: list[Any]) -> bool:
    """A named grid axis (`geometry: [{dataset.num_patches: 10, train.lr: 0.02}, ...]`): fields that
    vary together, e.g. a learning rate that suits each data geometry, instead of a product."""
    return bool(values) and all(isinstance(v, dict) and v for v in values)


def _resolve_trial(trial: dict[str, Any], sweep: str, source: str, grid_keys: list[str],
                   stage: str = SINGLE_STAGE, has_source: bool = False) -> dict[str, Any]:
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
    model_args = _tokens_match_data_patches(model, model_args, dataset, lambda: where("model_args"))

    train_size = _check_train_size(trial["train_size"], where("train_size"))
    seed = trial["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BenchInputError(f"{where('seed')}: expected an integer, got {seed!r}")
    transfer = trial["transfer"]
    if has_source:
        transfer = transfer or "finetune"
        problem = mode_problem(transfer, model) if isinstance(transfer, str) else f"expected a mode name, got {transfer!r}"
        if problem:
            raise BenchInputError(f"{where('transfer')}: {problem}")
    elif transfer is not None:
        raise BenchInputError(f"{where('transfer')}: a transfer mode needs a stage with a 'source'")
    try:
        analysis = analysis_registry.resolve_analyses(trial["analysis"], model, dataset["name"])
    except BenchInputError as exc:
        raise BenchInputError(f"{where('analysis')}: {exc}") from None

    config = {
        "sweep": sweep,
        "stage": stage,
        "dataset": dataset,
        "model": model,
        "model_args": model_args,
        "train": train.model_dump(),
        "train_size": train_size,
        "seed": seed,
        "transfer": transfer,
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
            problem = model_registry.check_model_arg(model, key, value)
            if problem:
                raise BenchInputError(f"{where()}: {key} of {model}: {problem}")
            kept[key] = value
    return dict(sorted(kept.items()))


PATCH_DATASETS = ("spatial", "spatial_control")


def _tokens_match_data_patches(model: str, args: dict[str, Any], dataset: dict[str, Any], where) -> dict[str, Any]:
    """On the synthetic patch data a patch model's token is one data patch.

    Positional attention can only be compared with the partition when token j is data
    patch j: a 2-px token on 4-px data patches splits each patch over four tokens. So a
    model that takes `patch_size` gets the dataset's, and a different one is an error.
    """
    if dataset["name"] not in PATCH_DATASETS or "patch_size" not in model_registry.model_arg_names(model):
        return args
    if model_registry.model_entry(model).input_kind != "image":
        return args
    wanted = dataset["patch_size"]
    given = args.get("patch_size")
    if given is not None and given != wanted:
        raise BenchInputError(
            f"{where()}: patch_size {given} for {model}, but dataset '{dataset['name']}' has {wanted}-px patches; "
            "on this data a token must be one data patch (leave patch_size out to take the dataset's)"
        )
    return dict(sorted({**args, "patch_size": wanted}.items()))


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
#: Hashed only when set, so the ids of trials without them never change: a tuned sweep's
#: search trials (`phase: search`, trained without a validation split of `val_size`).
OPTIONAL_HASHED_FIELDS = ("phase", "val_size")
#: The train values a trial id leaves out: the defaults of the first release, frozen here and
#: never edited. A default may change later (a better lr, warmup); a trial at the *new* default
#: then hashes with it, so an old result is never mistaken for a trial it did not run. A new
#: field is added here with the value that keeps the old behaviour.
HASH_REFERENCE_TRAIN: dict[str, Any] = {
    "epochs": 10, "batch_size": 128, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05, "momentum": 0.9,
    "schedule": "cosine", "warmup_epochs": 0.0, "step_milestones": [0.5, 0.75], "step_gamma": 0.1, "augment": [],
    "crop_padding": 4, "randaugment_n": 2, "randaugment_m": 9, "mixup_alpha": 1.0, "cutmix_alpha": 0.8,
    "label_smoothing": 0.0, "grad_clip": None, "precision": "auto", "compile": False,
    "budget": None,  # added with issue 26: no budget, equal epochs, as before
}


def trial_id(config: dict[str, Any]) -> str:
    """A stable 12-hex-digit hash of the resolved trial config.

    Train fields at their reference value (HASH_REFERENCE_TRAIN) are left out of the hash,
    so adding a new option to a later bench (with a value that keeps the old behaviour)
    does not change the ids of existing results. Paths (dataset root) are left out too: the
    same data on another machine is the same trial.
    """
    view = {k: config.get(k) for k in HASHED_FIELDS}
    view.update({k: config[k] for k in OPTIONAL_HASHED_FIELDS if config.get(k) is not None})
    view["train"] = {k: v for k, v in config["train"].items() if HASH_REFERENCE_TRAIN.get(k, object()) != v}
    view["dataset"] = data_registry.dataset_hash_view(config["dataset"])
    text = json.dumps(view, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- helpers


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a number indexes a list (`--set stages.1.grid.seed=[0]`)."""
    _set_path(target, key.split("."), key, value)


def _set_path(target: dict[str, Any], parts: list[str], key: str, value: Any) -> None:
    node: Any = target
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise BenchInputError(f"{key}: '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise BenchInputError(f"{key}: '{parts[i - 1]}' is not a mapping, so it has no field '{part}'")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """One line from pydantic's first error: `train.lrr: unknown key (expected one of ...)`."""
    err = exc.errors()[0]
    # A union's member tags (`batch_size.constrained-int`, `.literal['full']`) name no field: drop them.
    loc = ".".join(str(p) for p in err["loc"] if not re.match(r"(constrained-|literal\[|function-)", str(p))
                   and str(p) not in ("int", "float", "str", "bool"))
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
    return f"{loc}: {err['msg']} (got {_short_repr(err.get('input'))})" if loc else err["msg"]


def _short_repr(value: Any) -> str:
    """repr() bounded in work and length: the input may be an alias-shared structure of millions of values."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 80, 80
    return short.repr(value)


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
