"""Hessian max-eigenvalue spectra (Park & Kim): top-k eigenvalues per mini-batch.

For each of many augmented training batches, the k largest-magnitude eigenvalues of the
Hessian of (training loss + L2 term) are found by power iteration with Hessian-vector
products (HVPs, double backward) and deflation, in eval mode, through the math attention
path in float32 (fused attention kernels have no double backward). All of them together
are the spectrum; NEP (share of negative eigenvalues) and APE (mean of the positive ones)
summarise it. A negative value is a dominant negative curvature: power iteration finds
the largest magnitudes.

Single-vector power iteration with deflation (the paper's) converges on eigenvalue j at
the rate |lambda_{j+1} / lambda_j| per HVP, and a Rayleigh quotient that changes by less
than `tol` can still be far off when top eigenvalues are close or of both signs (we saw
errors of 2x on small models). So the power iteration here runs on a block of k + 3
vectors with a Rayleigh-Ritz step, and deflates by locking the eigenpairs that have
converged: the same HVPs, each eigenvalue converging at |lambda_{k+4} / lambda_j|, and a
stopping rule that bounds the error (see `deflated_power_iteration`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from bench.analysis.probes import decayed_mask, preserved, training_batches, training_loss, weight_decay
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EigenResult:
    """Top eigenvalues of one batch's Hessian and what finding them cost."""

    eigenvalues: list[float]
    hvps: int  # Hessian-vector products spent on all of them
    iterations: int  # block multiplications
    converged: list[bool]
    seconds: float = 0.0

    @property
    def hvps_per_eigenvalue(self) -> float:
        return self.hvps / max(len(self.eigenvalues), 1)


class HessianOperator:
    """v -> H v for the Hessian of a scalar objective w.r.t. `params`, H of (objective + l2/2 ||w_decayed||^2).

    The gradient graph is built once (create_graph=True); each product is one backward
    pass through it. Vectors are flat float32 tensors over the concatenated parameters.
    """

    def __init__(self, objective: torch.Tensor, params: list[nn.Parameter], l2: float = 0.0,
                 decayed: list[bool] | None = None):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.size = sum(self.sizes)
        grads = torch.autograd.grad(objective, params, create_graph=True, allow_unused=True)
        # Gradients that are constant (no graph) or absent have zero Hessian rows and columns.
        self.live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.live]
        self.l2 = l2
        self.l2_mask = None
        if l2 and decayed is not None and any(decayed):
            self.l2_mask = torch.cat([torch.full((p.numel(),), float(d), device=p.device)
                                      for p, d in zip(params, decayed)])
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros_like(v)
        if self.grads:
            pieces = v.split(self.sizes)
            hv = torch.autograd.grad(self.grads, self.params, grad_outputs=[pieces[i].view_as(self.params[i])
                                                                             for i in self.live],
                                     retain_graph=True, allow_unused=True)
            parts = [torch.zeros(n, device=v.device) if h is None else h.reshape(-1) for h, n in zip(hv, self.sizes)]
            out = torch.cat(parts).float()
        if self.l2_mask is not None:
            out = out + self.l2 * self.l2_mask * v
        return out


def _orthonormal_rows(v: torch.Tensor, locked: torch.Tensor | None) -> torch.Tensor:
    """Rows of `v` made orthonormal and orthogonal to the `locked` rows (the deflation), in float64."""
    for _ in range(2):  # twice: classical Gram-Schmidt against the locked vectors loses orthogonality once
        if locked is not None and len(locked):
            v = v - (v @ locked.T) @ locked
        q, _ = torch.linalg.qr(v.T)
        v = q.T
    return v


