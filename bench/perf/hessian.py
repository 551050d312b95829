"""The `hessian` suite: seconds per Hessian-vector product of full-size models at batch 16.

What the Hessian analysis spends its time on: for `vit_ti` (Park & Kim's CIFAR ViT-Ti,
patch 2, 257 tokens, 5.4M params) and `resnet18` (CIFAR stem, 11.2M params), 10 classes,
32 px, batch 16 of random normalised images, in eval mode through the math attention
path, float32: the gradient with its graph (once per batch) and then HVPs (one backward
through that graph each). A repeat times `hvps` products; the figure is seconds per HVP,
the median over repeats.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from bench.perf.registry import register_suite
from bench.perf.timing import figure, sync

MODELS = ("vit_ti", "resnet18")


def measure(name: str, batch: int, img_size: int, repeats: int, hvps: int, device: torch.device,
            model_args: dict[str, Any] | None = None) -> tuple[list[float], list[float]]:
    """(seconds per HVP per repeat, seconds of the gradient-with-graph per repeat) for one model."""
    from bench.analysis.hessian import HessianOperator
    from bench.analysis.probes import preserved
    from bench.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=img_size, **(model_args or {})).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    per_hvp, graph_s = [], []
    with preserved(model, attention="math"):
        for r in range(repeats + 1):  # the first round warms up (allocator, lazy init), untimed
            sync(device)
            start = time.perf_counter()
            op = HessianOperator(F.cross_entropy(model(x), y), params)
            sync(device)
            built = time.perf_counter()
            v = torch.randn(op.size, device=device)
            for _ in range(hvps):
                v = op(v)
                v = v / v.norm()
            sync(device)
            done = time.perf_counter()
            del op
            if r:
                graph_s.append(built - start)
                per_hvp.append((done - built) / hvps)
            print(f"  {name} round {r} ({'timed' if r else 'warm-up'}): gradient with graph {built - start:.2f} s, "
                  f"{(done - built) / hvps:.2f} s/HVP", flush=True)
    return per_hvp, graph_s


@register_suite("hessian", "seconds per Hessian-vector product (double backward) of vit_ti and resnet18 at batch 16")
def run_hessian_suite(quick: bool) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, img_size = 16, 32
    repeats, hvps = (1, 1) if quick else (3, 2)
    model_args: dict[str, Any] = {"depth": 1, "dim": 32, "heads": 2} if quick else {}
    rows, settings = [], {}
    for name in MODELS:
        args = model_args if name == "vit_ti" else ({"width": 8} if quick else {})
        per_hvp, graph_s = measure(name, batch, 16 if quick else img_size, repeats, hvps, device, args)
        rows.append(figure(f"{name} HVP, batch {batch}", per_hvp, unit="s/HVP", batch_size=batch))
        rows.append(figure(f"{name} gradient with graph (once per batch), batch {batch}", graph_s, unit="s",
                           batch_size=batch))
        settings[name] = {"model_args": args, "median_s_per_hvp": statistics.median(per_hvp)}
    return {
        "rows": rows,
        "ratios": {},
        "settings": {"device": str(device), "img_size": 16 if quick else img_size, "batch_size": batch,
                     "repeats": repeats, "hvps_per_repeat": hvps, "attention": "math", "dtype": "float32",
                     "threads": torch.get_num_threads(), "models": settings},
    }
