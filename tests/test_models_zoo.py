"""The model zoo: every architecture builds and trains at CIFAR and ImageNet sizes, and its
size (parameters, FLOPs) matches the published reference points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main as cli_main
from bench.errors import BenchInputError
from bench.models import (
    AttentionModel,
    BenchModel,
    all_model_arg_names,
    count_flops,
    count_params,
    create_model,
    list_models,
    model_arg_names,
    model_entry,
)
from bench.models.base import BLOCK_KINDS
from bench.models.summary import describe_models, format_models_table

ZOO = {
    "resnet18", "resnet50", "preact_resnet50", "vit_ti", "vit_s", "vit_ti_pos", "vit_s_pos", "alternet50",
    "swin_ti", "pit_ti", "convit_ti", "mixer_ti", "pa_theory",
}
IMAGE_MODELS = sorted(n for n in ZOO if model_entry(n).input_kind == "image")
ATTENTION_MODELS = {"vit_ti", "vit_s", "vit_ti_pos", "vit_s_pos", "alternet50", "swin_ti", "pit_ti", "convit_ti", "pa_theory"}


def size_args(name: str, img_size: int) -> dict:
    """At ImageNet sizes the models with a stem option run their ImageNet stem."""
    return {"stem": "imagenet"} if img_size >= 224 and "stem" in model_arg_names(name) else {}


def test_registry_holds_both_papers_models() -> None:
    assert {n for n in list_models() if model_entry(n).family != "test"} == ZOO  # a new model joins these tests
    assert list_models("vit_*") == ["vit_s", "vit_s_pos", "vit_ti", "vit_ti_pos"]
    assert model_entry("pa_theory").input_kind == "patches"
    for name in ZOO:
        model = create_model(name, 2, **({"img_size": 16, "in_chans": 48} if name == "pa_theory" else {"img_size": 16}))
        assert isinstance(model, BenchModel)
        assert isinstance(model, AttentionModel) == (name in ATTENTION_MODELS), name


@pytest.mark.parametrize("img_size", [32, 224])
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_and_backward(name: str, num_classes: int, img_size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes, img_size=img_size, **size_args(name, img_size))
    batch = 2 if img_size == 32 else 1
    x = torch.randn(batch, 3, img_size, img_size)
    logits = model(x)
    assert logits.shape == (batch, num_classes)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(batch) % num_classes).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters that get no gradient: {unused[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_default_cifar_stem_alternet_runs_at_224() -> None:
    """Window 7 tiles the 224/112/56/28 maps of the CIFAR-stem default too."""
    model = create_model("alternet50", 10, img_size=224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, args, published",
    [
        ("vit_ti", {}, 5.40e6),  # Park & Kim: ViT-Ti patch 2, 100 classes
        ("resnet50", {}, 23.71e6),  # Park & Kim: ResNet-50, CIFAR stem, 100 classes
        ("alternet50", {}, 33.0e6),  # Park & Kim: AlterNet-50, MSAs (0, 1, 1, 2), 100 classes
    ],
)
def test_published_parameter_counts(name: str, args: dict, published: float) -> None:
    params = count_params(create_model(name, 100, img_size=32, **args))
    assert abs(params - published) / published < 0.01, params


@pytest.mark.parametrize(
    "name, args, published",
    [
        ("resnet50", {"stem": "imagenet"}, 25.557e6),  # torchvision resnet50
        ("swin_ti", {}, 28.288e6),  # timm swin_tiny_patch4_window7_224
        ("pit_ti", {}, 4.849e6),  # timm pit_ti_224
        ("vit_ti", {"qkv_bias": True}, 5.717e6),  # timm vit_tiny_patch16_224 / DeiT-Ti
        ("vit_s", {"qkv_bias": True}, 22.051e6),  # timm vit_small_patch16_224 / DeiT-S
    ],
)
def test_imagenet_layouts_match_reference_implementations(name: str, args: dict, published: float) -> None:
    params = count_params(create_model(name, 1000, img_size=224, **args))
    assert abs(params - published) / published < 0.01, params


@pytest.mark.parametrize(
    "name, args, published_gflops",
    [
        ("vit_ti", {"patch_size": 4}, 0.73),
        ("vit_ti", {}, 3.34),  # patch 2
        ("resnet18", {}, 1.11),  # CIFAR stem
        ("resnet18", {"stem": "imagenet"}, 0.074),
    ],
)
def test_flops_match_reference_points_at_32px(name: str, args: dict, published_gflops: float) -> None:
    gflops = count_flops(create_model(name, 100, img_size=32, **args), (3, 32, 32)) / 1e9
    assert abs(gflops - published_gflops) / published_gflops < 0.05, gflops


@pytest.mark.parametrize(
    "name, published_gmacs",
    [
        ("resnet50", 4.09),  # torchvision
        ("swin_ti", 4.5),  # Swin paper, Swin-T 224
        ("pit_ti", 0.7),  # PiT paper, PiT-Ti 224
    ],
)
def test_flops_match_published_macs_at_224(name: str, published_gmacs: float) -> None:
    model = create_model(name, 1000, img_size=224, **size_args(name, 224))
    gflops = count_flops(model, (3, 224, 224)) / 1e9
    assert abs(gflops - 2 * published_gmacs) / (2 * published_gmacs) < 0.05, gflops


def test_flop_count_leaves_model_state_alone() -> None:
    model = create_model("vit_ti", 10, img_size=16).train()
    count_flops(model, (3, 16, 16))
    assert model.training
    assert all(layer.fused for layer in model.attention_layers())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_blocks_are_the_residual_stream_in_depth_order(name: str) -> None:
    model = create_model(name, 10, img_size=32).eval()
    named = model.blocks()
    names = [n for n, _ in named]
    assert names[0] == "stem" and len(set(names)) == len(names)
    assert all(getattr(m, "kind", None) in BLOCK_KINDS for _, m in named)
    calls: list[str] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(block_name: str):
        def record(module, args, output):
            calls.append(block_name)
            outputs[block_name] = output

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in named]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert calls == names
    for block_name, output in outputs.items():
        fmap = model.feature_map(output)
        assert fmap is not None and fmap.ndim == 4 and fmap.shape[0] == 2, block_name
        assert fmap.shape[-1] == fmap.shape[-2]


def test_a_residual_unit_can_be_lesioned_by_a_hook() -> None:
    """Replacing a unit's output by its input removes just that branch (the lesion study)."""
    model = create_model("vit_ti", 10, img_size=16, depth=4).eval()
    x = torch.randn(2, 3, 16, 16)
    units = dict(model.blocks())
    with torch.no_grad():
        intact = model(x)
        handle = units["blocks.2.msa"].register_forward_hook(lambda module, args, output: args[0])
        lesioned = model(x)
        handle.remove()
        assert torch.equal(model(x), intact)
    assert lesioned.shape == intact.shape and not torch.allclose(lesioned, intact)