def deflated_power_iteration(hvp: Callable[[torch.Tensor], torch.Tensor], size: int, k: int, tol: float,
                             max_iter: int, device: torch.device | str = "cpu",
                             generator: torch.Generator | None = None, oversample: int = 3) -> EigenResult:
    """The k largest-magnitude eigenvalues of the symmetric operator `hvp`, by block power iteration.

    A block of k + `oversample` vectors is multiplied by H (one HVP each), and the
    Rayleigh-Ritz step (eigenvalues of the block's projected matrix) gives the estimates
    and rotates the block onto the Ritz vectors; the next block is H times that, made
    orthonormal. Estimates that have converged, in magnitude order, are locked: their
    vectors leave the block and every later product is deflated against them. An estimate
    theta with residual r = |H q - theta q| is within min(r, r^2 / gap) of an eigenvalue
    (gap: its distance to the other estimates, Kato-Temple); it converges when that is
    below tol * |theta|. `max_iter` caps the block multiplications.
    """
    started = time.perf_counter()
    k = min(k, size)
    block = _orthonormal_rows(torch.randn(min(size, k + oversample), size, device=device, generator=generator,
                                          dtype=torch.float64), None)
    vectors: list[torch.Tensor] = []
    values: list[float] = []
    hvps, iterations = 0, 0
    theta = torch.zeros(0, dtype=torch.float64)
    while iterations < max_iter and len(values) < k and len(block):
        iterations += 1
        products = torch.stack([hvp(row.float()).double() for row in block])
        hvps += len(block)
        if vectors:
            locked = torch.stack(vectors)
            products = products - (products @ locked.T) @ locked
        projected = block @ products.T
        theta, rot = torch.linalg.eigh((projected + projected.T) / 2)
        order = torch.argsort(theta.abs(), descending=True)
        theta, rot = theta[order], rot[:, order]
        ritz, ritz_products = rot.T @ block, rot.T @ products
        residual = (ritz_products - theta[:, None] * ritz).norm(dim=1).tolist()
        estimates = theta.tolist()
        newly = 0
        for i in range(min(len(estimates), k - len(values))):
            gap = min([abs(e - estimates[i]) for j, e in enumerate(estimates) if j != i]
                      + [abs(v - estimates[i]) for v in values], default=math.inf)
            bound = residual[i] if not math.isfinite(gap) else min(residual[i], residual[i] ** 2 / max(gap, 1e-300))
            if bound > tol * abs(estimates[i]):
                break
            newly += 1
        vectors += list(ritz[:newly])
        values += estimates[:newly]
        theta = theta[newly:]
        block = _orthonormal_rows(ritz_products[newly:], torch.stack(vectors) if vectors else None)
    converged = [True] * len(values)
    missing = k - len(values)
    if missing > 0:  # the cap was reached: the best estimates so far, flagged not converged
        values += theta[:missing].tolist()
        converged += [False] * missing
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    return EigenResult([values[i] for i in order], hvps, iterations, [converged[i] for i in order],
                       time.perf_counter() - started)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def batch_eigenvalues(model: nn.Module, loss_fn: LossFn, batch: tuple[torch.Tensor, torch.Tensor], k: int = 5,
                      tol: float = 1e-3, max_iter: int = 100, l2: float = 0.0, seed: int = 0) -> EigenResult:
    """Top-k eigenpairs of the Hessian of loss_fn(model(x), y) (+ the L2 term) w.r.t. the trainable parameters.

    Runs in eval mode through the math attention path, in float32; the model comes back
    in its mode and attention path.
    """
    inputs, targets = batch
    named = _trainable(model)
    params = [p for _, p in named]
    device = params[0].device
    with preserved(model, attention="math"), torch.autocast(device.type, enabled=False):
        loss = loss_fn(model(inputs.float() if inputs.is_floating_point() else inputs), targets)
        op = HessianOperator(loss, params, l2, decayed_mask(model, named))
        gen = torch.Generator(device=device).manual_seed(seed)
        result = deflated_power_iteration(op, op.size, k, tol, max_iter, device, gen)
        del op
    return result


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, batch: tuple[torch.Tensor, torch.Tensor], k: int = 5,
                    tol: float = 1e-3, max_iter: int = 100) -> list[float]:
    """The k largest-magnitude eigenvalues of the Hessian of loss_fn(model(inputs), targets)
    w.r.t. the trainable parameters, largest magnitude first (contract entry point)."""
    return batch_eigenvalues(model, loss_fn, batch, k, tol, max_iter).eigenvalues


# ----------------------------------------------------------------------------- the analysis


