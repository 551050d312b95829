"""Variance, noise, lesion, landscape and attention distance: each on a case with a known answer."""

from __future__ import annotations

import math
import re

import pytest
import torch

from bench.analysis import resolve_analyses, run_analysis
from bench.analysis.attention_distance import mean_attention_distance
from bench.analysis.landscape import filter_normalized_direction, grid_axis
from bench.analysis.noise import band_mask, band_noise
from bench.analysis.variance import feature_map_variance
from tests.helpers.analysis import assert_same_state, context, model_state, one_thread, tiny_data, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def run(name: str, options: dict, model, data, model_name: str = "vit_ti") -> list[dict]:
    specs = resolve_analyses([{name: options}], model_name, "cifar10")
    assert specs, f"{name} does not apply to {model_name}"
    return run_analysis(specs[0], context(model, data))


def values(rows: list[dict], metric: str, layer=...) -> list[float]:
    return [r["value"] for r in rows if r["metric"] == metric and (layer is ... or r["layer"] == layer)]


def test_feature_map_variance_known_values_and_per_block_rows():
    assert feature_map_variance(torch.full((2, 3, 4, 4), 7.0)) == 0.0
    board = (-1.0) ** (torch.arange(4)[:, None] + torch.arange(4)[None, :])
    assert feature_map_variance(3 * board.expand(2, 3, 4, 4)) == pytest.approx(9.0)  # +-3 around 0
    model, data = tiny_model("resnet18"), tiny_data()
    before = model_state(model)
    rows = run("variance", {"n_samples": 16}, model, data, "resnet18")
    assert values(rows, "variance") and all(v > 0 for v in values(rows, "variance"))
    assert len(values(rows, "variance")) == len(model.blocks())
    assert_same_state(model, before)


def test_noise_of_amplitude_zero_costs_nothing_and_bands_are_where_they_should_be():
    mask = band_mask(32, 32, 0.5 * math.pi, 0.2)
    f = torch.fft.fftfreq(32).abs() * 2 * math.pi
    radius = torch.maximum(f[:, None], f[None, :])
    assert mask.any() and ((radius[mask] - 0.5 * math.pi).abs() <= 0.2).all()
    noise = band_noise((2, 3, 32, 32), 0.5 * math.pi, 0.2, 0.1, torch.Generator().manual_seed(0))
    assert noise.pow(2).mean(dim=(1, 2, 3)).sqrt().tolist() == pytest.approx([0.1, 0.1], rel=1e-4)
    spectrum = torch.fft.fft2(noise).abs()
    assert spectrum[..., ~mask].max() < 1e-3 * spectrum[..., mask].max()  # nothing outside the band

    model, data = tiny_model("vit_ti"), tiny_data()
    before = model_state(model)
    rows = run("noise", {"amplitude": 0.0, "n_samples": 32, "frequencies": [0.1, 0.5, 0.9]}, model, data)
    assert values(rows, "acc_drop", "band") == [0.0, 0.0, 0.0] and values(rows, "acc_drop", "random") == [0.0]
    assert values(rows, "band_frequency") == [0.1, 0.5, 0.9]
    loud = run("noise", {"amplitude": 5.0, "n_samples": 32, "frequencies": [0.5]}, model, data)
    assert values(loud, "clean_acc") == values(rows, "clean_acc")
    assert all(-1.0 <= v <= 1.0 for v in values(loud, "acc_drop"))
    assert_same_state(model, before)


def test_lesion_of_an_identity_block_costs_nothing():
    model, data = tiny_model("vit_ti"), tiny_data()
    with torch.no_grad():  # blocks.1.msa becomes the identity: its branch outputs 0
        model.blocks_[1].msa.attn.proj.weight.zero_()
        model.blocks_[1].msa.attn.proj.bias.zero_()
    before = model_state(model)
    rows = run("lesion", {"n_samples": 32}, model, data)
    drops = {r["layer"]: r["value"] for r in rows if r["metric"] == "acc_drop"}
    nll = {r["layer"]: r["value"] for r in rows if r["metric"] == "nll_increase"}
    assert "stem" not in drops  # changes shape: cannot be bypassed
    assert set(drops) == {name for name, _ in model.blocks()} - {"stem"}
    assert drops["blocks.1.msa"] == 0.0 and nll["blocks.1.msa"] == 0.0
    assert any(v != 0.0 for v in nll.values())  # removing a real block does change the model
    assert_same_state(model, before)


