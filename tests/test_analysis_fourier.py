"""Fourier analysis: ΔlogAmp on feature maps of known spectrum, and the analysis on a real model."""

from __future__ import annotations

import math

import pytest
import torch

from bench.analysis import resolve_analyses, run_analysis
from bench.analysis.fourier import EPS, delta_log_amplitude, diagonal_frequencies
from tests.helpers.analysis import assert_same_state, context, model_state, one_thread, tiny_data, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def checkerboard(size: int, batch: int = 2, channels: int = 3) -> torch.Tensor:
    i = torch.arange(size)
    return ((-1.0) ** (i[:, None] + i[None, :])).expand(batch, channels, size, size).clone()


def test_checkerboard_has_all_its_amplitude_at_pi():
    """(-1)^(i+j) is the pure frequency (pi, pi): |FFT| = h*w there, 0 elsewhere (the zero frequency too)."""
    size = 8
    delta = delta_log_amplitude(checkerboard(size))
    assert delta.shape == (size // 2 + 1,)
    assert diagonal_frequencies(size).tolist() == pytest.approx([i * math.pi / 4 for i in range(5)])
    assert delta[0] == 0.0
    assert delta[1:-1].abs().max() < 1e-6  # empty like the zero frequency
    assert float(delta[-1]) == pytest.approx(math.log(size * size + EPS) - math.log(EPS), rel=1e-6)


def test_constant_map_has_no_amplitude_above_zero_frequency():
    """A constant c: |FFT| = c*h*w at frequency 0 only, so ΔlogAmp = log(eps) - log(c*h*w) at every f > 0."""
    size, c = 8, 2.5
    delta = delta_log_amplitude(torch.full((2, 4, size, size), c))
    expected = math.log(EPS) - math.log(c * size * size + EPS)
    assert delta[0] == 0.0
    assert delta[1:].tolist() == pytest.approx([expected] * (size // 2), rel=1e-6)
    assert float(delta_log_amplitude(checkerboard(size))[-1]) > 0 > float(delta[-1])  # high-pass vs low-pass


def test_known_mid_frequency_and_averaging_over_batch_and_channels():
    """cos(pi/2 (i + j)) + 1 puts amplitude h*w/2 at (pi/2, pi/2) and h*w at 0: ΔlogAmp(pi/2) = -log 2."""
    size = 8
    i = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(math.pi / 2 * (i[:, None] + i[None, :])) + 1.0
    delta = delta_log_amplitude(wave.expand(3, 2, size, size).clone())
    assert float(delta[2]) == pytest.approx(-math.log(2), rel=1e-5)  # index 2 of 0..4 is pi/2
    with pytest.raises(ValueError, match="batch, channels, h, w"):
        delta_log_amplitude(torch.ones(8, 8))


def test_fourier_analysis_on_a_vit_records_every_block_with_its_resolution():
    data = tiny_data()
    model = tiny_model("vit_ti")
    before = model_state(model)
    spec = resolve_analyses([{"fourier": {"n_samples": 16}}], "vit_ti", "cifar10")[0]
    rows = run_analysis(spec, context(model, data))
    high = [r for r in rows if r["metric"] == "dlogamp_high"]
    assert [r["layer"] for r in high] == [name for name, _ in model.blocks()]
    resolution = {r["layer"]: r["value"] for r in rows if r["metric"] == "resolution"}
    assert set(resolution.values()) == {8.0}  # 16 px, patch 2: an 8 x 8 token grid, CLS dropped
    freqs = [r["value"] for r in rows if r["metric"] == "frequency" and r["layer"] == "stem"]
    assert freqs == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    depth = [r["value"] for r in rows if r["metric"] == "depth"]
    assert depth[0] == 0.0 and depth[-1] == 1.0
    assert all(math.isfinite(r["value"]) for r in rows)
    assert_same_state(model, before)
