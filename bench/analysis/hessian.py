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
        for j, (value, done) in enumerate(zip(result.eigenvalues, result.converged)):
            rows.append({"metric": "eigenvalue", "layer": None, "index": b * options.k + j, "value": value})
            # 1 if it met the tolerance, 0 if it is the best estimate when max_iter ran out. An estimate
            # is still a Rayleigh quotient: a negative one proves an eigenvalue at least that negative.
            rows.append({"metric": "eigenvalue_converged", "layer": None, "index": b * options.k + j,
                         "value": float(done)})
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


def symlog_threshold(values: Any) -> float | None:
    """The linear range of a symmetric-log eigenvalue axis, or None when a linear axis shows every value.

    Spectra of different models differ by orders of magnitude (a ResNet's top eigenvalue can be
    100x a ViT's) and the negative values that matter are often small: on a linear axis they
    sit on top of each other at 0. Linear when all magnitudes are within 20x of each other.
    """
    import numpy as np

    mags = np.abs(np.asarray(values, dtype=float))
    mags = mags[np.isfinite(mags) & (mags > 0)]
    if len(mags) == 0 or mags.max() / mags.min() < 20:
        return None
    return float(max(10 ** np.floor(np.log10(mags.min())), mags.max() * 1e-4))


@register_plot("hessian")
def plot_hessian(frame: Any) -> Any:
    """Per model (and per analysed epoch, when the spectrum was also taken during training, e.g. at
    the end of warmup), every batch's top-k eigenvalues (left, one row each) and their cumulative
    share (right: the spectrum as an empirical CDF; its height just left of 0 is NEP), with NEP and
    APE in the legend.

    Not the paper's histogram density: with the tens of eigenvalues a CPU run affords, a density
    is mostly empty bins on a log axis. Both panels share a symmetric-log axis when the models'
    magnitudes differ (see `symlog_threshold`). Earlier epochs are drawn hollow and dashed.
    """
    import numpy as np

    from bench.analysis.figures import metric, model_colors, new_figure, no_data

    eig = metric(frame, "eigenvalue")
    if "epoch" not in eig.columns or eig["epoch"].isna().all():
        eig = eig.assign(epoch=0)
    groups = sorted({(m, int(e)) for m, e in zip(eig["model"], eig["epoch"].fillna(0))})
    fig, (strip, cdf) = new_figure(1, 2, width=11.0, height=max(4.8, 1.8 + 0.55 * len(groups)))
    if eig.empty:
        no_data(strip, "eigenvalue")
        no_data(cdf, "eigenvalue")
        return fig
    colors = model_colors(sorted({m for m, _ in groups}))
    last = {m: max(e for mm, e in groups if mm == m) for m, _ in groups}
    several = any(sum(1 for mm, _ in groups if mm == m) > 1 for m in last)
    shares = metric(frame, "converged_share")
    rng = np.random.default_rng(0)  # jitter only spreads overlapping dots; fixed so figures are reproducible
    names = []
    for row, (model, epoch) in enumerate(groups):
        group = eig[(eig["model"] == model) & (eig["epoch"].fillna(0) == epoch)]
        values = np.sort(group["value"].to_numpy(dtype=float))
        summary = spectrum_summary(values.tolist())
        name = f"{model}, epoch {epoch}" if several else model
        names.append(name)
        ape = "n/a" if math.isnan(summary["ape"]) else f"{summary['ape']:.3g}"
        label = f"{name}: NEP {summary['nep']:.2f}, APE {ape} (n={len(values)}, {group['trial_id'].nunique()} trial(s)"
        converged = shares[(shares["model"] == model) & (shares["epoch"].fillna(0) == epoch)]["value"] \
            if "epoch" in shares.columns else shares[shares["model"] == model]["value"]
        if len(converged):
            label += f", {100 * converged.mean():.0f}% converged"
        label += ")"
        final = epoch == last[model]
        strip.scatter(values, row + rng.uniform(-0.22, 0.22, len(values)), s=16, alpha=0.8,
                      color=colors[model] if final else "none", edgecolors="none" if final else colors[model],
                      label=label)
        share = np.arange(1, len(values) + 1) / len(values)
        cdf.step(np.concatenate([[values[0]], values]), np.concatenate([[0.0], share]), where="post",
                 linewidth=1.8, color=colors[model], linestyle="-" if final else "--", label=label)
    threshold = symlog_threshold(eig["value"])
    for ax in (strip, cdf):
        if threshold is not None:
            ax.set_xscale("symlog", linthresh=threshold)
        ax.axvline(0.0, color="0.4", linewidth=0.9, linestyle=":")
        ax.grid(alpha=0.3, axis="x")
        scale = "" if threshold is None else f" (symlog, linear within ±{threshold:.3g})"
        ax.set_xlabel(f"Hessian eigenvalue{scale}")
    strip.set_yticks(range(len(groups)), names)
    strip.set_ylim(-0.6, len(groups) - 0.4)
    strip.invert_yaxis()
    strip.set_title("Hessian spectrum: top-k eigenvalues of every mini-batch")
    cdf.set_ylim(0.0, 1.02)
    cdf.set_ylabel("share of eigenvalues ≤ x")
    cdf.set_title("Spectrum as a cumulative share (height at 0 = NEP)")
    # Below both panels: inside, it covers the curves it explains.
    fig.legend(*cdf.get_legend_handles_labels(), loc="outside lower center", ncol=2 if len(groups) > 3 else 1,
               fontsize=7.5, frameon=False)
    return fig
