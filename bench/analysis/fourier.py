"""Fourier analysis of feature maps (Park & Kim): MSAs are low-pass filters, Convs high-pass.

For each block output (the residual stream; ViT tokens laid out on their grid without
CLS), ΔlogAmp(f) is computed as the authors' notebook (xxxnell/how-do-vits-work,
fourier_analysis.ipynb) computes it: log(|FFT2| + 1e-6) over the spatial dims, rolled by
(h/2, w/2) so that frequency 0 sits at the centre, averaged over batch and channels, the
half-diagonal `diag()[h/2:]`, minus its first value (frequency 0). The value at the last
point, per block against normalised depth, is the summary.

The half-diagonal of an h x h map (h even) runs over the unshifted indices (k, k),
k = 0 .. h/2 - 1: frequencies 0 .. (1 - 2/h)·pi in steps of 2·pi/h. It leaves out the
Nyquist frequency pi (index h/2, which the roll wraps to the corner), where a checkerboard
puts all its energy; on small maps that last point matters (4 x 4: 0, pi/2; the Nyquist
option adds pi). `nyquist: true` appends it (bench's reading before issue 26). An odd h
has no pi: its half-diagonal ends at (1 - 1/h)·pi and the option changes nothing. The
resolution is recorded with the metric.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field

from bench.analysis.probes import image_model, block_kind_code, feature_maps, held_out, normalized_depth, preserved
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot

#: Added to |FFT| before the log, as in Park & Kim's code, so an empty frequency has a finite value.
EPS = 1e-6


def half_diagonal_indices(h: int, w: int, nyquist: bool = False) -> torch.Tensor:
    """Unshifted FFT indices (k, k) of the points `delta_log_amplitude` returns: the authors'
    `roll(h/2).diag()[h/2:]` is k = 0 .. h - h/2 - 1; `nyquist` appends k = h/2 (pi) for even h."""
    if h != w:
        raise ValueError(f"the half-diagonal is defined for square maps (as in the authors' code), got {h} x {w}")
    count = h - h // 2 + (1 if nyquist and h % 2 == 0 else 0)
    return torch.arange(count)


def diagonal_frequencies(h: int, w: int | None = None, nyquist: bool = False) -> torch.Tensor:
    """The frequencies (radians) of the points `delta_log_amplitude` returns: 2*pi*k/h."""
    return half_diagonal_indices(h, w or h, nyquist).double() * (2 * math.pi / h)


def log_amplitude(feature_map: torch.Tensor) -> torch.Tensor:
    """log(|FFT2| + eps) over the spatial dims, averaged over batch and channels: an (h, w) spectrum."""
    if feature_map.ndim != 4:
        raise ValueError(f"expected a (batch, channels, h, w) map, got shape {tuple(feature_map.shape)}")
    spectrum = torch.fft.fft2(feature_map.double(), dim=(-2, -1))
    return (spectrum.abs() + EPS).log().mean(dim=(0, 1))


def delta_log_amplitude(feature_map: torch.Tensor, nyquist: bool = False) -> torch.Tensor:
    """ΔlogAmp of a (batch, channels, h, w) map on the authors' half-diagonal (contract entry point).

    Element k is at frequency 2*pi*k/h, k = 0 .. h/2 - 1 (0 .. (1 - 2/h)·pi); element 0 is 0.
    `nyquist`: one more element, at pi (even h only).
    """
    amp = log_amplitude(feature_map)
    h, w = amp.shape
    centred = torch.roll(amp, shifts=(h // 2, w // 2), dims=(0, 1))  # the authors' shift
    half = centred.diag()[h // 2:]
    if len(half) < len(half_diagonal_indices(h, w, nyquist)):
        half = torch.cat([half, amp[h // 2, w // 2].reshape(1)])  # the Nyquist corner the roll wrapped away
    return (half - half[0]).float()


def high_frequency_value(feature_map: torch.Tensor, nyquist: bool = False) -> float:
    """ΔlogAmp at the last point of the half-diagonal ((1 - 2/h)·pi; pi with `nyquist`)."""
    return float(delta_log_amplitude(feature_map, nyquist)[-1])


class FourierOptions(AnalysisOptions):
    n_samples: int = Field(256, ge=1)  # test images (the first ones, the same for every trial)
    batch_size: int = Field(128, ge=1)
    #: Also the Nyquist frequency pi (even h): one more point on each `dlogamp` curve and a
    #: `dlogamp_nyquist` row per block, the high-frequency value bench read before issue 26.
    #: `dlogamp_high` stays the authors' (the last point of their half-diagonal) either way.
    nyquist: bool = False


def held_out_feature_maps(ctx: AnalysisContext, n_samples: int, batch_size: int) -> list[tuple[int, str, Any, torch.Tensor]]:
    """Feature maps of the first `n_samples` test images, concatenated over chunks of `batch_size`."""
    x, _ = held_out(ctx, n_samples)
    merged: dict[int, list[Any]] = {}
    for start in range(0, len(x), batch_size):
        inputs = ctx.data.normalize(x[start : start + batch_size])
        for i, name, module, fmap in feature_maps(ctx.model, inputs):
            merged.setdefault(i, [name, module, []])[2].append(fmap)
    # A 1 x 1 map (the last stage of a ResNet on small images) has no frequency but 0 and no spatial variance.
    return [(i, name, module, torch.cat(maps)) for i, (name, module, maps) in sorted(merged.items())
            if min(maps[0].shape[-2:]) >= 2]


def block_rows(ctx: AnalysisContext, maps: list[tuple[int, str, Any, torch.Tensor]]) -> list[dict[str, Any]]:
    """`depth` (normalised) and `kind` (index into BLOCK_KINDS) rows for the blocks that have maps."""
    count = len(ctx.model.blocks()) if hasattr(ctx.model, "blocks") else len(maps)
    rows = []
    for i, name, module, _ in maps:
        rows.append({"metric": "depth", "layer": name, "index": i, "value": normalized_depth(i, count)})
        rows.append({"metric": "kind", "layer": name, "index": i, "value": block_kind_code(module)})
    return rows


@register_analysis("fourier", FourierOptions, applies=image_model)
def fourier_analysis(ctx: AnalysisContext, options: FourierOptions) -> list[dict[str, Any]]:
    """ΔlogAmp per block and frequency, its value at the last point of the half-diagonal
    (`dlogamp_high`), and each map's resolution."""
    with preserved(ctx.model):
        maps = held_out_feature_maps(ctx, options.n_samples, options.batch_size)
    rows = block_rows(ctx, maps)
    for i, name, _, fmap in maps:
        delta = delta_log_amplitude(fmap, options.nyquist)
        freqs = diagonal_frequencies(fmap.shape[-2], fmap.shape[-1], options.nyquist)
        for j, value in enumerate(delta.tolist()):
            rows.append({"metric": "dlogamp", "layer": name, "index": j, "value": value})
            rows.append({"metric": "frequency", "layer": name, "index": j, "value": float(freqs[j]) / math.pi})
        high = len(half_diagonal_indices(*fmap.shape[-2:])) - 1  # the authors' last point, with or without pi
        rows.append({"metric": "dlogamp_high", "layer": name, "index": i, "value": float(delta[high])})
        if len(delta) > high + 1:
            rows.append({"metric": "dlogamp_nyquist", "layer": name, "index": i, "value": float(delta[-1])})
        rows.append({"metric": "resolution", "layer": name, "index": i, "value": fmap.shape[-1]})
    return rows


