"""The model registry, in the style of timm's: `@register_model` on a builder function.

A builder's keyword arguments are the model's `model_args`; the registry reads them
from the signature so a sweep file can be checked before any model is built.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from bench.errors import BenchInputError

# The papers a model reproduces, as `bench models` shows them.
PAPER_PARK = "Park & Kim 2022"
PAPER_JELASSI = "Jelassi et al. 2022"

# Arguments every builder takes from the data, not from model_args.
DATA_ARGS = ("num_classes", "img_size", "in_chans")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: str
    arg_names: frozenset[str]
    input_kind: str  # "image" (B, C, H, W) or "patches" (B, D, d)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    family: str, paper: str = "", input_kind: str = "image"
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name; its keyword args become model_args.

    Patch models (`input_kind="patches"`) get the number of patches D as `img_size` and
    the patch dimension d as `in_chans`, so every builder has the same signature.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{fn.__name__}: builders list their arguments explicitly (no **kwargs)")
        names = frozenset(n for n in params if n not in DATA_ARGS)
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, family, paper, names, input_kind)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _REGISTRY


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BenchInputError(f"unknown model '{name}' (known: {', '.join(list_models())})") from None


def model_arg_names(name: str) -> frozenset[str]:
    """The model_args this model accepts."""
    return model_entry(name).arg_names


def check_model_arg(name: str, key: str, value: Any) -> str | None:
    """Why `value` cannot be model `name`'s argument `key` (by the builder's type hint), or None.

    A type check, before any model is built: `depth: deep` fails here, in a second, not
    in a trial an hour into a sweep.
    """
    import typing

    from pydantic import TypeAdapter, ValidationError

    hints = typing.get_type_hints(model_entry(name).builder)
    if key not in hints:
        return None
    try:
        TypeAdapter(hints[key]).validate_python(value)
    except ValidationError as exc:
        expected = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
        return f"expected {expected}, got {value!r} ({exc.errors()[0]['msg']})"
    except Exception:  # a hint pydantic cannot check: leave it to the builder
        return None
    return None


def all_model_arg_names() -> frozenset[str]:
    """Every model_arg some registered model accepts (to tell a typo from a foreign arg)."""
    return frozenset().union(*(e.arg_names for e in _REGISTRY.values()))


def create_model(name: str, num_classes: int, img_size: int = 32, in_chans: int = 3, **model_args: Any) -> nn.Module:
    """Build a registered model; None-valued model_args are dropped (as timm does)."""
    entry = model_entry(name)
    args = {k: v for k, v in model_args.items() if v is not None}
    unknown = sorted(set(args) - entry.arg_names)
    if unknown:
        raise BenchInputError(
            f"model '{name}' takes no argument {', '.join(unknown)} (it takes: {', '.join(sorted(entry.arg_names))})"
        )
    try:
        return entry.builder(num_classes=num_classes, img_size=img_size, in_chans=in_chans, **args)
    except (TypeError, ValueError) as exc:
        raise BenchInputError(f"model '{name}' with {args}: {exc}") from None
