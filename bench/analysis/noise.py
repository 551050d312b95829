"""Robustness to frequency-band noise (Park & Kim): ResNets suffer most from high-frequency
noise, ViTs from low-frequency noise.

Noise of a given frequency f is white Gaussian noise whose 2-D spectrum is kept only on a
square annulus max(|fx|, |fy|) in [f - half_width, f + half_width] (radians, per pixel),
scaled per image to an RMS of `amplitude` in data units (pixels in 0..1 for image
datasets), added to the clean test images before normalisation. The accuracy drop is
clean accuracy minus noisy accuracy on the same images; the same is measured for
unfiltered (white) noise of the same RMS. Noise draws are seeded, so every trial of a
sweep sees the same noise. Pixels are not clipped to 0..1 (clipping would change the
spectrum of the noise).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from bench.analysis.probes import image_model, as_float_inputs, evaluate, held_out, preserved
from bench.analysis.registry import AnalysisContext, AnalysisOptions, register_analysis, register_plot


def band_mask(h: int, w: int, center: float, half_width: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(h, w) boolean FFT mask of the square annulus of frequencies (radians) around `center`."""
    fy = torch.fft.fftfreq(h, device=device).abs() * 2 * math.pi
    fx = torch.fft.fftfreq(w, device=device).abs() * 2 * math.pi
    radius = torch.maximum(fy[:, None], fx[None, :])
    return (radius >= center - half_width) & (radius <= center + half_width)


def scaled(noise: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Noise rescaled to an RMS of `amplitude` per image (zero noise stays zero)."""
    rms = noise.pow(2).mean(dim=tuple(range(1, noise.ndim)), keepdim=True).sqrt()
    return noise * (amplitude / rms.clamp_min(1e-12))


def band_noise(shape: tuple[int, ...], center: float, half_width: float, amplitude: float,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise of shape (B, C, H, W) restricted to a frequency band, RMS `amplitude` per image."""
    white = torch.randn(shape, generator=generator, device=device)
    mask = band_mask(shape[-2], shape[-1], center, half_width, device)
    filtered = torch.fft.ifft2(torch.fft.fft2(white) * mask).real
    return scaled(filtered, amplitude)


def white_noise(shape: tuple[int, ...], amplitude: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    return scaled(torch.randn(shape, generator=generator, device=device), amplitude)


class NoiseOptions(AnalysisOptions):
    #: Band centres in units of pi.
    frequencies: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])
    half_width: float = Field(0.2, gt=0)  # radians
    amplitude: float = Field(0.1, ge=0)  # RMS per image, data units (0..1 pixels)
    n_samples: int = Field(1000, ge=1)  # test images (the first ones)
    batch_size: int = Field(250, ge=1)
    seed: int = 0


def accuracy_under(ctx: AnalysisContext, x: torch.Tensor, y: torch.Tensor, make_noise: Any, batch_size: int,
                   seed: int) -> float:
    """Accuracy on `x` (stored form) with make_noise(shape, generator) added in data units, then normalised."""
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def perturb(chunk: torch.Tensor) -> torch.Tensor:
        base = as_float_inputs(chunk)
        if make_noise is not None:
            base = base + make_noise(tuple(base.shape), gen)
        return ctx.data.normalize(base)

    acc, _ = evaluate(ctx.model, x, y, batch_size, transform=perturb)
    return acc


@register_analysis("noise", NoiseOptions, applies=image_model)
def noise_analysis(ctx: AnalysisContext, options: NoiseOptions) -> list[dict[str, Any]]:
    """Accuracy drop under noise of each frequency band, and under white noise of the same RMS."""
    x, y = held_out(ctx, options.n_samples)
    device = x.device
    amp = options.amplitude
    with preserved(ctx.model):
        clean = accuracy_under(ctx, x, y, None, options.batch_size, options.seed)
        rows = [{"metric": "clean_acc", "layer": None, "index": None, "value": clean}]
        for j, f in enumerate(options.frequencies):
            make = (lambda shape, g, c=f * math.pi: band_noise(shape, c, options.half_width, amp, g, device))
            acc = accuracy_under(ctx, x, y, make, options.batch_size, options.seed)
            rows += [
                {"metric": "acc_drop", "layer": "band", "index": j, "value": clean - acc},
                {"metric": "band_frequency", "layer": "band", "index": j, "value": f},
            ]
        acc = accuracy_under(ctx, x, y, lambda shape, g: white_noise(shape, amp, g, device), options.batch_size,
                             options.seed)
        rows.append({"metric": "acc_drop", "layer": "random", "index": 0, "value": clean - acc})
    return rows


@register_plot("noise")
def plot_noise(frame: Any) -> Any:
    """Accuracy drop against the noise frequency per model; white noise as a dashed line of the model's colour."""
    from bench.analysis.figures import band, last_epoch, legend_outside, mean_std, model_colors, new_figure, no_data

    frame = last_epoch(frame)
    fig, (ax,) = new_figure(1, 1, width=8.6, height=4.2)
    colors = model_colors(sorted(frame["model"].dropna().unique()))
    drops = frame[(frame["metric"] == "acc_drop") & (frame["layer"] == "band")]
    freqs = frame[frame["metric"] == "band_frequency"][["trial_id", "index", "value"]].rename(columns={"value": "f"})
    if drops.empty:
        no_data(ax, "noise")
        return fig
    joined = drops.merge(freqs, on=["trial_id", "index"])
    stats = mean_std(joined, ["model", "f"])
    for model, group in stats.groupby("model"):
        group = group.sort_values("f")
        band(ax, group["f"].to_numpy(), 100 * group["mean"].to_numpy(), 100 * group["std"].to_numpy(),
             colors[model], model)
        white = frame[(frame["metric"] == "acc_drop") & (frame["layer"] == "random") & (frame["model"] == model)]
        if not white.empty:
            ax.axhline(100 * white["value"].mean(), color=colors[model], linestyle="--", linewidth=1.0,
                       label=f"{model}, white noise")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlabel("noise frequency (x pi)")
    ax.set_ylabel("accuracy drop (percentage points)")
    ax.set_title("Robustness to frequency-band noise")
    legend_outside(fig, ax)
    return fig
