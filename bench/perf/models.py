"""The `models` suite: the bench worker's training throughput against a bare PyTorch loop.

Why: the worker adds a data loader, a schedule, metrics and checkpoints around the step;
it is only worth using if that costs (almost) nothing. Per model, the same batch size,
device, precision and threads:

- *worker*: `run_trial` on 32-px synthetic images (CIFAR's shape), its own training clock
  (`train_samples_per_s`: steps only, evaluation excluded);
- *bare*: a loop of forward, cross-entropy, backward and AdamW step over timm's equivalent
  model on one batch already on the device (timm's ResNet-18 with the CIFAR stem
  substituted; timm's ViT at the same width, depth, heads and patch). `vit_ti_pos` has no
  timm counterpart: the bare side is timm's plain ViT of the same size (the difference is
  the positional attention's own cost). `alternet50` has none either: its bare side is a
  plain loop over bench's own model (the worker's overhead alone).

Also per model: forward FLOPs per image (bench.models.count_flops), achieved training
FLOP/s (3x forward FLOPs per image, as is usual for a forward and backward pass) and, on a
GPU whose peak is known, the model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from bench.perf.registry import register_suite
from bench.perf.timing import figure, sync

#: bf16 dense tensor-core peaks (FLOP/s) of GPUs we may run on, by name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}

#: name -> (bench model_args, how to build the bare side's model)
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "resnet18": ("resnet18", {}, "timm_resnet18_cifar"),
    "vit_ti patch 4": ("vit_ti", {"patch_size": 4}, "timm_vit"),
    "vit_ti patch 2": ("vit_ti", {"patch_size": 2}, "timm_vit"),
    "vit_ti_pos patch 4": ("vit_ti_pos", {"patch_size": 4}, "timm_vit"),
    "alternet50": ("alternet50", {}, "bench"),
}
QUICK_ARGS = {"resnet18": {"width": 16}, "vit_ti": {"dim": 64, "depth": 2, "heads": 2},
              "vit_ti_pos": {"dim": 64, "depth": 2, "heads": 2}, "alternet50": {"width": 8}}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bare_model(kind: str, model: str, model_args: dict[str, Any], num_classes: int) -> nn.Module:
    """timm's equivalent of a bench model (or bench's own, where timm has none)."""
    if kind == "bench":
        from bench.models import create_model

        return create_model(model, num_classes=num_classes, img_size=32, in_chans=3, **model_args)
    import timm

    if kind == "timm_resnet18_cifar":
        net = timm.create_model("resnet18", num_classes=num_classes)
        width = model_args.get("width", 64)
        if width != 64:
            net = timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes,
                                            stem_width=width, channels=tuple(width * m for m in (1, 2, 4, 8)))
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)  # the CIFAR stem: 3x3, stride 1,
        net.maxpool = nn.Identity()  # no max-pool
        return net
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=model_args.get("patch_size", 2), num_classes=num_classes,
                             embed_dim=model_args.get("dim", 192), depth=model_args.get("depth", 12),
                             num_heads=model_args.get("heads", 3), qkv_bias=False)


def bare_images_per_s(net: nn.Module, batch: int, steps: int, device: torch.device, amp: torch.dtype | None) -> float:
    """A plain training loop on one resident batch: what the hardware gives this model."""
    from bench import accel

    net = net.to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with accel.autocast(device, amp):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - started)


def worker_images_per_s(model: str, model_args: dict[str, Any], batch: int, n: int, device: torch.device) -> tuple[float, int]:
    from bench.spec import parse_sweep
    from bench.train import run_trial

    patch = model_args.get("patch_size", 4)
    config = parse_sweep({
        "name": "perf-models", "model": model, "model_args": model_args,
        "dataset": {"name": "spatial", "grid": 32 // patch, "patch_size": patch, "set_size": 4, "num_train": n,
                    "num_test": 256},  # 32-px images whose data patches are the model's tokens
        "train_size": n, "train": {"epochs": 2, "batch_size": batch, "warmup_epochs": 0},
        "resources": {"report_every_s": 0},
    }).trials[0]
    result = run_trial(config, device=str(device))
    return result["train_samples_per_s"], result["flops"]


@register_suite("models", "per model: bench worker vs a bare loop over timm's equivalent model (img/s, FLOP/s, MFU)")
def run(quick: bool) -> dict[str, Any]:
    from bench import accel
    from bench.train import resolve_device

    device = resolve_device("auto")
    amp = accel.autocast_dtype(device, "auto")
    accel.configure_device(device)
    on_gpu = device.type == "cuda"
    batch = 256 if on_gpu else 64
    repeats = 1 if quick else 3
    peak = peak_flops(device)
    rows, ratios, details = [], {}, {}
    for name, (model, model_args, kind) in MODELS.items():
        args = {**model_args, **(QUICK_ARGS[model] if quick else {})}
        steps = 50 if on_gpu else (2 if quick else 4)
        n = batch * steps
        worker, bare, flops = [], [], 0
        for _ in range(repeats):  # alternately
            speed, flops = worker_images_per_s(model, args, batch, n, device)
            worker.append(speed)
            bare.append(bare_images_per_s(bare_model(kind, model, args, 10), batch, steps, device, amp))
        w, b = statistics.median(worker), statistics.median(bare)
        achieved = 3 * flops * w
        rows += [figure(f"{name}: worker", worker), figure(f"{name}: bare loop ({kind})", bare)]
        ratios[f"{name} worker / bare"] = w / b
        details[name] = {"model_args": args, "forward_flops_per_image": flops, "achieved_flop_per_s": achieved,
                         "mfu": achieved / peak if peak else None, "bare": kind}
    return {"rows": rows, "ratios": ratios,
            "settings": {"device": str(device), "precision": str(amp) if amp else "fp32", "batch": batch,
                         "repeats": repeats, "peak_bf16_flop_per_s": peak, "per_model": details,
                         "target": "worker / bare >= 0.95"}}