class HessianOptions(AnalysisOptions):
    """Park & Kim: batches of 16 covering ~10% of the training set, top 5, tol 1e-3.
    The defaults cap the cost for CPU runs; every option is recorded with the trial."""

    batch_size: int = Field(16, ge=1)
    n_batches: int = Field(8, ge=1)
    k: int = Field(5, ge=1)
    tol: float = Field(1e-3, gt=0)
    max_iter: int = Field(100, ge=2)
    l2: bool = True  # add (weight_decay / 2) ||w||^2 over the decayed weights to the loss
    seed: int = 0


def spectrum_summary(values: list[float]) -> dict[str, float]:
    """NEP (share of negative eigenvalues) and APE (mean of the positive ones)."""
    positive = [v for v in values if v > 0]
    return {
        "nep": sum(v < 0 for v in values) / len(values) if values else math.nan,
        "ape": sum(positive) / len(positive) if positive else math.nan,
    }


@register_analysis("hessian", HessianOptions)
def hessian_analysis(ctx: AnalysisContext, options: HessianOptions) -> list[dict[str, Any]]:
    """Top-k eigenvalues on `n_batches` augmented training batches; the spectrum, NEP, APE and the cost."""
    model = ctx.model
    loss_fn = training_loss(ctx)
    l2 = weight_decay(ctx) if options.l2 else 0.0
    batches = training_batches(ctx, options.batch_size, options.n_batches)
    rows: list[dict[str, Any]] = []
    values: list[float] = []
    hvps, seconds, converged = 0, 0.0, 0
    for b, batch in enumerate(batches):
        result = batch_eigenvalues(model, loss_fn, batch, options.k, options.tol, options.max_iter, l2,
                                   options.seed + b)
        for j, value in enumerate(result.eigenvalues):
            rows.append({"metric": "eigenvalue", "layer": None, "index": b * options.k + j, "value": value})
        rows.append({"metric": "batch_hvps", "layer": None, "index": b, "value": result.hvps})
        values += result.eigenvalues
        hvps += result.hvps
        seconds += result.seconds
        converged += sum(result.converged)
    count = max(len(values), 1)
    summary = spectrum_summary(values)
    rows += [
        {"metric": "nep", "layer": None, "index": None, "value": summary["nep"]},
        {"metric": "ape", "layer": None, "index": None, "value": summary["ape"]},
        {"metric": "max_eigenvalue", "layer": None, "index": None, "value": max(values) if values else math.nan},
        {"metric": "n_batches", "layer": None, "index": None, "value": len(batches)},
        {"metric": "hvps_total", "layer": None, "index": None, "value": hvps},
        {"metric": "hvps_per_eigenvalue", "layer": None, "index": None, "value": hvps / count},
        {"metric": "converged_share", "layer": None, "index": None, "value": converged / count},
        {"metric": "s_per_hvp", "layer": None, "index": None, "value": seconds / max(hvps, 1)},
        {"metric": "l2_coefficient", "layer": None, "index": None, "value": l2},
    ]
    return rows


@register_plot("hessian")
def plot_hessian(frame: Any) -> Any:
    """Eigenvalue spectra per model (histogram of every batch's top-k, log density), NEP/APE in the legend."""
    from bench.analysis.figures import new_figure, model_colors, last_epoch

    frame = last_epoch(frame)
    eig = frame[frame["metric"] == "eigenvalue"]
    fig, ax = new_figure(1, 1, width=6.4, height=4.2)
    ax = ax[0]
    colors = model_colors(sorted(eig["model"].unique()))
    import numpy as np

    if len(eig):
        lo, hi = float(eig["value"].min()), float(eig["value"].max())
        pad = 0.05 * max(hi - lo, 1e-9)
        bins = np.linspace(lo - pad, hi + pad, 40)
        for model, group in eig.groupby("model"):
            values = group["value"].to_numpy()
            summary = spectrum_summary(values.tolist())
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8, color=colors[model],
                    label=f"{model}: NEP {summary['nep']:.2f}, APE {summary['ape']:.3g} (n={len(values)})")
        ax.set_yscale("log")
        ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=8)
    ax.set_xlabel("Hessian eigenvalue (top-k per mini-batch)")
    ax.set_ylabel("density")
    ax.set_title("Hessian max-eigenvalue spectrum")
    return fig
