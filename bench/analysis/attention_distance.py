"""Mean attention distance per layer and head (Dosovitskiy et al.; Park & Kim's locality argument).

From `attention_maps(x)` (one dense (B, heads, N, N) map per attention layer, prefix
tokens first, then the patch tokens in row-major order of the layer's token grid): for
each patch query, the attention-weighted mean distance to the patch keys, in input
pixels (grid distance times the image size over the grid side), averaged over queries
and images. Prefix (CLS) rows and columns are dropped and each query's weights over the
patch keys renormalised. Layers whose tokens do not form a square grid are left out.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import torch
from pydantic import Field

from bench.analysis.probes import held_out, preserved
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot


def grid_distances(side: int, pixel_per_cell: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(side^2, side^2) Euclidean distances between the cells of a side x side grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    return torch.cdist(coords, coords) * pixel_per_cell


def mean_attention_distance(attn: torch.Tensor, prefix: int, img_size: int) -> torch.Tensor | None:
    """Per head: mean over images and patch queries of sum_k A[q, k] * dist(q, k), in pixels; None without a grid."""
    n = attn.shape[-1] - prefix
    side = math.isqrt(max(n, 0))
    if n <= 0 or side * side != n:
        return None
    probs = attn[..., prefix:, prefix:].double()
    probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = grid_distances(side, img_size / side, attn.device)
    per_query = (probs * dist).sum(dim=-1)  # (B, heads, queries)
    return per_query.mean(dim=(0, 2))


def attention_model(model: str, dataset: str) -> bool:
    """`applies`: image models with attention layers (their builder returns an AttentionModel)."""
    from bench.models import create_model, model_entry
    from bench.models.base import AttentionModel

    entry = model_entry(model)
    if entry.input_kind != "image":
        return False
    try:
        built = typing.get_type_hints(entry.builder).get("return")
    except Exception:  # an annotation that does not resolve: build a small one and look
        built = type(create_model(model, num_classes=2, img_size=32))
    return isinstance(built, type) and issubclass(built, AttentionModel)


class AttentionDistanceOptions(AnalysisOptions):
    n_samples: int = Field(64, ge=1)  # test images (the first ones)
    batch_size: int = Field(32, ge=1)


@register_analysis("attention_distance", AttentionDistanceOptions, applies=attention_model)
def attention_distance_analysis(ctx: AnalysisContext, options: AttentionDistanceOptions) -> list[dict[str, Any]]:
    """Mean attention distance (pixels) per attention layer and head, plus the layer's normalised depth."""
    model = ctx.model
    if not hasattr(model, "attention_maps"):
        return []
    x, _ = held_out(ctx, options.n_samples)
    names = [n for n, m in model.named_modules() if m in set(model.attention_layers())]
    prefix = getattr(model, "num_prefix_tokens", 0)
    sums: dict[int, torch.Tensor] = {}
    seen = 0
    with preserved(model):
        for start in range(0, len(x), options.batch_size):
            chunk = ctx.data.normalize(x[start : start + options.batch_size])
            for layer, attn in enumerate(model.attention_maps(chunk)):
                dist = mean_attention_distance(attn, prefix, ctx.data.img_size)
                if dist is not None:
                    sums[layer] = sums.get(layer, 0) + dist * len(chunk)
            seen += len(chunk)
    rows: list[dict[str, Any]] = []
    count = len(sums)
    for position, (layer, total) in enumerate(sorted(sums.items())):
        name = names[layer] if layer < len(names) else f"attention.{layer}"
        for head, value in enumerate((total / seen).tolist()):
            rows.append({"metric": "mean_distance", "layer": name, "index": head, "value": value})
        rows.append({"metric": "layer_depth", "layer": name, "index": layer,
                     "value": position / (count - 1) if count > 1 else 0.0})
    return rows


@register_plot("attention_distance")
def plot_attention_distance(frame: Any) -> Any:
    """Mean attention distance per head (dots) and per layer (line) against layer depth, per model."""
    from bench.analysis.figures import last_epoch, model_colors, new_figure, no_data

    frame = last_epoch(frame)
    fig, (ax,) = new_figure(1, 1, width=6.8, height=4.2)
    dist = frame[frame["metric"] == "mean_distance"]
    depth = frame[frame["metric"] == "layer_depth"][["trial_id", "layer", "value"]].rename(columns={"value": "depth"})
    if dist.empty:
        no_data(ax, "attention distance")
        return fig
    joined = dist.merge(depth, on=["trial_id", "layer"])
    colors = model_colors(sorted(frame["model"].dropna().unique()))
    for model, group in joined.groupby("model"):
        heads = group.groupby(["depth", "index"])["value"].mean().reset_index()
        ax.scatter(heads["depth"], heads["value"], s=12, alpha=0.5, color=colors[model])
        layers = heads.groupby("depth")["value"].mean()
        ax.plot(layers.index, layers.to_numpy(), marker="o", markersize=4, color=colors[model], label=model)
    ax.set_xlabel("normalised depth of the attention layer")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title("Mean attention distance per head (dots) and layer (line)")
    ax.legend(fontsize=8)
    return fig
