"""Feature-map variance per block (Park & Kim): MSAs reduce it, Convs and MLPs increase it.

The spatial variance of each block output (the residual stream, as a (B, C, h, w) map),
per image and channel, averaged over both, on the first test images.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from bench.analysis.fourier import block_rows, draw_per_block, held_out_feature_maps, per_block_curves
from bench.analysis.probes import image_model, preserved
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot


def feature_map_variance(feature_map: torch.Tensor) -> float:
    """Variance over the spatial positions, per image and channel (population variance), averaged."""
    if feature_map.ndim != 4:
        raise ValueError(f"expected a (batch, channels, h, w) map, got shape {tuple(feature_map.shape)}")
    return float(feature_map.double().flatten(2).var(dim=2, unbiased=False).mean())


class VarianceOptions(AnalysisOptions):
    n_samples: int = Field(256, ge=1)  # test images (the first ones, the same for every trial)
    batch_size: int = Field(128, ge=1)


@register_analysis("variance", VarianceOptions, applies=image_model)
def variance_analysis(ctx: AnalysisContext, options: VarianceOptions) -> list[dict[str, Any]]:
    """Feature-map variance of every block that has a spatial map, with its normalised depth and kind."""
    with preserved(ctx.model):
        maps = held_out_feature_maps(ctx, options.n_samples, options.batch_size)
    rows = block_rows(ctx, maps)
    for i, name, _, fmap in maps:
        rows.append({"metric": "variance", "layer": name, "index": i, "value": feature_map_variance(fmap)})
    return rows


@register_plot("variance")
def plot_variance(frame: Any) -> Any:
    """Feature-map variance against normalised depth per model (log scale: it grows along the stream)."""
    from bench.analysis.figures import legend_outside, model_colors, new_figure, no_data

    fig, (ax,) = new_figure(1, 1, width=8.0, height=4.2)
    curves = per_block_curves(frame, "variance")
    if curves.empty:
        no_data(ax, "variance")
    else:
        draw_per_block(ax, curves, model_colors(sorted(frame["model"].dropna().unique())))
        if (curves["mean"] > 0).all():
            ax.set_yscale("log")
        legend_outside(fig, ax)
    ax.set_ylabel("feature-map variance")
    ax.set_title("Feature-map variance vs depth")
    return fig
