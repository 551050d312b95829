"""The registry as a table: what `bench models` prints."""

from __future__ import annotations

import inspect
from typing import Any

from bench.errors import BenchInputError
from bench.models.measure import count_flops, count_params
from bench.models.registry import create_model, list_models, model_entry


def describe_models(pattern: str = "*", img_size: int = 32, num_classes: int = 100) -> list[dict[str, Any]]:
    """One dict per model matching `pattern`: name, family, paper, params, GFLOPs at img_size, note.

    Image models are built with their defaults at `img_size` (the note names the stem of
    models that have one: CIFAR by default, whatever the size); where an architecture
    cannot take that size, params and gflops are None and `note` says why. Patch models
    (sized by their data, not by an image size) are listed with None and a note.
    """
    rows = []
    for name in list_models(pattern):
        entry = model_entry(name)
        row: dict[str, Any] = {"name": name, "family": entry.family, "paper": entry.paper,
                               "params": None, "gflops": None, "note": ""}
        if entry.input_kind != "image":
            row["note"] = f"{entry.input_kind} model: sized by its data"
        else:
            try:
                model = create_model(name, num_classes, img_size=img_size)
            except BenchInputError as exc:
                row["note"] = str(exc)
            else:
                row["params"] = count_params(model)
                row["gflops"] = count_flops(model, (3, img_size, img_size)) / 1e9
                if "stem" in entry.arg_names:  # say which stem the numbers are for
                    row["note"] = f"stem={inspect.signature(entry.builder).parameters['stem'].default}"
        rows.append(row)
    return rows


def format_models_table(rows: list[dict[str, Any]], img_size: int, num_classes: int) -> str:
    lines = [f"{'name':<16} {'family':<14} {'params':>9} {'GFLOPs':>8}  paper   (img {img_size}px, {num_classes} classes)"]
    for r in rows:
        params = f"{r['params'] / 1e6:>8.2f}M" if r.get("params") is not None else f"{'-':>9}"
        gflops = f"{r['gflops']:>8.3f}" if r.get("gflops") is not None else f"{'-':>8}"
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{r['name']:<16} {r['family']:<14} {params} {gflops}  {r['paper']}{note}")
    return "\n".join(lines)
