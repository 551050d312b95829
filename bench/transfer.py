"""Transfer settings: how a downstream trial starts from its source trial's final weights.

Modes (`transfer:` of a stage with a `source:`):
- `scratch`: the same architecture from a fresh init (the baseline every mode is read against);
- `finetune`: every weight from the source, all trained;
- `linear_probe`: every weight from the source, only the classifier trained;
- `freeze_attention`: the attention frozen (what shapes the attention maps: positional
  attention's P and W_Q, W_K; a vanilla ViT's whole attention layers; pa_theory's A), the
  rest trained, as in Jelassi et al.'s transfer claim;
- `freeze_backbone`: everything before the classifier frozen, the classifier and the final
  norm trained.
When the class count changes the classifier is new (freshly initialised). The trial config
records which parameters were frozen (`recorded.param_groups.frozen`).

Worker code: no Ray here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MODES = ("scratch", "finetune", "linear_probe", "freeze_attention", "freeze_backbone")
ATTENTION_FAMILIES = frozenset({"vit", "vit_pos", "theory", "swin", "pit", "convit", "alternet"})
#: Modes that keep only a classifier trainable: models without one (pa_theory) cannot use them.
NEEDS_CLASSIFIER = frozenset({"linear_probe", "freeze_backbone"})


def mode_problem(mode: str, model: str) -> str | None:
    """Why `mode` does not fit `model`, or None (checked when the sweep file is read)."""
    from bench.models import model_entry

    if mode not in MODES:
        return f"unknown transfer mode '{mode}' (modes: {', '.join(MODES)})"
    family = model_entry(model).family
    if mode == "freeze_attention" and family not in ATTENTION_FAMILIES:
        return f"freeze_attention needs a model with attention; {model} has none"
    if mode in NEEDS_CLASSIFIER and family == "theory":
        return f"{mode} trains only a classifier, and {model} has none (use freeze_attention to train v alone)"
    return None


def classifier(model: nn.Module) -> nn.Module | None:
    """The final linear classifier (`head`, or `fc` for the ResNets), if the model has one."""
    for name in ("head", "fc"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return module
    return None


def load_source_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the source's weights into `model`; a classifier whose shape changed stays new.

    Returns the names that were not copied (the new head). Anything else that does not fit
    is an error: a source of another architecture is a sweep mistake, not a transfer.
    """
    own = model.state_dict()
    head = classifier(model)
    head_names = {f"{n}.{p}" for n, m in model.named_modules() if m is head for p in ("weight", "bias")} if head else set()
    skipped = [k for k in own if k in head_names and k in state and state[k].shape != own[k].shape]
    kept = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(f"source weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return skipped


def freeze_for_mode(model: nn.Module, mode: str) -> list[str]:
    """Set requires_grad for `mode`; returns the frozen parameter names."""
    frozen: set[str] = set()
    names = dict(model.named_parameters())
    if mode == "freeze_attention":
        frozen = {n for n, _ in model.attention_parameters()}
    elif mode in NEEDS_CLASSIFIER:
        head = classifier(model)
        keep = {id(p) for p in head.parameters()}
        if mode == "freeze_backbone" and isinstance(getattr(model, "norm", None), nn.Module):
            keep |= {id(p) for p in model.norm.parameters()}
        frozen = {n for n, p in names.items() if id(p) not in keep}
    for name in frozen:
        names[name].requires_grad_(False)
    return sorted(frozen)


def prepare(model: nn.Module, config: dict[str, Any], source_state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Start a downstream trial's model from its source as its transfer mode says; what was done."""
    mode = config.get("transfer")
    if mode is None or mode == "scratch":
        return {"transfer": mode, "new_head": []}
    if source_state is None:
        raise ValueError(f"trial {config.get('trial_id')}: transfer '{mode}' needs its source's weights")
    new_head = load_source_weights(model, source_state)
    freeze_for_mode(model, mode)
    return {"transfer": mode, "new_head": new_head}
