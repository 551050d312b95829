"""How a trial uses its device: mixed precision, TF32, memory format, compilation. No Ray here.

Why one module: these are the settings that make a trial run near what a GPU can do, and
each has a rule about when it applies (bf16 only where the device has it, fp32 for the
analyses, channels_last only for convolutional networks). The worker asks here instead
of repeating the rules; CPU tests check every rule, since the test machine has no GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

#: Families whose layers are mostly convolutions: they get NHWC (channels_last) on a GPU,
#: where cuDNN's tensor-core kernels want it. Attention models keep NCHW (their only
#: convolution is the patch embedding).
CONV_FAMILIES = frozenset({"resnet", "preact_resnet", "alternet"})


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of training steps, or None for plain fp32.

    'auto' is bf16 on a GPU that has it and fp32 elsewhere (a CPU's bf16 is slower than
    its fp32 on most machines); 'bf16' asks for it on any device; 'fp32' never.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing. Analyses run outside it, in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer's edge); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on a GPU (fp32 accuracy where it matters is the analyses',
    which set their own precision); nothing on a CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def memory_format(family: str, device: torch.device) -> torch.memory_format:
    """channels_last for convolutional families on a GPU, contiguous otherwise."""
    if device.type == "cuda" and family in CONV_FAMILIES:
        return torch.channels_last
    return torch.contiguous_format


def to_memory_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """An image batch in `fmt` (other inputs, e.g. patch vectors, unchanged)."""
    if fmt == torch.contiguous_format or x.ndim != 4:
        return x
    return x.contiguous(memory_format=fmt)


def compiled(model: nn.Module, enabled: bool) -> Callable[..., Any]:
    """The model as training steps call it: `torch.compile`d when asked (its first step then
    compiles; the worker times that step apart as `compile_s`), else the model itself.
    Evaluation and analyses call the eager model: other batch sizes would recompile."""
    return torch.compile(model) if enabled else model
