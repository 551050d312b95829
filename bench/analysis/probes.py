"""What the Park & Kim analyses share: a model left as it was found, block outputs read by
hooks, test and training batches, accuracy, and the L2 term of the training objective.

Every analysis runs in eval mode (no batch-norm updates, no drop-path) so that repeated
evaluations of the same inputs are identical, and puts the model back afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import nn

from bench.analysis.registry import AnalysisContext
from bench.models.base import BLOCK_KINDS

Batch = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def preserved(model: nn.Module, attention: str | None = None) -> Iterator[nn.Module]:
    """Eval mode (and the `attention` impl, 'fused' or 'math', if given) inside; train/eval
    mode and every layer's attention path exactly as before on exit."""
    was_training = model.training
    fused = {m: m.fused for m in model.modules() if hasattr(m, "fused")}
    model.eval()
    if attention is not None:
        for m in fused:
            m.fused = attention == "fused"
    try:
        yield model
    finally:
        for m, flag in fused.items():
            m.fused = flag
        model.train(was_training)


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`blocks()` of a zoo model; a model without it has none."""
    return list(model.blocks()) if hasattr(model, "blocks") else []


def block_kind_code(module: nn.Module) -> int:
    """The block's kind as its position in BLOCK_KINDS (stored as a number in the long table)."""
    kind = getattr(module, "kind", "conv")
    return BLOCK_KINDS.index(kind) if kind in BLOCK_KINDS else BLOCK_KINDS.index("conv")


def normalized_depth(position: int, count: int) -> float:
    """Block position scaled to 0 (stem) .. 1 (last block), as on Park & Kim's depth axes."""
    return position / (count - 1) if count > 1 else 0.0


@torch.no_grad()
def block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[int, str, nn.Module, torch.Tensor]]:
    """(position, name, module, output) for every block, from one forward pass of `x`."""
    blocks = model_blocks(model)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i, (_, module) in enumerate(blocks):
        def hook(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
            if torch.is_tensor(out):
                captured[i] = out.detach()
        handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [(i, name, module, captured[i]) for i, (name, module) in enumerate(blocks) if i in captured]


def feature_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[int, str, nn.Module, torch.Tensor]]:
    """Block outputs as (B, C, h, w) maps (`model.feature_map`); blocks without one are left out."""
    out = []
    for i, name, module, y in block_outputs(model, x):
        fmap = model.feature_map(y) if hasattr(model, "feature_map") else (y if y.ndim == 4 else None)
        if fmap is not None:
            out.append((i, name, module, fmap))
    return out


def held_out(ctx: AnalysisContext, n_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n_samples` test inputs (stored form: uint8 pixels or float data) and labels.

    The first ones, not a random draw: every trial and every epoch of a sweep sees the same images.
    """
    data = ctx.data
    n = len(data.test_x) if n_samples is None else min(n_samples, len(data.test_x))
    return data.test_x[:n], data.test_y[:n]


def as_float_inputs(x: torch.Tensor) -> torch.Tensor:
    """Stored inputs in data units: uint8 pixels become 0..1 floats (the Normalizer's float branch expects that)."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """(accuracy, mean NLL) of `model` on normalised `inputs`, in chunks; `transform` maps each chunk first."""
    correct, nll = 0, 0.0
    for start in range(0, len(inputs), batch_size):
        xb = inputs[start : start + batch_size]
        if transform is not None:
            xb = transform(xb)
        yb = targets[start : start + batch_size]
        logits = model(xb)
        correct += int((logits.argmax(dim=1) == yb).sum())
        nll += float(nn.functional.cross_entropy(logits.float(), yb, reduction="sum"))
    n = max(len(inputs), 1)
    return correct / n, nll / n


def training_batches(ctx: AnalysisContext, batch_size: int, count: int) -> list[Batch]:
    """`count` augmented, normalised training batches (fewer if the training set runs out).

    From `ctx.train_batches` (the trial's own augmentation); without it, plain shuffled
    batches of the training set.
    """
    if ctx.train_batches is not None:
        source = ctx.train_batches(batch_size)
    else:
        from bench.data import DeviceLoader

        gen = torch.Generator(device=ctx.data.train_x.device).manual_seed(0)
        source = DeviceLoader(ctx.data.train_x, ctx.data.train_y, batch_size, ctx.data.normalize, generator=gen)
    return list(itertools.islice(iter(source), count))


def training_loss(ctx: AnalysisContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trial's training loss; without one in the context, cross-entropy with the config's label smoothing."""
    if ctx.loss_fn is not None:
        return ctx.loss_fn
    from bench.train import classification_loss

    smoothing = float(ctx.config.get("train", {}).get("label_smoothing", 0.0) or 0.0)
    return lambda logits, targets: classification_loss(logits, targets, smoothing)


def weight_decay(ctx: AnalysisContext) -> float:
    return float(ctx.config.get("train", {}).get("weight_decay", 0.0) or 0.0)


def decayed_mask(model: nn.Module, params: list[tuple[str, nn.Parameter]]) -> list[bool]:
    """Which parameters the optimizer decays (as bench.train.make_optimizer chooses them): weight
    matrices and kernels, not biases, norms, nor what the model lists in `no_weight_decay()`."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return [p.ndim >= 2 and n not in skip for n, p in params]


def l2_term(model: nn.Module, coefficient: float) -> torch.Tensor:
    """(coefficient / 2) * ||w||^2 over the decayed parameters: the L2 form of the trial's weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = torch.zeros((), device=next(model.parameters()).device)
    for (_, p), decayed in zip(named, decayed_mask(model, named)):
        if decayed:
            total = total + p.pow(2).sum()
    return 0.5 * coefficient * total


def image_model(model: str, dataset: str) -> bool:
    """`applies` of the spatial analyses: models that take images (not patch vectors)."""
    from bench.models import model_entry

    return model_entry(model).input_kind == "image"
