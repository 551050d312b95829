"""Every zoo model learns on the synthetic spatially structured data, and the theory model
`pa_theory` is the paper's F(X) with the logistic loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.data import build_trial_data, resolve_dataset
from bench.models import count_flops, count_params, create_model, list_models, model_entry, set_attention_impl
from bench.train import build_model

SPATIAL = resolve_dataset({"name": "spatial"})  # 4 x 4 grid of 4 x 4 x 3 patches: 16-px images, or 16 x 48 patches
IMAGE_MODELS = sorted(n for n in list_models() if model_entry(n).input_kind == "image" and model_entry(n).family != "test")


@pytest.fixture(scope="module")
def image_data():
    return build_trial_data(SPATIAL, 64, 0, "cpu", "image")


@pytest.fixture(scope="module")
def patch_data():
    return build_trial_data(SPATIAL, 256, 0, "cpu", "patches")


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, optimizer: torch.optim.Optimizer) -> list[float]:
    """Training losses on one fixed batch, step by step."""
    model.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_learn_the_spatial_data(name: str, image_data) -> None:
    torch.manual_seed(0)
    model = build_model({"model": name, "model_args": {}}, image_data)
    assert model.input_kind == "image"
    idx = torch.cat([torch.nonzero(image_data.train_y == c)[:4, 0] for c in (0, 1)])  # 4 + 4 images
    x, y = image_data.normalize(image_data.train_x[idx]), image_data.train_y[idx]
    # Small-step SGD: no warmup needed, so deep transformers descend from their first step too.
    # Batch-norm nets on 8 images are noisy step to step: compare the last steps' mean.
    losses = fit(model, x, y, 10, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0], losses


def test_pa_theory_is_built_from_the_patch_data(patch_data) -> None:
    model = build_model({"model": "pa_theory", "model_args": {}}, patch_data)
    d_patches, d_dim = patch_data.input_shape
    assert model.input_kind == "patches" and model.A.shape == (d_patches, d_patches) and model.v.shape == (d_dim,)
    assert count_params(model) == d_patches**2 + d_dim  # A (its diagonal is fixed, not trained) and v
    assert count_flops(model, patch_data.input_shape) == 2 * (d_patches * d_dim + d_patches**2)


def test_pa_theory_logits_give_the_logistic_loss() -> None:
    torch.manual_seed(0)
    model = create_model("pa_theory", 2, img_size=10, in_chans=10, v_init_std=0.3)
    x, y_pm = torch.randn(32, 10, 10), torch.randint(0, 2, (32,)) * 2 - 1
    f = model.output(x)
    ce = F.cross_entropy(model(x), (y_pm + 1) // 2, reduction="none")
    torch.testing.assert_close(ce, F.softplus(-y_pm * f))  # log(1 + exp(-y F))
    # F(X) = sum_i sigma(D * sum_j S_ij <v, X_j>), written out
    s = (model.A / math.sqrt(10)).softmax(dim=-1)
    expected = ((10 * torch.einsum("ij,bj->bi", s, x @ model.v)) ** 3).sum(dim=-1)
    torch.testing.assert_close(f, expected)


def test_pa_theory_init_and_readouts() -> None:
    model = create_model("pa_theory", 2, img_size=6, in_chans=8, diag_logit=1.5, offdiag_init=0.25)
    a = model.positional_scores()
    assert torch.equal(a.diagonal(), torch.full((6,), 1.5))
    off = a[~torch.eye(6, dtype=torch.bool)]
    assert torch.equal(off, torch.full_like(off, 0.25))  # symmetric init: equal off-diagonal logits
    maps = model.attention_maps(torch.randn(3, 6, 8))
    assert len(maps) == 1 and maps[0].shape == (3, 1, 6, 6)
    torch.testing.assert_close(maps[0][1, 0], (a / math.sqrt(8)).softmax(dim=-1))
    assert create_model("pa_theory", 2, img_size=6, in_chans=8, activation="linear").sigma(torch.tensor(2.0)) == 2.0
    with pytest.raises(Exception, match="binary"):
        create_model("pa_theory", 10, img_size=6, in_chans=8)


@pytest.mark.parametrize("impl", ["fused", "math"])
def test_pa_theory_learns_by_gradient_descent_with_its_diagonal_fixed(patch_data, impl: str) -> None:
    torch.manual_seed(0)
    model = build_model({"model": "pa_theory", "model_args": {}}, patch_data)
    set_attention_impl(model, impl)
    before = model.positional_scores()
    x, y = patch_data.normalize(patch_data.train_x), patch_data.train_y
    losses = fit(model, x, y, 20, torch.optim.SGD(model.parameters(), lr=0.01))  # plain gradient descent
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    after = model.positional_scores()
    off_diagonal = ~torch.eye(len(after), dtype=torch.bool)
    assert torch.equal(after.diagonal(), before.diagonal())  # held fixed
    assert not torch.equal(after[off_diagonal], before[off_diagonal])  # trained
