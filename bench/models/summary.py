"""The registry as a table: what `bench models` prints."""

from __future__ import annotations

from typing import Any

from bench.models.measure import count_flops, count_params
from bench.models.registry import create_model, list_models, model_entry


def describe_models(pattern: str = "*", img_size: int = 32, num_classes: int = 100) -> list[dict[str, Any]]:
    """One dict per image model matching `pattern`: name, family, paper, params, GFLOPs at img_size."""
    rows = []
    for name in list_models(pattern):
        entry = model_entry(name)
        if entry.input_kind != "image":
            continue
        model = create_model(name, num_classes, img_size=img_size)
        rows.append({
            "name": name, "family": entry.family, "paper": entry.paper,
            "params": count_params(model), "gflops": count_flops(model, (3, img_size, img_size)) / 1e9,
        })
    return rows


def format_models_table(rows: list[dict[str, Any]], img_size: int, num_classes: int) -> str:
    lines = [f"{'name':<16} {'family':<10} {'params':>9} {'GFLOPs':>8}  paper   (img {img_size}px, {num_classes} classes)"]
    for r in rows:
        lines.append(f"{r['name']:<16} {r['family']:<10} {r['params'] / 1e6:>8.2f}M {r['gflops']:>8.3f}  {r['paper']}")
    return "\n".join(lines)