@pytest.mark.parametrize("dims,l2", [(1, "authors"), (2, "decayed")])
def test_landscape_at_the_origin_is_the_trained_loss(dims, l2):
    from bench.analysis.landscape import authors_l2
    from bench.analysis.probes import l2_term

    model, data = tiny_model("resnet18", size=8), tiny_data(size=8)
    ctx = context(model, data)
    before = model_state(model)
    rows = run("landscape", {"dims": dims, "points": 5, "span": 0.5, "n_batches": 2, "batch_size": 16, "l2": l2},
               model, data, "resnet18")
    assert values(rows, "alpha") == [-0.5, -0.25, 0.0, 0.25, 0.5]
    grid = values(rows, f"loss_{dims}d")
    assert len(grid) == 5**dims
    # The trained loss, computed independently on the same (first two) augmented batches, in eval mode.
    model.eval()
    batches = [b for _, b in zip(range(2), ctx.train_batches(16))]
    with torch.no_grad():
        losses = [float(ctx.loss_fn(model(x), y)) * len(x) for x, y in batches]
        penalty = authors_l2(model, 0.05) if l2 == "authors" else l2_term(model, 0.05)
        trained = sum(losses) / sum(len(x) for x, _ in batches) + float(penalty)
    model.train()
    centre = grid[len(grid) // 2]
    assert centre == pytest.approx(trained, rel=1e-6) and values(rows, "loss_origin") == [centre]
    assert min(grid) < max(grid)  # the directions do move the loss
    assert_same_state(model, before)
    with pytest.raises(Exception, match="odd"):
        resolve_analyses([{"landscape": {"points": 4}}], "resnet18", "cifar10")


def test_filter_normalised_directions_match_filter_norms_and_skip_biases():
    weight, bias = torch.randn(6, 3, 3, 3), torch.randn(6)
    d_weight, d_bias = filter_normalized_direction([weight, bias], torch.Generator().manual_seed(0))
    assert d_weight.flatten(1).norm(dim=1).tolist() == pytest.approx(weight.flatten(1).norm(dim=1).tolist(), rel=1e-5)
    assert torch.equal(d_bias, torch.zeros(6))
    assert grid_axis(3, 1.0) == [-1.0, 0.0, 1.0]


def test_attention_distance_known_maps_and_analysis_rows():
    side, img = 4, 16  # 4 x 4 grid over 16 px: 4 px per cell
    n = side * side
    self_only = torch.eye(n + 1).expand(2, 3, n + 1, n + 1)  # one CLS token
    assert mean_attention_distance(self_only, prefix=1, img_size=img).tolist() == [0.0, 0.0, 0.0]
    right = torch.zeros(1, 1, n, n)
    for q in range(n):
        row, col = divmod(q, side)
        right[0, 0, q, row * side + (col + 1) % side if col + 1 < side else q - 1] = 1.0  # a neighbour, 1 cell away
    assert mean_attention_distance(right, prefix=0, img_size=img).tolist() == pytest.approx([4.0])

    model, data = tiny_model("vit_ti"), tiny_data()
    before = model_state(model)
    rows = run("attention_distance", {"n_samples": 8}, model, data)
    dist = [r for r in rows if r["metric"] == "mean_distance"]
    assert len(dist) == 2 * 2 and all(0 < r["value"] < 16 * math.sqrt(2) for r in dist)  # 2 layers x 2 heads
    assert not resolve_analyses(["attention_distance"], "resnet18", "cifar10")  # no attention: left out
    assert_same_state(model, before)


def test_authors_normalisation_matches_weight_norms_over_the_first_dimension():
    """Park & Kim's normalize_filter: norm(d, dim=0) = norm(w, dim=0) (up to their 1e-7)."""
    weight, bias = torch.randn(6, 3, 3, 3), torch.randn(6)
    d_weight, d_bias = filter_normalized_direction([weight, bias], torch.Generator().manual_seed(0), "authors")
    assert torch.allclose(d_weight.norm(dim=0), weight.norm(dim=0), rtol=1e-5)
    assert torch.equal(d_bias, torch.zeros(6))


def test_landscape_leaves_out_position_embeddings_and_bias_tables_and_uses_the_authors_l2():
    """The authors' kws (pos_embed, relative-position tables): those parameters stay at their trained
    values at every grid point, others move; their L2 is weight_decay x the sum of parameter norms."""
    from bench.analysis.landscape import AUTHORS_EXCLUDE, LandscapeOptions, authors_l2, loss_surface
    from bench.models import create_model

    model = tiny_model("vit_ti")
    x = torch.randn(4, 3, 16, 16)
    batches = [(x, torch.tensor([0, 1, 2, 3]))]
    pos, head = model.stem.pos_embed.detach().clone(), dict(model.named_parameters())
    weight_name = next(n for n, p in model.named_parameters() if p.ndim == 2 and "pos" not in n)
    weight = head[weight_name].detach().clone()
    seen = {"pos_moved": False, "weight_moved": False}

    def watching_loss(logits, y):
        seen["pos_moved"] |= not torch.equal(model.stem.pos_embed, pos)
        seen["weight_moved"] |= not torch.equal(dict(model.named_parameters())[weight_name], weight)
        return torch.nn.functional.cross_entropy(logits, y)

    loss_surface(model, batches, watching_loss, 0.0, dims=1, points=3, span=1.0, exclude=AUTHORS_EXCLUDE,
                 normalization="authors")
    assert seen == {"pos_moved": False, "weight_moved": True}
    loss_surface(model, batches, watching_loss, 0.0, dims=1, points=3, span=1.0, exclude=(), normalization="authors")
    assert seen["pos_moved"]  # without the exclusion it is perturbed like any weight
    assert torch.equal(model.stem.pos_embed, pos)  # restored
    alternet = create_model("alternet50", num_classes=4, img_size=16, width=8)
    tables = [n for n, _ in alternet.named_parameters() if any(re.search(p, n) for p in AUTHORS_EXCLUDE)]
    assert tables and all("rel_bias" in n for n in tables)
    expected = 0.05 * sum(float(torch.norm(p.detach())) for p in model.parameters())  # their ops/norm.l2 x weight decay
    assert float(authors_l2(model, 0.05)) == pytest.approx(expected, rel=1e-6)
    options = LandscapeOptions()
    assert (options.l2, options.normalization, tuple(options.exclude)) == ("authors", "authors", AUTHORS_EXCLUDE)
    assert LandscapeOptions(l2=True).l2 == "decayed" and LandscapeOptions(l2=False).l2 == "none"
    with pytest.raises(Exception, match="regular expression"):
        LandscapeOptions(exclude=["("])
