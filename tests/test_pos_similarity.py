"""Positional-embedding similarity maps (bench.analysis.pos_similarity): which P, the numbers, the figure."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from bench.analysis import resolve_analyses, run_analysis
from bench.analysis.pos_similarity import (cosine_similarities, neighbour_gap, plot_pos_similarity,
                                           positional_embeddings, tiled)
from bench.models import create_model
from tests.helpers.analysis import context, tiny_data


def _vit(name: str, **args) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=4, img_size=16, patch_size=4, depth=2, dim=32, heads=2, **args)


def test_which_positional_embeddings_a_vit_has() -> None:
    vanilla, shared, per_layer = _vit("vit_ti"), _vit("vit_ti_pos"), _vit("vit_ti_pos", pos_shared=False)
    assert [(t, tuple(p.shape)) for t, p in positional_embeddings(vanilla)] == [("pos_embed", (16, 32))]  # CLS row dropped
    assert [(t, tuple(p.shape)) for t, p in positional_embeddings(shared)] == [("pos_embed", (16, 32))]
    assert [(t, tuple(p.shape)) for t, p in positional_embeddings(per_layer)] == [("0", (16, 32)), ("1", (16, 32))]
    assert torch.equal(positional_embeddings(per_layer)[1][1], per_layer.blocks_[1].msa.attn.pos.detach()[1:])
    no_cls = _vit("vit_ti", class_token=False)
    assert tuple(positional_embeddings(no_cls)[0][1].shape) == (16, 32)


def test_neighbour_gap_tells_a_smooth_embedding_from_a_random_one() -> None:
    side = 6
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    # A smooth 2-D code of each position (as a trained ViT's P tends to be): nearby rows are similar.
    freqs = torch.tensor([0.3, 0.6])
    smooth = torch.cat([f(ys.flatten()[:, None] * freqs) for f in (torch.sin, torch.cos)] +
                       [f(xs.flatten()[:, None] * freqs) for f in (torch.sin, torch.cos)], dim=1)
    cos = cosine_similarities(smooth)
    assert torch.allclose(cos.diagonal(), torch.ones(side * side, dtype=cos.dtype))
    assert neighbour_gap(cos, side) > 0.3
    torch.manual_seed(0)
    assert abs(neighbour_gap(cosine_similarities(torch.randn(side * side, 384)), side)) < 0.02
    assert math.isnan(neighbour_gap(cos, 5))  # not a 5 x 5 grid


def test_tiles_lay_each_positions_row_on_the_grid() -> None:
    cos = torch.arange(16.0).repeat(16, 1).numpy()  # row i: the values 0..15
    cos[5] = -1.0
    image = tiled(cos, 4)
    assert image.shape == (19, 19)
    assert (image[0:4, 0:4] == torch.arange(16.0).reshape(4, 4).numpy()).all()
    assert (image[5:9, 5:9] == -1.0).all()  # position 5 = row 1, column 1
    assert math.isnan(image[4, 0]) and math.isnan(image[0, 4])


def test_the_analysis_stores_maps_and_the_figure_draws_one_panel_per_model() -> None:
    data = tiny_data(size=16)
    frames = []
    for name, model in (("vit_ti", _vit("vit_ti")), ("vit_ti_pos", _vit("vit_ti_pos", pos_shared=False))):
        specs = resolve_analyses(["pos_similarity"], name, "cifar10")
        rows = pd.DataFrame(run_analysis(specs[0], context(model, data)))
        rows["trial_id"], rows["model"], rows["dataset"], rows["seed"] = f"t-{name}", name, "cifar10", 0
        frames.append(rows)
    assert resolve_analyses(["pos_similarity"], "resnet18", "cifar10") == []  # no positional embedding
    frame = pd.concat(frames, ignore_index=True)
    vanilla = frame[frame.trial_id == "t-vit_ti"]
    assert (vanilla.metric == "cos").sum() == 16 * 16 and set(vanilla[vanilla.metric == "cos"].layer) == {"pos_embed"}
    assert vanilla[vanilla.metric == "grid"].value.tolist() == [4.0]
    per_layer = frame[(frame.trial_id == "t-vit_ti_pos") & (frame.metric == "neighbour_gap")]
    assert sorted(per_layer.layer) == ["0", "1"]
    fig = plot_pos_similarity(frame)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3  # the vanilla ViT's P, and the per-layer P of both positional layers
    titles = " | ".join(ax.get_title() for ax in images)
    assert "P added to the tokens" in titles and "layer 0's P" in titles and "layer 1's P" in titles