def per_block_curves(frame: Any, value_metric: str) -> Any:
    """(model, layer, depth, kind, mean, std) of a per-block metric, averaged over a model's trials."""
    from bench.analysis.figures import last_epoch, mean_std, metric

    frame = last_epoch(frame)
    values = metric(frame, value_metric)[["trial_id", "model", "layer", "value"]]
    depth = metric(frame, "depth")[["trial_id", "layer", "value"]].rename(columns={"value": "depth"})
    kind = metric(frame, "kind")[["trial_id", "layer", "value"]].rename(columns={"value": "kind"})
    joined = values.merge(depth, on=["trial_id", "layer"]).merge(kind, on=["trial_id", "layer"], how="left")
    out = mean_std(joined, ["model", "layer", "depth", "kind"])
    return out.sort_values(["model", "depth"])


def draw_per_block(ax: Any, curves: Any, colors: dict[str, Any]) -> None:
    """One line per model against normalised depth; MSA blocks as filled circles, others as open markers."""
    from bench.models.base import BLOCK_KINDS

    msa = BLOCK_KINDS.index("msa")
    for model, group in curves.groupby("model"):
        x, y, s = group["depth"].to_numpy(), group["mean"].to_numpy(), group["std"].to_numpy()
        ax.plot(x, y, linewidth=1.4, color=colors[model], label=model)
        if np.any(s > 0):
            ax.fill_between(x, y - s, y + s, color=colors[model], alpha=0.15, linewidth=0)
        is_msa = group["kind"].to_numpy() == msa
        ax.scatter(x[is_msa], y[is_msa], s=22, color=colors[model], zorder=3)
        ax.scatter(x[~is_msa], y[~is_msa], s=22, facecolors="white", edgecolors=colors[model], zorder=3)
    ax.set_xlabel("normalised depth (filled: MSA blocks)")
    ax.set_xlim(-0.02, 1.02)


