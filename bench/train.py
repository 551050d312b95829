"""The trial worker: one trial is one call of `run_trial(config)`. No Ray here.

The orchestrator (bench.sweep) passes an `on_epoch` hook to report progress and save
checkpoints, and a `resume` state to continue a retried trial; run alone (`bench
trial`), a trial is an ordinary function call that can be debugged like one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench import accel
from bench.analysis import AnalysisContext, due, run_analysis
from bench.calibration import ECE_BINS, CalibrationCounts
from bench.data import DeviceLoader, TrialData, build_trial_data
from bench.data.shuffle import BlockShuffle
from bench.data.streams import stream_generator
from bench.models import count_flops, count_params, create_model, model_entry
from bench.transfer import prepare as prepare_transfer

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


def decay_groups(model: nn.Module) -> dict[str, list[str]]:
    """Which trainable parameters are weight-decayed: weight matrices and kernels only, not biases
    and norms, nor what the model lists in `no_weight_decay()` (position embeddings, CLS token,
    bias tables, pa_theory's A), as timm does. Frozen parameters are listed apart."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[str, list[str]] = {"decay": [], "no_decay": [], "frozen": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            groups["frozen"].append(name)
        elif p.ndim >= 2 and name not in skip:
            groups["decay"].append(name)
        else:
            groups["no_decay"].append(name)
    return groups


def make_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters, weight decay as `decay_groups` says.

    SGD with momentum 0 is plain gradient descent (with a full batch, the paper's GD);
    Nesterov momentum only when there is momentum.
    """
    return optimizer_over(dict(model.named_parameters()), decay_groups(model), train)


def optimizer_over(params: dict[str, torch.Tensor], names: dict[str, list[str]], train: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer over named tensors split as `decay_groups` says (a model's parameters, or a
    stack's: both optimizers are elementwise, so one over stacked tensors is K of them)."""
    groups = [
        {"params": [params[n] for n in names["decay"]], "weight_decay": train["weight_decay"]},
        {"params": [params[n] for n in names["no_decay"]], "weight_decay": 0.0},
    ]
    if train["optimizer"] == "sgd":
        momentum = train["momentum"]
        return torch.optim.SGD(groups, lr=train["lr"], momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(groups, lr=train["lr"])


def batch_size_for(train: dict[str, Any], n_train: int) -> int:
    """'full' is the whole training subset: one step per epoch."""
    return n_train if train["batch_size"] == "full" else int(train["batch_size"])


@dataclass(frozen=True)
class TrainingPlan:
    """How long a trial trains, in optimizer steps, and the epochs that takes.

    Equal epochs (the default): `train.epochs` passes over the subset, so a smaller subset
    gets fewer steps. A steps budget (`train.budget: {steps: N}`): N optimizer steps whatever
    the subset's size, in ceil(N / steps_per_epoch) epochs, the last one cut short; warmup
    keeps its share of training (warmup_epochs / epochs of the train block), and the cosine
    (or step) schedule runs over the N steps. A data-regime sweep then compares fractions at
    equal optimisation, not only at equal passes over the data.
    """

    epochs: int  # epochs to run (the last may be partial under a budget)
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int

    @property
    def warmup_epochs(self) -> float:
        """The warmup in epochs of this subset (when `warmup_end` analyses run)."""
        return self.warmup_steps / max(1, self.steps_per_epoch)


def training_plan(train: dict[str, Any], steps_per_epoch: int) -> TrainingPlan:
    """The plan of a train block on a subset with `steps_per_epoch` batches."""
    budget = train.get("budget")
    if not budget:
        return TrainingPlan(train["epochs"], train["epochs"] * steps_per_epoch,
                            int(train["warmup_epochs"] * steps_per_epoch), steps_per_epoch)
    total = int(budget["steps"])
    share = min(1.0, train["warmup_epochs"] / train["epochs"]) if train["epochs"] > 0 else 0.0
    return TrainingPlan(-(-total // max(1, steps_per_epoch)), total, int(round(share * total)), steps_per_epoch)


def lr_factor(step: int, steps_per_epoch: int, train: dict[str, Any]) -> float:
    """Linear warmup, then cosine to zero, constant, or steps at fractions of training (`training_plan`)."""
    plan = training_plan(train, steps_per_epoch)
    total, warmup = max(1, plan.total_steps), plan.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if train["schedule"] == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if train["schedule"] == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return train["step_gamma"] ** sum(progress >= m for m in train["step_milestones"])


@torch.no_grad()
def evaluate(model: nn.Module, data: TrialData, batch_size: int | None = None,
             amp: torch.dtype | None = None, fmt: torch.memory_format = torch.contiguous_format,
             calibration: CalibrationCounts | None = None) -> tuple[float, float]:
    """(NLL, accuracy) on the test split, in batches of about 4M input values, one sync at the end.

    Small inputs (pa_theory's patch vectors) are evaluated in a few large batches: a long
    full-batch run evaluates after every one-step epoch. `calibration` collects the
    predictions' confidence bins on the way (for the ECE).
    """
    model.eval()
    n = len(data.test_x)
    per_sample = max(1, data.test_x[0].numel()) if n else 1
    batch_size = batch_size or min(16384, max(1024, 2**22 // per_sample))
    nll = torch.zeros((), device=data.test_x.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.test_x.device, dtype=torch.long)
    for start in range(0, n, batch_size):
        x = accel.to_memory_format(data.normalize(data.test_x[start : start + batch_size]), fmt)
        y = data.test_y[start : start + batch_size]
        with accel.autocast(x.device, amp):
            logits = model(x)
        nll += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
        if calibration is not None:
            calibration.add(logits.float(), y)
    return nll.item() / n, correct.item() / n


def evaluate_with_ece(model: nn.Module, data: TrialData, amp: torch.dtype | None = None,
                      fmt: torch.memory_format = torch.contiguous_format) -> tuple[float, float, float]:
    """(NLL, accuracy, ECE over ECE_BINS bins) on the test split: the metrics of a trial's test predictions."""
    counts = CalibrationCounts(ECE_BINS, data.test_x.device)
    nll, acc = evaluate(model, data, amp=amp, fmt=fmt, calibration=counts)
    return nll, acc, counts.ece()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy on class indices, or on soft targets (mixup/cutmix) smoothed the same way."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def block_shuffle_of(data: TrialData) -> BlockShuffle | None:
    """The dataset's block shuffle, for a loader that must augment in image space."""
    grid = data.meta.get("shuffle_grid")
    if grid is None or data.input_kind != "image" or grid >= data.img_size:
        return None
    return BlockShuffle(grid, data.meta.get("shuffle_seed", 0), data.img_size, data.train_x.device)


def make_loader(data: TrialData, train: dict[str, Any], generator: torch.Generator | None,
                batch_size: int | None = None) -> DeviceLoader:
    """The trial's augmented training batches (also what analyses on training data draw from)."""
    return DeviceLoader(
        data.train_x, data.train_y, batch_size or batch_size_for(train, data.n_train), data.normalize,
        augment=train["augment"], generator=generator, num_classes=data.num_classes,
        crop_padding=train["crop_padding"], randaugment_n=train["randaugment_n"], randaugment_m=train["randaugment_m"],
        mixup_alpha=train["mixup_alpha"], cutmix_alpha=train["cutmix_alpha"], block_shuffle=block_shuffle_of(data),
    )


def run_due_analyses(config: dict[str, Any], model: nn.Module, data: TrialData, dev: torch.device,
                     epoch: int, plan: TrainingPlan | None = None) -> list[dict[str, Any]]:
    """The trial's analyses that are due after `epoch` (0: at initialisation), as analysis-table rows.

    `plan`: the trial's epochs and warmup as it trains them (under a steps budget they differ
    from the train block's), for `end` and `warmup_end`."""
    train = config["train"]
    epochs, warmup = (plan.epochs, plan.warmup_epochs) if plan else (train["epochs"], train["warmup_epochs"])
    specs = [a for a in config.get("analysis") or [] if due(a, epoch, epochs, warmup)]
    if not specs:
        return []
    generator = stream_generator("analysis", config["seed"], epoch, device=dev)
    ctx = AnalysisContext(
        model=model, data=data, config=config, device=dev, epoch=epoch,
        train_batches=lambda size: iter(make_loader(data, train, generator, size)),
        loss_fn=lambda logits, y: classification_loss(logits, y, train["label_smoothing"]),
    )
    was_training = model.training
    rows = []
    for spec in specs:
        rows += run_analysis(spec, ctx)
        model.train(was_training)
    return rows


def run_trial(
    config: dict[str, Any],
    *,
    on_epoch: EpochHook | None = None,
    resume: dict[str, Any] | None = None,
    device: str | None = None,
    source_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one resolved trial config; return its metrics, epoch history and analysis rows.

    A downstream trial of a transfer sweep gets its source trial's final weights as
    `source_state`, and starts from them as its `transfer` mode says (bench.transfer).
    """
    started = time.perf_counter()
    train = config["train"]
    dev = resolve_device(device)
    entry = model_entry(config["model"])
    input_kind = entry.input_kind
    accel.configure_device(dev)
    amp = accel.autocast_dtype(dev, train.get("precision", "auto"))
    fmt = accel.memory_format(entry.family, dev)

    torch.manual_seed(config["seed"])
    # A search trial of a tuned sweep is scored on a validation split and never sees the test set.
    searching = config.get("phase") == "search"
    loss_key, acc_key = ("val_loss", "val_acc") if searching else ("test_loss", "test_acc")
    data = build_trial_data(config["dataset"], config["train_size"], config["seed"], dev, input_kind,
                            val_size=config.get("val_size") if searching else None)
    model = build_model(config, data).to(dev)
    transfer_info = prepare_transfer(model, config, source_state)
    params = count_params(model)
    flops = count_flops(model, data.input_shape)
    model = model.to(memory_format=fmt)
    step_model = accel.compiled(model, train.get("compile", False))
    compile_s: float | None = None

    generator = stream_generator("loader", config["seed"], device=dev)  # not the init's stream
    loader = make_loader(data, train, generator)
    optimizer = make_optimizer(model, train)
    steps_per_epoch = len(loader)
    plan = training_plan(train, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, train))

    history: list[dict[str, Any]] = []
    analysis_rows: list[dict[str, Any]] = []
    first_epoch, train_time, samples_seen, elapsed_before = 0, 0.0, 0, 0.0
    attempt, resumed_from_epoch, diverged_at = 1, None, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history = list(resume["history"])
        analysis_rows = list(resume.get("analysis", []))
        first_epoch, train_time, samples_seen = resume["epoch"], resume["train_time"], resume["samples_seen"]
        elapsed_before = resume["elapsed"]
        attempt, resumed_from_epoch = resume.get("attempt", 1) + 1, resume["epoch"]
    else:
        analysis_rows += run_due_analyses(config, model, data, dev, 0, plan)

    for epoch in range(first_epoch, plan.epochs):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        steps_done, seen = epoch * steps_per_epoch, 0  # every earlier epoch was whole
        for x, y in loader:
            first_compiled_step = step_model is not model and compile_s is None
            if first_compiled_step:
                accel.sync(dev)
                step_started = time.perf_counter()
            with accel.autocast(dev, amp):
                logits = step_model(accel.to_memory_format(x, fmt))
                loss = classification_loss(logits.float(), y, train["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train["grad_clip"]:
                nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            steps_done, seen = steps_done + 1, seen + len(y)
            hard = y if y.ndim == 1 else y.argmax(dim=1)  # mixed targets: the dominant class
            correct += (logits.detach().argmax(dim=1) == hard).sum()
            if first_compiled_step:  # the compile, apart from training throughput
                accel.sync(dev)
                compile_s = time.perf_counter() - step_started
                epoch_start += compile_s
            if steps_done >= plan.total_steps:  # a steps budget ends inside this epoch
                break
        accel.sync(dev)
        train_time += time.perf_counter() - epoch_start
        samples_seen += seen
        eval_loss, eval_acc, eval_ece = evaluate_with_ece(model, data, amp=amp, fmt=fmt)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / max(1, seen),
            "train_acc": correct.item() / max(1, seen),
            "steps": steps_done,  # optimizer steps so far
            loss_key: eval_loss,
            acc_key: eval_acc,
            **({} if searching else {"ece": eval_ece}),  # calibration of the test predictions
            "lr": optimizer.param_groups[0]["lr"],
            "wall_s": elapsed_before + time.perf_counter() - started,
            "attempt": attempt,  # > 1: this epoch ran after a resume from a checkpoint
        }
        history.append(row)
        if not math.isfinite(row["train_loss"]):  # diverged: stop now, report where
            diverged_at = epoch + 1
            break
        analysis_rows += run_due_analyses(config, model, data, dev, epoch + 1, plan)
        if on_epoch is not None:
            done_epoch, done_time, done_samples, elapsed = epoch + 1, train_time, samples_seen, row["wall_s"]
            on_epoch(row, lambda: {
                "epoch": done_epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "history": list(history), "analysis": list(analysis_rows),
                "train_time": done_time, "samples_seen": done_samples, "elapsed": elapsed, "attempt": attempt,
            })

    if history:
        last = history[-1]
        eval_loss, eval_acc, train_loss, train_acc = last[loss_key], last[acc_key], last["train_loss"], last["train_acc"]
        eval_ece = last.get("ece")
    else:  # epochs: 0 evaluates the initialisation
        eval_loss, eval_acc, eval_ece = evaluate_with_ece(model, data, amp=amp, fmt=fmt)
        train_loss = train_acc = None
    return {
        "trial_id": config.get("trial_id"),
        "status": "ok" if diverged_at is None else "diverged",
        "diverged_epoch": diverged_at,
        "resumed_from_epoch": resumed_from_epoch,
        "epochs": len(history),
        "n_train": data.n_train,
        "test_acc": None if searching else eval_acc,
        "test_loss": None if searching else eval_loss,
        "ece": None if searching else eval_ece,
        **({"val_acc": eval_acc, "val_loss": eval_loss} if searching else {}),
        "train_loss": train_loss,
        "train_acc": train_acc,
        "params": params,
        "flops": flops,
        "wall_s": elapsed_before + time.perf_counter() - started,
        "train_samples_per_s": samples_seen / train_time if train_time > 0 else None,
        "device": device_name(dev),
        "compile_s": compile_s,
        "recorded": {"param_groups": decay_groups(model), "steps_per_epoch": steps_per_epoch, "ece_bins": ECE_BINS,
                     "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                     "precision": str(amp).removeprefix("torch.") if amp else "fp32",
                     "memory_format": "channels_last" if fmt == torch.channels_last else "contiguous",
                     **({"new_head": transfer_info["new_head"]} if config.get("source") else {})},
        "history": history,
        "analysis": analysis_rows,
    }
