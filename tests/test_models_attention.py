"""Attention in the zoo: readable maps, positional attention that ignores the input, the
fused/math switch (same numbers; double backward on the math path), and window/local
attention checked against a dense reference built from token coordinates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.models import AttentionModel, create_model, set_attention_impl
from bench.models.alternet import WindowAttention2d
from bench.models.convit import LocalAttention2d
from bench.models.layers import PositionalAttention
from bench.models.swin import SwinAttention

# name -> (number of attention layers at defaults, model_args)
ATTENTION_MODELS = {
    "vit_ti": 12, "vit_s": 12, "vit_ti_pos": 12, "vit_s_pos": 12, "alternet50": 4, "swin_ti": 12, "pit_ti": 12,
    "convit_ti": 12, "pa_theory": 1,
}


def build(name: str, img_size: int = 16, **args) -> tuple[AttentionModel, torch.Tensor]:
    """A model and a batch of 2 inputs: 16-px images (every window/stage path is exercised), or 16 x 48 patches."""
    torch.manual_seed(0)
    if name == "pa_theory":
        model = create_model(name, 2, img_size=16, in_chans=48, v_init_std=0.3, **args)
        return model, torch.randn(2, 16, 48)
    return create_model(name, 10, img_size=img_size, **args), torch.randn(2, 3, img_size, img_size)


@pytest.mark.parametrize("name", sorted(ATTENTION_MODELS))
def test_attention_maps_contract(name: str) -> None:
    model, x = build(name, img_size=32)
    model.train()
    maps = model.attention_maps(x)
    assert len(maps) == ATTENTION_MODELS[name] == len(model.attention_layers())
    for m in maps:
        assert m.ndim == 4 and m.shape[0] == 2 and m.shape[-1] == m.shape[-2]
        assert not m.requires_grad
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    assert model.training  # mode restored
    assert all(layer.map_sink is None for layer in model.attention_layers())


def test_map_shapes_follow_each_architecture() -> None:
    shapes = {}
    for name in ("vit_ti", "alternet50", "swin_ti", "pit_ti"):
        model, x = build(name, img_size=32)
        shapes[name] = [tuple(m.shape[1:]) for m in model.attention_maps(x)]
    assert shapes["vit_ti"][0] == (3, 257, 257)  # CLS + 16 x 16 patches of 2 px
    assert shapes["alternet50"] == [(6, 256, 256), (12, 64, 64), (24, 16, 16), (24, 16, 16)]
    assert shapes["swin_ti"][0] == (3, 1024, 1024) and shapes["swin_ti"][-1] == (24, 16, 16)
    assert shapes["pit_ti"][0] == (2, 962, 962) and shapes["pit_ti"][-1] == (8, 65, 65)  # 31x31 -> 16x16 -> 8x8


def test_positional_attention_ignores_the_input() -> None:
    pos_model, x = build("vit_ti_pos", img_size=32)
    vanilla, _ = build("vit_ti", img_size=32)
    a, b = x[:1], x[1:] * 3 + 1
    pos_a, pos_b = pos_model.attention_maps(a), pos_model.attention_maps(b)
    van_a, van_b = vanilla.attention_maps(a), vanilla.attention_maps(b)
    for layer in range(12):
        assert torch.equal(pos_a[layer], pos_b[layer])  # same map for different images
        assert not torch.allclose(van_a[layer], van_b[layer], atol=1e-4)  # vanilla maps depend on the image
        assert not torch.allclose(pos_a[layer], van_a[layer], atol=1e-4)


@pytest.mark.parametrize("args", [{"pos_shared": False}, {"pos_in_tokens": True}, {"class_token": False}])
def test_positional_attention_options_keep_maps_input_free(args: dict) -> None:
    model, x = build("vit_ti_pos", depth=3, **args)
    first, second = model.attention_maps(x[:1]), model.attention_maps(torch.randn(1, 3, 16, 16))
    assert all(torch.equal(p, q) for p, q in zip(first, second))
    tokens = 64 + (0 if args.get("class_token") is False else 1)
    assert first[0].shape == (1, 3, tokens, tokens)


def test_positional_attention_matches_per_sample_reference() -> None:
    torch.manual_seed(0)
    layer = PositionalAttention(24, 3)
    pos, x = torch.randn(10, 24), torch.randn(4, 10, 24)
    scores = layer.scores(pos)  # (heads, tokens, tokens)
    v = layer.v(x).view(4, 10, 3, 8).transpose(1, 2)
    expected = layer.proj((scores @ v).transpose(1, 2).reshape(4, 10, 24))
    for impl in ("fused", "math"):
        set_attention_impl(layer, impl)
        torch.testing.assert_close(layer(x, pos), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTENTION_MODELS))
def test_fused_and_math_paths_agree(name: str) -> None:
    model, x = build(name)
    model.eval()
    results = {}
    for impl in ("fused", "math"):
        set_attention_impl(model, impl)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results[impl] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (out_f, grads_f), (out_m, grads_m) = results["fused"], results["math"]
    torch.testing.assert_close(out_f, out_m, rtol=1e-4, atol=1e-5)
    for n in grads_f:  # float32 sums in a different order: compare each gradient relative to its size
        err = (grads_f[n] - grads_m[n]).norm()
        assert err <= 1e-4 * grads_m[n].norm() + 1e-7, f"{n}: gradient differs by {err:.2e}"


@pytest.mark.parametrize("name", sorted(ATTENTION_MODELS))
def test_every_attention_layer_honours_the_switch(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build(name)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        model(x)
        assert len(calls) == len(model.attention_layers())
        set_attention_impl(model, "math")
        calls.clear()
        model(x)
        assert not calls


@pytest.mark.parametrize("name", sorted(ATTENTION_MODELS))
def test_double_backward_through_math_attention(name: str) -> None:
    """A Hessian-vector product (what the Hessian analysis iterates) on the math path."""
    model, x = build(name)
    model.eval()
    set_attention_impl(model, "math")
    params = [p for p in model.parameters() if p.requires_grad]
    y = torch.tensor([0, 1])
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vec = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vec)), params)
    flat = torch.cat([h.flatten() for h in hvp])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    attn_params = {id(p) for layer in model.attention_layers() for p in layer.parameters()}
    assert any(h.abs().sum() > 0 for p, h in zip(params, hvp) if id(p) in attn_params)


def test_hessian_vector_product_matches_finite_differences() -> None:
    model, x = build("pa_theory")
    set_attention_impl(model, "math")
    model.double()
    x, y = x.double(), torch.tensor([0, 1])
    params = list(model.parameters())

    def grad_at(create_graph: bool):
        return torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=create_graph)

    vec = [torch.randn_like(p) for p in params]
    grads = grad_at(True)
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vec)), params)
    eps = 1e-5
    with torch.no_grad():
        for p, v in zip(params, vec):
            p.add_(eps * v)
    plus = grad_at(False)
    with torch.no_grad():
        for p, v in zip(params, vec):
            p.sub_(2 * eps * v)
    minus = grad_at(False)
    for h, gp, gm in zip(hvp, plus, minus):
        torch.testing.assert_close(h, (gp - gm) / (2 * eps), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- dense references


def coords(grid: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).view(-1, 2)


def dense_attention(x: torch.Tensor, qkv: torch.nn.Linear, heads: int, head_dim: int, bias: torch.Tensor) -> torch.Tensor:
    """Global attention over all tokens of x (B, N, C) with an additive (heads or 1, N, N) bias."""
    b, n, _ = x.shape
    q, k, v = qkv(x).view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    probs = ((q @ k.transpose(-2, -1)) * head_dim**-0.5 + bias).softmax(-1)
    return (probs @ v).transpose(1, 2).reshape(b, n, heads * head_dim)


@pytest.mark.parametrize("grid, window, shift", [(8, 4, False), (8, 4, True), (4, 4, True), (12, 4, True), (2, 4, False)])
def test_swin_window_attention_matches_dense_reference(grid: int, window: int, shift: bool) -> None:
    torch.manual_seed(0)
    layer = SwinAttention(12, 3, grid, window, shift)
    with torch.no_grad():
        layer.rel_bias.normal_()
    x = torch.randn(2, grid * grid, 12)
    w, s = layer.window, layer.shift
    assert w == min(window, grid) and s == (window // 2 if shift and grid > window else 0)
    # Token coordinates in the shifted frame decide windows and regions; offsets index the table.
    c = (coords(grid) - s) % grid
    same_window = ((c[:, None] // w) == (c[None] // w)).all(-1)
    cuts = torch.tensor([grid - w, grid - s])  # Swin's three regions per axis: [0, g-w), [g-w, g-s), [g-s, g)
    region = torch.stack([torch.bucketize(c[:, i].contiguous(), cuts, right=True) for i in (0, 1)], -1)
    same_region = (region[:, None] == region[None]).all(-1) if s else torch.ones_like(same_window)
    rel = (c[:, None] - c[None] + (w - 1)).clamp(0, 2 * w - 2)  # clamped pairs are masked below
    bias = layer.rel_bias[rel[..., 0] * (2 * w - 1) + rel[..., 1]].permute(2, 0, 1)
    bias = bias.masked_fill(~(same_window & same_region), float("-inf"))
    expected = layer.proj(dense_attention(x, layer.qkv, 3, 4, bias))
    for impl in ("fused", "math"):
        set_attention_impl(layer, impl)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.map_sink = maps = []
    layer(x)
    layer.map_sink = None
    qk = layer.qkv(x).view(2, grid * grid, 3, 3, 4).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(maps[0], ((qk[0] @ qk[1].transpose(-2, -1)) * 0.5 + bias).softmax(-1))


@pytest.mark.parametrize("grid, window", [(8, 4), (4, 4), (2, 4)])
def test_alternet_window_attention_matches_dense_reference(grid: int, window: int) -> None:
    torch.manual_seed(0)
    layer = WindowAttention2d(16, 32, heads=2, head_dim=8, window_size=window, grid=grid)
    with torch.no_grad():
        layer.rel_bias.normal_()
    x = torch.randn(2, 16, grid, grid)
    w = layer.window
    c = coords(grid)
    same_window = ((c[:, None] // w) == (c[None] // w)).all(-1)
    rel = (c[:, None] - c[None] + (window - 1)).clamp(0, 2 * window - 2)  # table of the nominal window
    bias = layer.rel_bias[rel[..., 0], rel[..., 1]].masked_fill(~same_window, float("-inf"))  # shared by heads
    tokens = x.flatten(2).transpose(1, 2)
    expected = layer.proj(dense_attention(tokens, layer.qkv, 2, 8, bias)).transpose(1, 2).reshape(2, 32, grid, grid)
    for impl in ("fused", "math"):
        set_attention_impl(layer, impl)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 5, 8])
def test_convit_local_attention_matches_dense_reference(kernel_size: int) -> None:
    torch.manual_seed(0)
    grid = 6
    layer = LocalAttention2d(12, 3, grid, kernel_size)
    x = torch.randn(2, grid * grid, 12)
    c = coords(grid)
    offset = c[None] - c[:, None]  # key minus query
    lo, hi = -((kernel_size - 1) // 2), kernel_size // 2
    inside = ((offset >= lo) & (offset <= hi)).all(-1)
    bias = torch.zeros(grid * grid, grid * grid).masked_fill(~inside, float("-inf"))
    expected = layer.proj(dense_attention(x, layer.qkv, 3, 4, bias))
    for impl in ("fused", "math"):
        set_attention_impl(layer, impl)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.map_sink = maps = []
    layer(x)
    layer.map_sink = None
    assert ((maps[0] > 0) == inside).all()  # each query sees exactly its k x k neighbourhood