@register_plot("fourier")
def plot_fourier(frame: Any) -> Any:
    """ΔlogAmp at the half-diagonal's last point against normalised depth per model; per-frequency curves beside it."""
    from bench.analysis.figures import last_epoch, model_colors, new_figure, no_data

    fig, (left, right) = new_figure(1, 2, width=11.0, height=4.2)
    curves = per_block_curves(frame, "dlogamp_high")
    colors = model_colors(sorted(frame["model"].dropna().unique()))
    if curves.empty:
        no_data(left, "fourier")
    else:
        draw_per_block(left, curves, colors)
        left.legend(fontsize=8)
    left.set_ylabel("ΔlogAmp at (1 - 2/h)π (half-diagonal's end)")
    left.set_title("Fourier: high-frequency amplitude vs depth")
    # Right: ΔlogAmp(f) of the last block of each model (mean over its trials).
    last = last_epoch(frame)
    amp = last[last["metric"] == "dlogamp"]
    freq = last[last["metric"] == "frequency"][["trial_id", "layer", "index", "value"]].rename(columns={"value": "f"})
    depth = last[last["metric"] == "depth"][["trial_id", "layer", "value"]].rename(columns={"value": "depth"})
    if not amp.empty:
        joined = amp.merge(freq, on=["trial_id", "layer", "index"]).merge(depth, on=["trial_id", "layer"])
        for model, group in joined.groupby("model"):
            deepest = group[group["depth"] == group["depth"].max()]
            mean = deepest.groupby("f")["value"].mean()
            half = mean[mean.index < 1 - 1e-9]  # the authors' half-diagonal; pi only with the nyquist option
            right.plot(half.index, half.to_numpy(), marker="o", markersize=3, color=colors[model],
                       label=f"{model} ({deepest['layer'].iloc[0]})")
            if len(mean) > len(half) and len(half):
                right.plot([half.index[-1], 1.0], [half.iloc[-1], mean.iloc[-1]], linestyle=":", color=colors[model])
                right.scatter([1.0], [mean.iloc[-1]], s=16, facecolors="white", edgecolors=colors[model], zorder=3)
        right.legend(fontsize=8, title="dotted, open: pi (nyquist option)" if (joined["f"] >= 1 - 1e-9).any() else None,
                     title_fontsize=7)
    else:
        no_data(right, "dlogamp")
    right.set_xlabel("frequency (x pi)")
    right.set_ylabel("ΔlogAmp")
    right.set_title("ΔlogAmp of the last block")
    return fig
