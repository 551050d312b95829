"""Cosine similarity of a ViT's learned positional embeddings (Jelassi et al. 2022, real-data maps).

Jelassi, Sander & Li show, for ViTs trained on CIFAR/SVHN, the cosine similarity of the
learned positional encodings P between patch positions: where the attention is positional,
its map S = softmax(P W_Q (P W_K)^T) is built from P, and a P whose similarities form local
blocks is the image analogue of patch association (their Def. 2.2 on P^T P). This analysis
stores, per learned P, the (N, N) cosine similarities of its patch rows (CLS row dropped),
as the ViT paper draws them: one tile per patch position, showing its similarity to every
other position on the image grid.

Which P (`positional_embeddings`): a positional ViT with one P shared by its layers
(`pos_shared`, the default) has one map (`layer="pos_embed"`, the same P for every layer);
with a P per layer (`pos_shared: false`), one map per layer (`layer="<layer>"`); a vanilla
ViT has its one P added to the tokens (`layer="pos_embed"`).

Rows: `metric="cos", layer, index=i*N+j` the similarities; `neighbour_gap` per map, the mean
similarity of grid 4-neighbours minus that of all other off-diagonal pairs (0 for an
unstructured P, large when nearby patches have similar embeddings); `grid` (side of the
patch grid); `shuffle_grid` when the data is block-shuffled (for the figure's labels).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot


def positional_embeddings(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(layer tag, P of the patch tokens (N, dim)) for every learned positional embedding of a ViT."""
    prefix = getattr(model, "num_prefix_tokens", 0)
    stem_pos = getattr(getattr(model, "stem", None), "pos_embed", None)
    out: list[tuple[str, torch.Tensor]] = []
    if stem_pos is not None:
        out.append(("pos_embed", stem_pos.detach()[0, prefix:]))
    for i, block in enumerate(getattr(model, "blocks_", [])):
        own = getattr(getattr(getattr(block, "msa", None), "attn", None), "pos", None)
        if isinstance(own, torch.Tensor):
            out.append((str(i), own.detach()[prefix:]))
    return out


def cosine_similarities(pos: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarities of the rows of P."""
    unit = nn.functional.normalize(pos.double(), dim=-1)
    return unit @ unit.T


def neighbour_gap(cos: torch.Tensor, side: int) -> float:
    """Mean similarity of 4-neighbours on the side x side grid minus that of the other off-diagonal pairs."""
    n = side * side
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    manhattan = (coords[:, None, :] - coords[None, :, :]).abs().sum(-1)
    near, far = manhattan == 1, manhattan > 1
    if not near.any() or not far.any() or cos.shape[0] != n:
        return float("nan")
    return float(cos[near].mean() - cos[far].mean())


def _positional(model: str) -> bool:
    from bench.models import model_entry

    try:
        return model_entry(model).family == "vit_pos"
    except Exception:  # a model name this installation does not know: say nothing about it
        return False


def _applies(model: str, dataset: str) -> bool:
    from bench.models import model_entry

    return model_entry(model).family in ("vit", "vit_pos")


@register_analysis("pos_similarity", AnalysisOptions, applies=_applies)
def run_pos_similarity(ctx: AnalysisContext, options: AnalysisOptions) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for tag, pos in positional_embeddings(ctx.model):
        cos = cosine_similarities(pos.cpu())
        side = math.isqrt(cos.shape[0])
        if side * side != cos.shape[0]:
            continue  # tokens that do not form a square grid: no image layout to draw
        rows.append({"metric": "grid", "layer": tag, "index": None, "value": side})
        rows.append({"metric": "neighbour_gap", "layer": tag, "index": None, "value": neighbour_gap(cos, side)})
        rows += [{"metric": "cos", "layer": tag, "index": j, "value": v} for j, v in enumerate(cos.flatten().tolist())]
    shuffle = ctx.data.meta.get("shuffle_grid") if isinstance(ctx.data.meta, dict) else None
    if rows and shuffle is not None:
        rows.append({"metric": "shuffle_grid", "layer": None, "index": None, "value": shuffle})
    return rows


def tiled(cos: np.ndarray, side: int) -> np.ndarray:
    """The ViT paper's layout: tile (r, c) shows position (r, c)'s similarity to every position,
    tiles separated by one blank (NaN) row/column."""
    step = side + 1
    image = np.full((side * step - 1, side * step - 1), np.nan)
    for i in range(side * side):
        r, c = divmod(i, side)
        image[r * step : r * step + side, c * step : c * step + side] = cos[i].reshape(side, side)
    return image


@register_plot("pos_similarity")
def plot_pos_similarity(frame: Any) -> Any:
    """One panel per model and data (the lowest seed's trial, its last analysed epoch, one per learned P):
    the cosine similarity of each patch position's embedding to every other position's."""
    import pandas as pd

    from bench.analysis.figures import last_epoch, new_figure, no_data

    frame = last_epoch(frame)
    cos_rows = frame[frame["metric"] == "cos"]
    if cos_rows.empty:
        fig, (ax,) = new_figure(1, 1)
        no_data(ax, "positional-embedding similarity")
        return fig
    trials = frame.drop_duplicates("trial_id").copy()
    shuffle = frame[frame["metric"] == "shuffle_grid"].set_index("trial_id")["value"]
    trials["shuffle"] = trials["trial_id"].map(shuffle)
    trials["cell"] = trials.apply(
        lambda t: (t.get("stage") or "", t["model"], t.get("dataset") or "",
                   "" if pd.isna(t["shuffle"]) else f"shuffle {int(t['shuffle'])} px"), axis=1)
    chosen = trials.sort_values(["cell", "seed"]).drop_duplicates("cell")
    panels = [(t, tag) for _, t in chosen.iterrows()
              for tag in sorted(cos_rows[cos_rows["trial_id"] == t["trial_id"]]["layer"].unique(), key=str)]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = new_figure(rows, cols, width=3.3 * cols + 0.8, height=3.5 * rows)
    gaps = frame[frame["metric"] == "neighbour_gap"]
    image = None
    for ax, (trial, tag) in zip(axes, panels):
        values = cos_rows[(cos_rows["trial_id"] == trial["trial_id"]) & (cos_rows["layer"] == tag)]
        values = values.sort_values("index")["value"].to_numpy(dtype=float)
        n = math.isqrt(len(values))
        side = math.isqrt(n)
        image = ax.imshow(tiled(values.reshape(n, n), side), cmap="viridis", vmin=-1, vmax=1)
        gap = gaps[(gaps["trial_id"] == trial["trial_id"]) & (gaps["layer"] == tag)]["value"]
        where = f"layer {tag}'s P" if tag != "pos_embed" else (
            "P shared by all layers" if _positional(trial["model"]) else "P added to the tokens")
        label = " ".join(p for p in trial["cell"][1:] if p)
        gap_text = f", neighbour gap {gap.iloc[0]:+.2f}" if len(gap) and not pd.isna(gap.iloc[0]) else ""
        ax.set_title(f"{label}\n{where} (seed {int(trial['seed'])}{gap_text})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.7, label="cosine similarity")
    fig.suptitle("Positional-embedding similarity: tile (r, c) = position (r, c) vs every position", fontsize=9)
    return fig