def test_transfer_and_optimizer_hooks() -> None:
    theory = create_model("pa_theory", 2, img_size=6, in_chans=8)
    assert [n for n, _ in theory.attention_parameters()] == ["attn.offdiag"]  # freeze A, train v
    positional = create_model("vit_ti_pos", 10, img_size=16, depth=2)
    assert [n for n, _ in positional.attention_parameters()] == [
        "stem.pos_embed", "blocks_.0.msa.attn.qk.weight", "blocks_.1.msa.attn.qk.weight"]
    vanilla = create_model("vit_ti", 10, img_size=16, depth=2)
    assert {n for n, _ in vanilla.attention_parameters()} == {
        f"blocks_.{i}.msa.attn.{w}" for i in range(2) for w in ("qkv.weight", "proj.weight", "proj.bias")}
    assert vanilla.no_weight_decay() == {"stem.pos_embed", "stem.cls_token"}
    swin = create_model("swin_ti", 10, img_size=16, depths=(1, 1, 1, 1))
    assert len(swin.no_weight_decay()) == 4 and all(n.endswith("rel_bias") for n in swin.no_weight_decay())
    assert create_model("resnet50", 10).no_weight_decay() == set()


def test_msa_blocks_sit_at_the_end_of_alternet_stages() -> None:
    model = create_model("alternet50", 100)
    kinds = [(n, m.kind) for n, m in model.blocks()]
    assert [n for n, k in kinds if k == "msa"] == ["stages.1.3", "stages.2.5", "stages.3.1", "stages.3.3"]
    imagenet = create_model("alternet50", 100, msa_blocks=[0, 1, 3, 2])  # YAML gives lists
    assert [n for n, m in imagenet.blocks() if m.kind == "msa"] == [
        "stages.1.3", "stages.2.1", "stages.2.3", "stages.2.5", "stages.3.1", "stages.3.3"]


def test_model_args_are_checked_and_none_dropped() -> None:
    assert {"patch_size", "depth", "heads", "dim", "window_size", "stem", "drop_path_rate", "kernel_size",
            "msa_blocks", "pos_shared", "pos_in_tokens", "class_token"} <= all_model_arg_names()
    assert "window_size" in model_arg_names("alternet50") and "window_size" in model_arg_names("swin_ti")
    create_model("vit_s", 10, img_size=32, patch_size=None, depth=2)
    with pytest.raises(BenchInputError, match="takes no argument"):
        create_model("resnet50", 10, patch_size=4)
    with pytest.raises(BenchInputError, match="does not tile"):
        create_model("swin_ti", 10, img_size=48)
    with pytest.raises(BenchInputError, match="2 \\* m <= n"):
        create_model("alternet50", 10, msa_blocks=(0, 1, 4, 2))
    with pytest.raises(BenchInputError, match="stem"):
        create_model("preact_resnet50", 10, stem="tiny")


def test_models_table_lists_every_model() -> None:
    rows = describe_models("*", img_size=32, num_classes=100)
    by_name = {r["name"]: r for r in rows}
    assert ZOO <= set(by_name)
    assert abs(by_name["resnet18"]["gflops"] - 1.11) < 0.01 and by_name["resnet18"]["params"] == 11_220_132
    assert by_name["pa_theory"]["params"] is None and "patches" in by_name["pa_theory"]["note"]
    table = format_models_table(rows, 32, 100)
    header = table.splitlines()[0]
    for column in ("name", "family", "params", "GFLOPs", "paper"):
        assert column in header
    assert len(table.splitlines()) == len(rows) + 1
    assert "alternet50" in table and "33.01M" in table and "Park & Kim 2022" in table


def test_bench_models_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "--img-size", "224", "--pattern", "pit_*", "--num-classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "224px" in out and "pit_ti" in out and "4.85M" in out and "1.398" in out
