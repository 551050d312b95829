"""The trial worker: one trial is one call of `run_trial(config)`. No Ray here.

The orchestrator (bench.sweep) passes an `on_epoch` hook to report progress and save
checkpoints, and a `resume` state to continue a retried trial; run alone (`bench
trial`), a trial is an ordinary function call that can be debugged like one.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import DeviceLoader, TrialData, build_trial_data
from bench.models import count_flops, count_params, create_model, model_entry

#: on_epoch(epoch_row, get_state): epoch_row holds the epoch's metrics; get_state() builds
#: the checkpoint state lazily, only if the hook wants to save it. The state shares
#: storage with the live model: serialise (or deep-copy) it before returning.
EpochHook = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


def resolve_device(device: str | None = None) -> torch.device:
    """'auto' (or None) picks the GPU when there is one."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def build_model(config: dict[str, Any], data: TrialData) -> nn.Module:
    """The trial's model, sized to its data (patch models get D as img_size and d as in_chans)."""
    if data.input_kind == "patches":
        size = {"img_size": data.input_shape[0], "in_chans": data.input_shape[1]}
    else:
        size = {"img_size": data.img_size, "in_chans": data.in_chans}
    return create_model(config["model"], num_classes=data.num_classes, **size, **config["model_args"])


def make_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only: not on biases and norms, nor on what
    the model lists in `no_weight_decay()` (position embeddings, CLS token, bias tables), as timm does."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    no_decay = [p for n, p in named if p.ndim < 2 or n in skip]
    groups = [
        {"params": decay, "weight_decay": train["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"], nesterov=True)
    return torch.optim.AdamW(groups, lr=train["lr"])


def lr_factor(step: int, steps_per_epoch: int, train: dict[str, Any]) -> float:
    """Linear warmup, then cosine to zero, constant, or steps at fractions of training."""
    total = max(1, train["epochs"] * steps_per_epoch)
    warmup = int(train["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if train["schedule"] == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if train["schedule"] == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return train["step_gamma"] ** sum(progress >= m for m in train["step_milestones"])


@torch.no_grad()
def evaluate(model: nn.Module, data: TrialData, batch_size: int = 1024) -> tuple[float, float]:
    """(NLL, accuracy) on the test split."""
    model.eval()
    nll, correct = 0.0, 0
    for start in range(0, len(data.test_x), batch_size):
        x = data.normalize(data.test_x[start : start + batch_size])
        y = data.test_y[start : start + batch_size]
        logits = model(x)
        nll += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
    n = len(data.test_x)
    return nll / n, correct / n


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy on class indices, or on soft targets (mixup/cutmix) smoothed the same way."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def run_trial(
    config: dict[str, Any],
    *,
    on_epoch: EpochHook | None = None,
    resume: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one resolved trial config; return its metrics and epoch history."""
    started = time.perf_counter()
    train = config["train"]
    dev = resolve_device(device)
    input_kind = model_entry(config["model"]).input_kind

    torch.manual_seed(config["seed"])
    data = build_trial_data(config["dataset"], config["train_size"], config["seed"], dev, input_kind)
    model = build_model(config, data).to(dev)
    params = count_params(model)
    flops = count_flops(model, data.input_shape)

    generator = torch.Generator(device=dev).manual_seed(config["seed"])
    loader = DeviceLoader(
        data.train_x, data.train_y, train["batch_size"], data.normalize,
        augment=train["augment"], generator=generator, num_classes=data.num_classes,
        crop_padding=train["crop_padding"], randaugment_n=train["randaugment_n"], randaugment_m=train["randaugment_m"],
        mixup_alpha=train["mixup_alpha"], cutmix_alpha=train["cutmix_alpha"],
    )
    optimizer = make_optimizer(model, train)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, train))

    history: list[dict[str, Any]] = []
    first_epoch, train_time, samples_seen, elapsed_before = 0, 0.0, 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history = list(resume["history"])
        first_epoch, train_time, samples_seen = resume["epoch"], resume["train_time"], resume["samples_seen"]
        elapsed_before = resume["elapsed"]

    for epoch in range(first_epoch, train["epochs"]):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        for x, y in loader:
            logits = model(x)
            loss = classification_loss(logits, y, train["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train["grad_clip"]:
                nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            hard = y if y.ndim == 1 else y.argmax(dim=1)  # mixed targets: the dominant class
            correct += (logits.detach().argmax(dim=1) == hard).sum()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_time += time.perf_counter() - epoch_start
        samples_seen += data.n_train
        test_loss, test_acc = evaluate(model, data)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / data.n_train,
            "train_acc": correct.item() / data.n_train,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "wall_s": elapsed_before + time.perf_counter() - started,
        }
        history.append(row)
        if on_epoch is not None:
            done_epoch, done_time, done_samples, elapsed = epoch + 1, train_time, samples_seen, row["wall_s"]
            on_epoch(row, lambda: {
                "epoch": done_epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "history": list(history),
                "train_time": done_time, "samples_seen": done_samples, "elapsed": elapsed,
            })

    if history:
        last = history[-1]
        test_loss, test_acc, train_loss, train_acc = last["test_loss"], last["test_acc"], last["train_loss"], last["train_acc"]
    else:  # epochs: 0 evaluates the initialisation
        test_loss, test_acc = evaluate(model, data)
        train_loss = train_acc = None
    return {
        "trial_id": config.get("trial_id"),
        "epochs": len(history),
        "n_train": data.n_train,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "params": params,
        "flops": flops,
        "wall_s": elapsed_before + time.perf_counter() - started,
        "train_samples_per_s": samples_seen / train_time if train_time > 0 else None,
        "device": device_name(dev),
        "history": history,
    }
