"""Lesion study (Park & Kim): remove one block of a trained model and measure the accuracy drop.

A block of `blocks()` is removed by replacing its output with its input (the residual
stream passes it by), which removes a conv unit, an MSA or an MLP branch whole. Blocks
whose output shape differs from their input (the stem, downsampling layers, the first
block of a stage) cannot be bypassed and are left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import Field
from torch import nn

from bench.analysis.probes import block_kind_code, evaluate, held_out, model_blocks, normalized_depth, preserved
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


@contextlib.contextmanager
def bypassed(module: nn.Module) -> Iterator[None]:
    """Inside, `module` returns its (first) input unchanged: the block is lesioned."""

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        x = _first_input(args, kwargs)
        return x if torch.is_tensor(x) and torch.is_tensor(out) and x.shape == out.shape else out

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def bypassable(model: nn.Module, x: torch.Tensor) -> list[bool]:
    """For each block, whether its output has its input's shape (so it can be removed)."""
    blocks = model_blocks(model)
    same: dict[int, bool] = {}
    handles = []
    for i, (_, module) in enumerate(blocks):
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, i: int = i) -> None:
            inp = _first_input(args, kwargs)
            same[i] = torch.is_tensor(inp) and torch.is_tensor(out) and inp.shape == out.shape
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [same.get(i, False) for i in range(len(blocks))]


class LesionOptions(AnalysisOptions):
    n_samples: int = Field(1000, ge=1)  # test images (the first ones)
    batch_size: int = Field(250, ge=1)


@register_analysis("lesion", LesionOptions)
def lesion_analysis(ctx: AnalysisContext, options: LesionOptions) -> list[dict[str, Any]]:
    """Accuracy drop and NLL increase when each removable block is bypassed in turn."""
    model = ctx.model
    x, y = held_out(ctx, options.n_samples)
    inputs = ctx.data.normalize(x)
    blocks = model_blocks(model)
    rows: list[dict[str, Any]] = []
    with preserved(model):
        clean_acc, clean_nll = evaluate(model, inputs, y, options.batch_size)
        rows.append({"metric": "clean_acc", "layer": None, "index": None, "value": clean_acc})
        removable = bypassable(model, inputs[:2])
        for i, ((name, module), ok) in enumerate(zip(blocks, removable)):
            if not ok:
                continue
            with bypassed(module):
                acc, nll = evaluate(model, inputs, y, options.batch_size)
            rows += [
                {"metric": "acc_drop", "layer": name, "index": i, "value": clean_acc - acc},
                {"metric": "nll_increase", "layer": name, "index": i, "value": nll - clean_nll},
                {"metric": "depth", "layer": name, "index": i, "value": normalized_depth(i, len(blocks))},
                {"metric": "kind", "layer": name, "index": i, "value": block_kind_code(module)},
            ]
    return rows


@register_plot("lesion")
def plot_lesion(frame: Any) -> Any:
    """Accuracy drop per removed block against normalised depth, per model (filled: MSA blocks)."""
    from bench.analysis.figures import model_colors, new_figure, no_data
    from bench.analysis.fourier import draw_per_block, per_block_curves

    fig, (ax,) = new_figure(1, 1, width=6.8, height=4.2)
    curves = per_block_curves(frame, "acc_drop")
    if curves.empty:
        no_data(ax, "lesion")
        return fig
    curves = curves.assign(mean=100 * curves["mean"], std=100 * curves["std"])
    draw_per_block(ax, curves, model_colors(sorted(frame["model"].dropna().unique())))
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_ylabel("accuracy drop when removed (points)")
    ax.set_title("Lesion study: one block removed at a time")
    ax.legend(fontsize=8)
    return fig
