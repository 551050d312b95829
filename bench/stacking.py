"""Seed stacking: K trials that differ only in their seed, trained in one process as one batched model.

Why: a small model (ViT-Ti on CIFAR-sized images) leaves most of a GPU idle, and K
separate processes each pay their own kernel launches, data and Python overhead. Here the
K models' parameters are stacked on a leading dimension (`torch.func.stack_module_state`)
and one `vmap`ped step trains all of them: each model still sees its own seed's subset,
shuffle and augmentations, its own initialisation, and its own gradient (the summed loss
has a block-diagonal gradient), so each result equals its separate run up to float
rounding. AdamW and SGD are elementwise, so one optimizer over the stacked tensors is K
optimizers; gradient clipping is done per model. No Ray here: the worker runs a stack
like `run_trial` runs one trial, and returns one result per trial.

What cannot be stacked is refused (ValueError): batch norm (its running statistics are
buffers mutated in the forward pass), active dropout or drop-path (vmap would draw other
random numbers than the separate runs), transfer from a source trial, analyses, full-batch
runs of unequal subsets, and trials that differ in anything but the seed.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bench import accel
from bench.data import build_trial_data
from bench.data.streams import stream_generator
from bench.models import count_flops, count_params, model_entry, set_attention_impl
from bench.models.layers import DropPath
from bench.calibration import ECE_BINS
from bench.train import (build_model, classification_loss, decay_groups, device_name, evaluate_with_ece,
                         lr_factor, make_loader, optimizer_over, resolve_device, training_plan)

#: Config fields that are per trial in a stack.
PER_TRIAL = ("seed", "trial_id")


def stack_key(config: dict[str, Any]) -> str:
    """What trials must share to be stacked: everything but their seed and id."""
    return json.dumps({k: v for k, v in config.items() if k not in PER_TRIAL}, sort_keys=True, default=str)


#: Model families with batch norm: their running statistics cannot be stacked.
BATCH_NORM_FAMILIES = frozenset({"resnet", "preact_resnet", "alternet"})


def can_stack(config: dict[str, Any]) -> bool:
    """Whether a trial may join a stack, from its config alone (the orchestrator groups trials
    before any model exists; `check_stackable` checks the built model again)."""
    return (model_entry(config["model"]).family not in BATCH_NORM_FAMILIES and not config.get("analysis")
            and not config.get("source") and not config["model_args"].get("drop_path_rate"))


def check_stackable(configs: list[dict[str, Any]], model: nn.Module) -> None:
    if len({stack_key(c) for c in configs}) != 1:
        raise ValueError("stacked trials must differ only in their seed")
    first = configs[0]
    if first.get("source") or first.get("analysis"):
        raise ValueError("trials with a transfer source or analyses are not stacked")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{first['model']} has batch norm ({name}): its running statistics cannot be stacked")
        if isinstance(module, (nn.Dropout, DropPath)) and module.p > 0:
            raise ValueError(f"{first['model']} has active dropout ({name}): stacked runs would draw other noise")


def clip_per_model(params: list[torch.Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` of each model's slice: the norm over all its parameters, its own scale."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    k = grads[0].shape[0]
    norms = torch.stack([g.reshape(k, -1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.ndim - 1))))


def run_stacked(configs: list[dict[str, Any]], *, device: str | None = None) -> list[dict[str, Any]]:
    """Train `configs` (one trial per seed, otherwise equal) as one stacked model; one result each, as `run_trial`'s."""
    started = time.perf_counter()
    first = configs[0]
    train = first["train"]
    dev = resolve_device(device)
    entry = model_entry(first["model"])
    accel.configure_device(dev)
    amp = accel.autocast_dtype(dev, train.get("precision", "auto"))

    datas, models = [], []
    for config in configs:  # the separate runs' order of random draws: seed, data, model
        torch.manual_seed(config["seed"])
        data = build_trial_data(config["dataset"], config["train_size"], config["seed"], dev, entry.input_kind)
        datas.append(data)
        models.append(build_model(config, data).to(dev))
    check_stackable(configs, models[0])
    if len({d.n_train for d in datas}) != 1:
        raise ValueError("stacked trials must have the same number of training images")
    n_train, k = datas[0].n_train, len(configs)
    groups = decay_groups(models[0])
    params, buffers = stack_module_state(models)  # leaves with requires_grad, stacked on dim 0
    base = copy.deepcopy(models[0]).to("meta")
    if dev.type == "cpu":  # the CPU's fused attention kernel has no vmap rule (a slow per-model loop)
        set_attention_impl(base, "math")
    optimizer = optimizer_over(params, groups, train)
    generators = [stream_generator("loader", c["seed"], device=dev) for c in configs]  # as run_trial's
    loaders = [make_loader(d, train, g) for d, g in zip(datas, generators)]
    steps_per_epoch = len(loaders[0])
    plan = training_plan(train, steps_per_epoch)  # epochs, or a steps budget, as run_trial's
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, train))
    smoothing = train["label_smoothing"]

    def one_model(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        logits = functional_call(base, (p, b), (x,))
        return classification_loss(logits.float(), y, smoothing), logits

    step = vmap(one_model)
    trainable = [p for n, p in params.items() if n not in groups["frozen"]]
    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    train_time, diverged, steps_done, samples_seen = 0.0, [None] * k, 0, 0
    for epoch in range(plan.epochs):
        for m in models:
            m.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros(k, device=dev)
        correct = torch.zeros(k, device=dev, dtype=torch.long)
        seen = 0
        for batches in zip(*loaders):
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            with accel.autocast(dev, amp):
                losses, logits = step(params, buffers, x, y)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # block-diagonal: model i's gradient is its own loss's
            if train["grad_clip"]:
                clip_per_model(trainable, train["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += losses.detach() * y.shape[1]
            hard = y if y.ndim == 2 else y.argmax(dim=2)
            correct += (logits.detach().argmax(dim=2) == hard).sum(dim=1)
            steps_done, seen = steps_done + 1, seen + y.shape[1]
            if steps_done >= plan.total_steps:  # a steps budget ends inside this epoch
                break
        accel.sync(dev)
        train_time += time.perf_counter() - epoch_start
        samples_seen += seen
        losses_now, correct_now = (loss_sum / seen).tolist(), (correct.double() / seen).tolist()
        for i, (model, data) in enumerate(zip(models, datas)):
            if diverged[i] is not None:
                continue
            with torch.no_grad():
                model.load_state_dict({n: t[i] for n, t in {**params, **buffers}.items()})
            test_loss, test_acc, ece = evaluate_with_ece(model, data, amp=amp)
            histories[i].append({"epoch": epoch + 1, "train_loss": losses_now[i], "train_acc": correct_now[i],
                                 "steps": steps_done, "test_loss": test_loss, "test_acc": test_acc, "ece": ece,
                                 "lr": optimizer.param_groups[0]["lr"],
                                 "wall_s": time.perf_counter() - started, "attempt": 1})
            if not math.isfinite(losses_now[i]):
                diverged[i] = epoch + 1
        if all(d is not None for d in diverged):
            break

    results = []
    for i, (config, model, data) in enumerate(zip(configs, models, datas)):
        last = histories[i][-1] if histories[i] else {}
        if not histories[i]:
            last["test_loss"], last["test_acc"], last["ece"] = evaluate_with_ece(model, data, amp=amp)
        results.append({
            "trial_id": config.get("trial_id"), "status": "ok" if diverged[i] is None else "diverged",
            "diverged_epoch": diverged[i], "resumed_from_epoch": None, "epochs": len(histories[i]), "n_train": n_train,
            "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"), "ece": last.get("ece"),
            "train_loss": last.get("train_loss"), "train_acc": last.get("train_acc"),
            "params": count_params(model), "flops": count_flops(model, data.input_shape),
            "wall_s": time.perf_counter() - started,
            # the stack's throughput over its K models: each model saw samples_seen images
            "train_samples_per_s": k * samples_seen / train_time if train_time > 0 else None,
            "device": device_name(dev), "compile_s": None,
            "recorded": {"param_groups": groups, "steps_per_epoch": steps_per_epoch, "ece_bins": ECE_BINS,
                         "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                         "precision": str(amp).removeprefix("torch.") if amp else "fp32", "memory_format": "contiguous",
                         "stacked": k},
            "history": histories[i], "analysis": [],
        })
    return results
