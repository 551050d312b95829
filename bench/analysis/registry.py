"""The analysis registry: each analysis declares its options (strict pydantic) and a function.

A sweep file selects analyses (`analysis: [fourier, {hessian: {k: 5, at: [warmup_end, end]}}]`);
`resolve_analyses` validates them when the sweep file is read (bad options exit 2 before any
trial starts) and fills in defaults, so the trial config records every option it ran with.
Inside a trial, `due(spec, epoch, ...)` says whether an analysis runs after an epoch, and
`run_analysis` calls it and turns its rows into rows of the long analysis table
(`trial_id, analysis, metric, layer, index, value`, plus `epoch`), adding its wall time.

An analysis function gets an `AnalysisContext` (model, data, how the trial trains) and its
validated options, and returns rows `{"metric", "layer", "index", "value"}`. It must leave
the model as it found it (train/eval mode, weights, attention path).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from bench.errors import BenchInputError, suggestion


class AnalysisOptions(BaseModel):
    """Base of every analysis' options; `at` and `every` say when it runs, the rest is the analysis'."""

    model_config = ConfigDict(extra="forbid")
    #: Epochs after which it runs: numbers, 'end' (after the last epoch) and 'warmup_end'.
    at: list[int | str] = Field(default_factory=lambda: ["end"])
    #: Also every N epochs (and after epoch 0, the initialisation), for curves over training.
    every: int | None = Field(None, ge=1)


@dataclass
class AnalysisContext:
    """What an analysis may use: the trained model, the trial's data, and how it trains."""

    model: nn.Module
    data: Any  # bench.data.TrialData
    config: dict[str, Any]
    device: torch.device
    epoch: int
    #: Augmented, normalised training batches of a given size: batches(batch_size) -> iterator of (x, y).
    train_batches: Callable[[int], Any] | None = None
    #: The training loss on (logits, targets), label smoothing included.
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


AnalysisFn = Callable[[AnalysisContext, Any], list[dict[str, Any]]]
PlotFn = Callable[[Any], Any]  # (pandas DataFrame of analysis rows joined with trials) -> matplotlib Figure


@dataclass
class AnalysisEntry:
    name: str
    options: type[AnalysisOptions]
    run: AnalysisFn
    plot: PlotFn | None = None
    #: (model name, dataset name) -> whether it applies; a grid mixes models, and an analysis
    #: that does not apply to one (attention distance of a ResNet) is left out of its trials.
    applies: Callable[[str, str], bool] | None = None


_REGISTRY: dict[str, AnalysisEntry] = {}


def register_analysis(
    name: str,
    options: type[AnalysisOptions] = AnalysisOptions,
    applies: Callable[[str, str], bool] | None = None,
) -> Callable[[AnalysisFn], AnalysisFn]:
    def wrap(fn: AnalysisFn) -> AnalysisFn:
        _REGISTRY[name] = AnalysisEntry(name, options, fn, None, applies)
        return fn

    return wrap


def register_plot(name: str) -> Callable[[PlotFn], PlotFn]:
    """The figure of an analysis (for MLflow artifacts and `bench results plot`)."""

    def wrap(fn: PlotFn) -> PlotFn:
        _REGISTRY[name].plot = fn
        return fn

    return wrap


def list_analyses() -> list[str]:
    return sorted(_REGISTRY)


def analysis_entry(name: str) -> AnalysisEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        tip = suggestion(name, list_analyses())
        raise BenchInputError(f"unknown analysis '{name}'{tip}") from None


def resolve_analyses(raw: Any, model: str, dataset: str) -> list[dict[str, Any]]:
    """`analysis:` of a sweep file -> [{"name", "options"}] with every option filled in.

    Entries are a name (`fourier`) or a one-key mapping (`{hessian: {k: 3}}`). Analyses
    that do not apply to this model and dataset are left out (and so is their config).
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BenchInputError("expected a list of analyses, e.g. [fourier, {hessian: {k: 3}}]")
    resolved = []
    for item in raw:
        if isinstance(item, str):
            name, given = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, given = next(iter(item.items()))
            given = given or {}
        else:
            raise BenchInputError(f"{item!r}: an analysis is a name or a one-key mapping {{name: {{options}}}}")
        entry = analysis_entry(name)
        if not isinstance(given, dict):
            raise BenchInputError(f"{name}: options must be a mapping, got {given!r}")
        try:
            options = entry.options.model_validate(given)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                allowed = sorted(entry.options.model_fields)
                hint = difflib.get_close_matches(loc, allowed, n=1)
                tip = f"; did you mean '{hint[0]}'?" if hint else f" (options: {', '.join(allowed)})"
                raise BenchInputError(f"{name}.{loc}: unknown option{tip}") from None
            raise BenchInputError(f"{name}.{loc}: {err['msg']} (got {err.get('input')!r})") from None
        for point in options.at:
            if isinstance(point, str) and point not in ("end", "warmup_end"):
                raise BenchInputError(f"{name}.at: {point!r} is not an epoch number, 'end' or 'warmup_end'")
        if entry.applies is not None and not entry.applies(model, dataset):
            continue
        resolved.append({"name": name, "options": options.model_dump()})
    return resolved


def due(spec: dict[str, Any], epoch: int, epochs: int, warmup_epochs: float) -> bool:
    """Whether an analysis runs after `epoch` (0 = at initialisation) of a training of `epochs` epochs."""
    options = spec["options"]
    every = options.get("every")
    if every and epoch % every == 0:
        return True
    for point in options.get("at", ["end"]):
        if point == "end" and epoch == epochs:
            return True
        if point == "warmup_end" and epoch == max(1, round(warmup_epochs)) and warmup_epochs > 0:
            return True
        if isinstance(point, int) and point == epoch:
            return True
    return False


def run_analysis(spec: dict[str, Any], ctx: AnalysisContext) -> list[dict[str, Any]]:
    """Run one analysis; its rows, tagged with the analysis and epoch, plus a `wall_s` row."""
    entry = analysis_entry(spec["name"])
    options = entry.options.model_validate(spec["options"])
    started = time.perf_counter()
    rows = entry.run(ctx, options)
    wall = time.perf_counter() - started
    out = [
        {"analysis": entry.name, "epoch": ctx.epoch, "metric": r["metric"], "layer": r.get("layer"),
         "index": r.get("index"), "value": None if r["value"] is None else float(r["value"])}
        for r in rows
    ]
    out.append({"analysis": entry.name, "epoch": ctx.epoch, "metric": "wall_s", "layer": None, "index": None,
                "value": wall})
    return out
