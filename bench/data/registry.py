"""The dataset registry: each dataset declares its options (a strict pydantic model) and a loader.

Options are validated when a sweep file is read, so a typo in `dataset:` is an error
before any trial starts, and a dataset's `check` (run by `check_available` in bench run's
preflight) fails fast on data that is missing from disk. A loader returns the full
train/test splits on the CPU; the trial-side code (`bench.data.trial`) subsets them and
moves them to the device.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from bench.errors import BenchInputError, suggestion


class DatasetOptions(BaseModel):
    """Base of every dataset's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    name: str

    #: Options that do not change the data (paths, download flags): left out of trial ids.
    #: A class constant, not an option: a sweep file cannot set it.
    hash_exclude: ClassVar[tuple[str, ...]] = ()

    def hash_extra(self) -> dict[str, Any]:
        """What identifies the data beyond the hashed options (e.g. a user folder's name); none by default."""
        return {}


@dataclass
class Splits:
    """A dataset's full splits, as loaded: images (N, C, H, W) or patch vectors (N, D, d)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    options: type[DatasetOptions]
    load: Callable[[DatasetOptions, str], Splits]  # (options, input_kind) -> Splits
    check: Callable[[DatasetOptions], None] | None
    input_kinds: tuple[str, ...]


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    options: type[DatasetOptions],
    input_kinds: tuple[str, ...] = ("image",),
    check: Callable[[DatasetOptions], None] | None = None,
) -> Callable[[Callable[[DatasetOptions, str], Splits]], Callable[[DatasetOptions, str], Splits]]:
    def wrap(load: Callable[[DatasetOptions, str], Splits]) -> Callable[[DatasetOptions, str], Splits]:
        _REGISTRY[name] = DatasetEntry(name, options, load, check, input_kinds)
        return load

    return wrap


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        tip = suggestion(name, list_datasets())
        raise BenchInputError(f"unknown dataset '{name}'{tip}") from None


def parse_options(dataset: dict[str, Any]) -> DatasetOptions:
    """Validate a `dataset:` block against its dataset's options; errors name the field."""
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise BenchInputError("expected a mapping with at least 'name' (e.g. {name: cifar10})")
    entry = dataset_entry(dataset["name"])
    try:
        return entry.options.model_validate(dataset)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = sorted(entry.options.model_fields)
            hint = difflib.get_close_matches(loc, allowed, n=1)
            tip = f"; did you mean '{hint[0]}'?" if hint else f" (options of {entry.name}: {', '.join(allowed)})"
            raise BenchInputError(f"{loc}: unknown option of dataset '{entry.name}'{tip}") from None
        raise BenchInputError(f"{loc}: {err['msg']} (got {err.get('input')!r})") from None


def resolve_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset block with every option filled in (what a trial config stores)."""
    return parse_options(dataset).model_dump()


def dataset_hash_view(resolved: dict[str, Any]) -> dict[str, Any]:
    """The options that identify the data: non-default ones, minus paths and download flags."""
    options = parse_options(resolved)
    view = options.model_dump(exclude_defaults=True, exclude=set(options.hash_exclude))
    view.update(options.hash_extra())
    view["name"] = options.name
    return view


def check_available(dataset: dict[str, Any]) -> None:
    """Raise DataUnavailable (naming the expected path) if the data is not on disk and may not be fetched."""
    options = parse_options(dataset)
    entry = dataset_entry(options.name)
    if entry.check is not None:
        entry.check(options)


def load_splits(dataset: dict[str, Any], input_kind: str = "image") -> Splits:
    options = parse_options(dataset)
    entry = dataset_entry(options.name)
    if input_kind not in entry.input_kinds:
        raise BenchInputError(
            f"dataset '{options.name}' has no {input_kind} form (it has: {', '.join(entry.input_kinds)})"
        )
    return entry.load(options, input_kind)
