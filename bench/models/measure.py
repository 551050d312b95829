"""Parameter and FLOP counts, the numbers written to every trial row and `bench models`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.models.layers import set_attention_impl


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one input of `input_shape` (no batch dim), counted as 2 x MACs.

    Counted with the math attention path so that attention matmuls are seen whatever
    kernel the fused path would pick; the model's train/eval mode and attention setting
    are restored afterwards.
    """
    was_training = model.training
    fused = {m: m.fused for m in model.modules() if hasattr(m, "fused")}
    device = next(model.parameters()).device
    try:
        model.eval()
        set_attention_impl(model, "math")
        counter = FlopCounterMode(display=False)
        with counter:  # not under no_grad: the module tracker hooks autograd
            model(torch.zeros((1, *input_shape), device=device))
        return int(counter.get_total_flops())
    finally:
        for m, f in fused.items():
            m.fused = f
        model.train(was_training)
