"""Patch association (Jelassi, Sander & Li 2022, Def. 2.2): has attention learned the partition?

A model performs patch association when, for every set S_l and every i in S_l, the C
largest entries of row i of its positional scores (A for `pa_theory`, P^T P or the
positional attention maps for ViTs) are exactly S_l, row i's own (diagonal) entry
included. That is the default here. A between-set entry above the diagonal therefore
breaks association even when the set-mates lead the rest of the row.

The earlier, weaker reading is kept as a named variant (`include_diagonal=False`): the
diagonal is left out and the top C - 1 off-diagonal entries of row i must be S_l minus i
(`pa_theory`'s diagonal is held fixed, and an attention map's diagonal is a self-weight,
so this variant asks only whether the learned off-diagonal entries rank the set-mates first).

Metrics (`patch_association(scores, partition)`):
- `exact`: share of rows whose C largest entries (diagonal included) are exactly their set,
  strictly (every member of the set scores above every other patch; ties do not count);
- `soft`: mean |TopC(row i) ∩ S(i)| / C (chance about C/D);
- `gap`: mean within-set minus mean between-set off-diagonal score (the diagonal is left
  out of both means in either variant: for `pa_theory` it is fixed, not learned).
With `include_diagonal=False`, `exact` and `soft` rank the top C - 1 off-diagonal entries
against the set-mates instead (soft's chance (C-1)/(D-1)).

The `patch_association` analysis records both variants (`exact`, `soft`, `gap` per Def. 2.2,
and `exact_offdiag`, `soft_offdiag`) over training (`every: N` epochs) with, for
`pa_theory`, |cos(v, w*)| (v aligns with w* first, then A learns the sets), and for ViTs
one set per layer and head of the positional attention maps (CLS row and column dropped;
a vanilla ViT's maps depend on the input and are averaged over a test batch) and one for
the cosine similarities of the positional embeddings. With `maps: true` (default) the
maps themselves are stored at the last epoch as rows `metric=map, layer="<layer>.<head>",
index=i*D+j`, so figures can show whether they became block-structured.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot

PARTITIONED_DATA = ("spatial", "spatial_control")
MODEL_FAMILIES = ("theory", "vit", "vit_pos")


def patch_association(scores: torch.Tensor, partition: list[list[int]],
                      include_diagonal: bool = True) -> dict[str, float]:
    """exact / soft / gap of a (D, D) score matrix against the sets of `partition` (see module doc).

    `include_diagonal=True` is Def. 2.2 (row i's C largest entries, its own included, must be
    its set); `False` is the off-diagonal variant (the top C - 1 off-diagonal entries must be
    its set-mates)."""
    scores = scores.detach().double().cpu()
    d = scores.shape[0]
    set_of = torch.empty(d, dtype=torch.long)
    for index, members in enumerate(partition):
        set_of[list(members)] = index
    if sorted(int(i) for s in partition for i in s) != list(range(d)):
        raise ValueError(f"partition does not cover the {d} rows of the scores exactly once")
    same = set_of[:, None] == set_of[None, :]
    eye = torch.eye(d, dtype=torch.bool)
    within, between = same & ~eye, ~same
    # The entries ranked in row i: the whole row (Def. 2.2) or the row without its diagonal.
    members = same if include_diagonal else within
    ranked = scores if include_diagonal else scores.masked_fill(eye, float("-inf"))
    exact_rows, soft_sum = 0, 0.0
    for i in range(d):
        k = int(members[i].sum())
        if k == 0 or not between[i].any():  # nothing to rank against: trivially associated
            exact_rows += 1
            soft_sum += 1.0
            continue
        top = ranked[i].topk(k).indices
        soft_sum += int(members[i, top].sum()) / k
        # Exact: every member strictly above every other patch (a tie is not association:
        # an untrained, all-equal row would otherwise pass whenever the tie-break is lucky).
        exact_rows += bool(scores[i, members[i]].min() > scores[i, between[i]].max())
    gap = scores[within].mean() - scores[between].mean() if within.any() and between.any() else torch.tensor(0.0)
    return {"exact": exact_rows / d, "soft": soft_sum / d, "gap": float(gap)}


def association_metrics(scores: torch.Tensor, partition: list[list[int]]) -> dict[str, float]:
    """Both readings for the analysis table: Def. 2.2 (`exact`, `soft`, `gap`) and the
    off-diagonal variant (`exact_offdiag`, `soft_offdiag`)."""
    metrics = patch_association(scores, partition)
    offdiag = patch_association(scores, partition, include_diagonal=False)
    return {**metrics, "exact_offdiag": offdiag["exact"], "soft_offdiag": offdiag["soft"]}


class PatchAssociationOptions(AnalysisOptions):
    batch: int = Field(64, ge=1)  # test images whose attention maps a vanilla ViT averages
    maps: bool = True  # store the score maps themselves at the last epoch


def _applies(model: str, dataset: str) -> bool:
    from bench.models import model_entry

    return dataset in PARTITIONED_DATA and model_entry(model).family in MODEL_FAMILIES


def _rows(layer: str, index: int | None, scores: torch.Tensor, partition: list[list[int]],
          with_map: bool) -> list[dict[str, Any]]:
    rows = [{"metric": k, "layer": layer, "index": index, "value": v}
            for k, v in association_metrics(scores, partition).items()]
    if with_map:
        flat = scores.detach().double().cpu().flatten().tolist()
        tag = layer if index is None else f"{layer}.{index}"
        rows += [{"metric": "map", "layer": tag, "index": j, "value": v} for j, v in enumerate(flat)]
    return rows


@register_analysis("patch_association", PatchAssociationOptions, applies=_applies)
def run_patch_association(ctx: AnalysisContext, options: PatchAssociationOptions) -> list[dict[str, Any]]:
    partition = ctx.data.meta["partition"]
    d = sum(len(s) for s in partition)
    with_maps = options.maps and ctx.epoch == ctx.config["train"]["epochs"]
    model = ctx.model
    rows: list[dict[str, Any]] = []
    if hasattr(model, "v") and hasattr(model, "positional_scores") and ctx.data.input_kind == "patches":
        rows += _rows("A", None, model.positional_scores(), partition, with_maps)
        feature = ctx.data.meta.get("feature")
        if feature is not None:
            w = torch.tensor(feature, dtype=torch.float32, device=model.v.device)
            rows.append({"metric": "cos_v_w", "layer": None, "index": None,
                         "value": abs(F.cosine_similarity(model.v.detach(), w, dim=0).item())})
        return rows

    prefix = getattr(model, "num_prefix_tokens", 0)
    x = ctx.data.normalize(ctx.data.test_x[: options.batch])
    maps = model.attention_maps(x)
    for layer, probs in enumerate(maps):
        probs = probs[:, :, prefix:, prefix:].mean(dim=0)  # (heads, D, D): CLS dropped, batch averaged
        if probs.shape[-1] != d:
            raise ValueError(f"the model has {probs.shape[-1]} patch tokens but the data has {d} patches: "
                             "patch association needs one token per data patch")
        for head in range(probs.shape[0]):
            rows += _rows(str(layer), head, probs[head], partition, with_maps)
    if hasattr(model, "positional_scores"):
        pos = model.positional_scores()[prefix:, prefix:]
        if pos.shape[-1] == d:
            rows += _rows("pos_embed", None, pos, partition, with_maps)
    return rows


@register_plot("patch_association")
def plot_patch_association(frame: Any) -> Any:
    """Left: exact patch association over training (pa_theory's A; a ViT's best head per epoch).
    Right: the end-of-training score map of the trial with the best association, diagonal blanked
    (it is fixed or a self-weight and would swamp the colour scale)."""
    import pandas as pd

    from bench.analysis.figures import model_colors, new_figure, no_data

    fig, (curve, heat) = new_figure(1, 2, width=11.0, height=4.4)
    exact = frame[(frame["metric"] == "exact") & (frame["layer"] != "pos_embed")]
    colors = model_colors(sorted(frame["model"].dropna().unique())) if "model" in frame else {}
    if exact.empty:
        no_data(curve, "exact")
    for trial_id, rows in exact.groupby("trial_id"):
        best = rows.groupby("epoch")["value"].max()  # per epoch: A, or the best ViT head
        model = rows["model"].iloc[0] if "model" in rows else "?"
        curve.plot(best.index, best.values, color=colors.get(model), alpha=0.7, linewidth=1.2,
                   label=model)
    handles, labels = curve.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        curve.legend(unique.values(), unique.keys(), fontsize=8)
    curve.set(xlabel="epoch (GD step for full-batch runs)", ylabel="exact patch association",
              title="Patch association over training", ylim=(-0.05, 1.05))
    maps = frame[frame["metric"] == "map"]
    if maps.empty:
        no_data(heat, "map")
    else:
        final = exact[exact["epoch"] == exact.groupby("trial_id")["epoch"].transform("max")]
        ranked = final.sort_values("value", ascending=False)
        ranked = ranked[ranked["trial_id"].isin(maps["trial_id"])]
        best = ranked.iloc[0] if len(ranked) else maps.iloc[0]
        tag = best["layer"] if pd.isna(best.get("index", None)) else f"{best['layer']}.{int(best['index'])}"
        chosen = maps[(maps["trial_id"] == best["trial_id"]) & (maps["layer"] == tag)]
        if chosen.empty:
            chosen = maps[maps["trial_id"] == best["trial_id"]]
            chosen = chosen[chosen["layer"] == chosen["layer"].iloc[0]]
        values = chosen.sort_values("index")["value"].to_numpy(dtype=float)
        d = int(round(len(values) ** 0.5))
        grid = values.reshape(d, d).copy()
        grid[range(d), range(d)] = float("nan")
        image = heat.imshow(grid, cmap="viridis")
        fig.colorbar(image, ax=heat, shrink=0.8)
        heat.set(title=f"scores at the end, diagonal blanked\n({chosen['layer'].iloc[0]}, trial {best['trial_id']})",
                 xlabel="patch j", ylabel="patch i")
    return fig
