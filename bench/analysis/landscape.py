"""Loss landscapes along random directions, as Park & Kim compute them (how-do-vits-work:
ops/loss_landscapes.py, ops/norm.py, losslandscape.ipynb), after Li et al. 2018.

Two random Gaussian directions in parameter space, normalised against the trained weights;
the loss is evaluated at w + a d1 (1-D) or w + a d1 + b d2 (2-D) on a grid over
[-span, span], on a fixed set of augmented training batches, in eval mode. The grid always
holds the origin exactly, where the value is the trained model's loss on those batches.
The weights are restored exactly. The authors' choices, each the default here:

- Excluded parameters (direction 0): every tensor with fewer than 2 dims (biases, norm
  layers: their `ignore_bn`), and parameters whose name matches `exclude` (their notebook's
  `kws=["pos_embed", "relative_position"]`; bench names its relative-position bias tables
  `rel_bias`, so that is on the list too).
- Normalisation (`normalization: authors`): their `normalize_filter` rescales the direction by
  `norm(w, dim=0) / (norm(d, dim=0) + 1e-7)`, i.e. along the first dimension: for a conv
  kernel (out, in, k, k) each (in, k, k) position across output filters, for a linear layer
  (out, in) each input column. `normalization: filter` is Li et al.'s per-filter reading
  (each slice along the first dimension, a conv filter or a linear row, to that slice's norm),
  bench's before issue 26.
- L2 term (`l2: authors`): the notebook plots NLL + weight_decay * l2 with their `norm.l2`,
  the sum over *all* parameters of each tensor's Euclidean norm (not squared, biases, norms
  and position embeddings included). `l2: decayed` is bench's Hessian objective,
  (weight_decay / 2) * ||w||^2 over the decayed parameters (bench's before issue 26);
  `l2: none` the loss alone.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from bench.analysis.probes import l2_term, preserved, training_batches, training_loss, weight_decay
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot

#: The authors' excluded parameter names (searched as regular expressions), plus bench's name for
#: the relative-position bias tables their "relative_position" meant.
AUTHORS_EXCLUDE = ("pos_embed", "relative_position", "rel_bias")


def filter_normalized_direction(params: list[torch.Tensor], generator: torch.Generator | None = None,
                                normalization: str = "filter") -> list[torch.Tensor]:
    """A random direction scaled to the weights' norms; tensors with fewer than 2 dims get 0.

    'filter': each slice along the first dimension to that slice's norm in `params` (Li et al.).
    'authors': norms taken over the first dimension, as Park & Kim's `normalize_filter`.
    """
    direction = []
    for p in params:
        if p.ndim <= 1:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        w = p.detach()
        if normalization == "authors":
            direction.append(w.norm(dim=0, keepdim=True) / (d.norm(dim=0, keepdim=True) + 1e-7) * d)
            continue
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        p_norm = w.flatten(1).norm(dim=1)
        direction.append(d * (p_norm / d_norm).view(-1, *([1] * (p.ndim - 1))))
    return direction


@torch.no_grad()
def authors_l2(model: nn.Module, coefficient: float) -> torch.Tensor:
    """weight_decay * sum over every parameter of its Euclidean norm (the authors' NLL + l2 plot)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for p in model.parameters():
        total = total + p.norm()
    return coefficient * total


def grid_axis(points: int, span: float) -> list[float]:
    """`points` coordinates evenly spaced on [-span, span]; the middle one is exactly 0."""
    half = (points - 1) / 2
    return [0.0 if i == half else span * (i - half) / half for i in range(points)] if points > 1 else [0.0]


L2Form = Literal["authors", "decayed", "none"]


@torch.no_grad()
def loss_at(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: Any, l2: float,
            l2_form: L2Form = "decayed") -> float:
    """Mean training loss over `batches` (weighted by batch size) plus the L2 term (`l2` is the weight decay)."""
    total, count = 0.0, 0
    for x, y in batches:
        total += float(loss_fn(model(x), y)) * len(x)
        count += len(x)
    loss = total / max(count, 1)
    if not l2 or l2_form == "none":
        return loss
    return loss + float(authors_l2(model, l2) if l2_form == "authors" else l2_term(model, l2))


class LandscapeOptions(AnalysisOptions):
    dims: int = Field(2, ge=1, le=2)  # 1-D curve or 2-D surface
    points: int = Field(11, ge=1)  # per axis, odd so the origin is on the grid
    span: float = Field(1.0, gt=0)  # the grid covers [-span, span] per direction
    batch_size: int = Field(128, ge=1)
    n_batches: int = Field(4, ge=1)
    #: 'authors': weight_decay x sum of parameter norms; 'decayed': bench's Hessian L2 term; 'none'.
    #: (true / false, the earlier boolean, read as 'decayed' / 'none'.)
    l2: L2Form = "authors"
    #: Parameters left out of the directions (regular expressions searched in parameter names).
    exclude: list[str] = Field(default_factory=lambda: list(AUTHORS_EXCLUDE))
    normalization: Literal["authors", "filter"] = "authors"
    seed: int = 0

    @field_validator("l2", mode="before")
    @classmethod
    def _legacy_bool(cls, value: Any) -> Any:
        return {True: "decayed", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("exclude")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return value

    @field_validator("points")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so that the grid holds the trained weights (the origin)")
        return value


def loss_surface(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: Any, l2: float,
                 dims: int, points: int, span: float, seed: int = 0, l2_form: L2Form = "decayed",
                 exclude: tuple[str, ...] | list[str] = (), normalization: str = "filter") -> tuple[list[float], np.ndarray]:
    """(axis, losses): losses has shape (points,) or (points, points), [i, j] at (axis[i], axis[j]).

    Parameters whose name matches a pattern of `exclude` get a zero direction (they stay at their trained values).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    origin = [p.detach().clone() for p in params]
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    excluded = [any(re.search(pattern, name) for pattern in exclude) for name, _ in named]
    directions = []
    for _ in range(dims):
        direction = filter_normalized_direction(origin, gen, normalization)
        directions.append([torch.zeros_like(d) if out else d for d, out in zip(direction, excluded)])
    axis = grid_axis(points, span)
    losses = np.zeros((points,) * dims)
    try:
        with torch.no_grad():
            for cell in np.ndindex(*losses.shape):
                for k, p in enumerate(params):
                    p.copy_(origin[k])
                    for d, i in zip(directions, cell):
                        if axis[i] != 0.0:
                            p.add_(d[k], alpha=axis[i])
                losses[cell] = loss_at(model, batches, loss_fn, l2, l2_form)
    finally:
        with torch.no_grad():
            for p, o in zip(params, origin):
                p.copy_(o)
    return axis, losses


@register_analysis("landscape", LandscapeOptions)
def landscape_analysis(ctx: AnalysisContext, options: LandscapeOptions) -> list[dict[str, Any]]:
    """The loss (+ L2 term) on a 1-D or 2-D grid of normalised random directions around the trained weights."""
    batches = training_batches(ctx, options.batch_size, options.n_batches)
    l2 = weight_decay(ctx) if options.l2 != "none" else 0.0
    with preserved(ctx.model):
        axis, losses = loss_surface(ctx.model, batches, training_loss(ctx), l2, options.dims, options.points,
                                    options.span, options.seed, options.l2, options.exclude, options.normalization)
    name = f"loss_{options.dims}d"
    rows = [{"metric": "alpha", "layer": None, "index": i, "value": a} for i, a in enumerate(axis)]
    rows += [{"metric": name, "layer": None, "index": int(flat), "value": float(v)}
             for flat, v in enumerate(losses.ravel())]
    centre = tuple([len(axis) // 2] * options.dims)
    rows.append({"metric": "loss_origin", "layer": None, "index": None, "value": float(losses[centre])})
    return rows


@register_plot("landscape")
def plot_landscape(frame: Any) -> Any:
    """1-D: loss along the direction per model; 2-D: one contour panel per model (mean over its trials)."""
    from bench.analysis.figures import last_epoch, model_colors, new_figure, no_data

    frame = last_epoch(frame)
    models = sorted(frame["model"].dropna().unique())
    surfaces = frame[frame["metric"] == "loss_2d"]
    curves = frame[frame["metric"] == "loss_1d"]
    alphas = frame[frame["metric"] == "alpha"]
    panels = max(1, len(models)) if not surfaces.empty else 1
    extra = 1 if not curves.empty and not surfaces.empty else 0
    fig, axes = new_figure(1, panels + extra, width=4.2 * (panels + extra), height=3.9)
    colors = model_colors(models)
    if surfaces.empty and curves.empty:
        no_data(axes[0], "landscape")
        return fig
    if not curves.empty:
        ax = axes[-1]
        for model in models:
            c = curves[curves["model"] == model]
            a = alphas[alphas["trial_id"].isin(c["trial_id"])]
            if c.empty:
                continue
            mean = c.groupby("index")["value"].mean()
            axis = a.groupby("index")["value"].first().reindex(mean.index)
            ax.plot(axis.to_numpy(), mean.to_numpy(), marker="o", markersize=3, color=colors[model], label=model)
        ax.set_xlabel("step along a filter-normalised direction")
        ax.set_ylabel("training loss (+ L2)")
        ax.set_title("1-D loss landscape")
        ax.legend(fontsize=8)
    if not surfaces.empty:
        for ax, model in zip(axes, models):
            s = surfaces[surfaces["model"] == model]
            a = alphas[alphas["trial_id"].isin(s["trial_id"])].groupby("index")["value"].first().sort_index()
            if s.empty or a.empty:
                no_data(ax, f"{model} 2-D landscape")
                continue
            n = len(a)
            z = s.groupby("index")["value"].mean().reindex(range(n * n)).to_numpy().reshape(n, n)
            grid = a.to_numpy()
            lo, hi = np.nanmin(z), np.nanmax(z)
            # Loss grows fast away from the minimum: log-spaced levels keep the basin readable.
            levels = np.geomspace(lo, hi, 15) if lo > 0 and hi > 10 * lo else np.linspace(lo, hi, 15)
            cs = ax.contour(grid, grid, z.T, levels=levels, cmap="viridis", linewidths=1.0)
            ax.clabel(cs, cs.levels[::3], fontsize=7, fmt="%.2g")
            ax.plot([0], [0], marker="+", color="k")
            ax.set_title(f"{model}: 2-D loss landscape")
            ax.set_xlabel("direction 1")
            ax.set_ylabel("direction 2")
            ax.set_aspect("equal")
    return fig
