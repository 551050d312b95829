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


def authors_delta_log_amplitude(x: torch.Tensor) -> torch.Tensor:
    """Park & Kim's notebook (xxxnell/how-do-vits-work, fourier_analysis.ipynb), written out again:
    fourier(): log(|fft2| + 1e-6); shift(): roll by (h/2, w/2); mean over batch and channels;
    `diag()[int(h/2):]`; minus the first value."""
    f = torch.fft.fft2(x)
    f = (f.abs() + 1e-6).log()
    b, c, h, w = f.shape
    f = torch.roll(f, shifts=(int(h / 2), int(w / 2)), dims=(2, 3)).mean(dim=(0, 1))
    f = f.diag()[int(h / 2):]
    return f - f[0]


def known_signals(size: int) -> dict[str, torch.Tensor]:
    """Maps with a known spectrum, and smoothed noise (the case where the Nyquist point differed most)."""
    gen = torch.Generator().manual_seed(size)
    i = torch.arange(size, dtype=torch.float64)
    k = max(1, size // 4)  # a diagonal wave at 2*pi*k/size (pi/2 for size >= 4)
    wave = torch.cos(2 * math.pi * k / size * (i[:, None] + i[None, :])) + 1.0
    noise = torch.randn(4, 3, size, size, generator=gen, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(noise, (1, 1, 1, 1), mode="circular"), 3, 1)
    return {"wave": wave.expand(2, 3, size, size).clone(), "smoothed_noise": smooth,
            "constant": torch.full((2, 3, size, size), 2.5, dtype=torch.float64),
            "checkerboard": checkerboard(size).double()}


@pytest.mark.parametrize("size", [4, 8, 16, 32])
def test_delta_log_amplitude_is_the_authors_roll_and_half_diagonal(size):
    """Every known signal: the same values as the authors' code, at frequencies 0 .. (1 - 2/h)·pi."""
    for name, x in known_signals(size).items():
        ours = delta_log_amplitude(x)
        theirs = authors_delta_log_amplitude(x)
        assert ours.shape == (size // 2,), name
        assert ours.tolist() == pytest.approx(theirs.tolist(), abs=1e-5), name
    assert diagonal_frequencies(size).tolist() == pytest.approx([2 * math.pi * k / size for k in range(size // 2)])
    assert diagonal_frequencies(size)[-1] == pytest.approx((1 - 2 / size) * math.pi)
    wave = delta_log_amplitude(known_signals(size)["wave"])
    assert float(wave[size // 4]) == pytest.approx(-math.log(2), rel=1e-5)  # amplitude h*w/2 at k, h*w at 0


@pytest.mark.parametrize("size", [4, 8, 16, 32])
def test_nyquist_option_appends_pi(size):
    """`nyquist=True`: the authors' points plus pi, where a checkerboard has all its amplitude
    (the authors' half-diagonal does not see it: 0 at every point)."""
    board = checkerboard(size)
    assert delta_log_amplitude(board).abs().max() < 1e-6
    with_pi = delta_log_amplitude(board, nyquist=True)
    assert with_pi.shape == (size // 2 + 1,)
    assert float(with_pi[-1]) == pytest.approx(math.log(size * size + EPS) - math.log(EPS), rel=1e-6)
    assert diagonal_frequencies(size, nyquist=True)[-1] == pytest.approx(math.pi)
    noise = known_signals(size)["smoothed_noise"]
    assert delta_log_amplitude(noise, nyquist=True)[:-1].tolist() == pytest.approx(delta_log_amplitude(noise).tolist())


def test_odd_sizes_follow_the_authors_slice_and_have_no_nyquist_point():
    """int(h/2) on odd h: (h + 1)/2 points up to (1 - 1/h)·pi; the option adds nothing."""
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert delta_log_amplitude(x).tolist() == pytest.approx(authors_delta_log_amplitude(x).tolist(), abs=1e-6)
    assert delta_log_amplitude(x, nyquist=True).shape == (4,)
    with pytest.raises(ValueError, match="square"):
        delta_log_amplitude(torch.ones(1, 1, 4, 8))


def test_constant_map_has_no_amplitude_above_zero_frequency():
    """A constant c: |FFT| = c*h*w at frequency 0 only, so ΔlogAmp = log(eps) - log(c*h*w) at every f > 0."""
    size, c = 8, 2.5
    delta = delta_log_amplitude(torch.full((2, 4, size, size), c))
    expected = math.log(EPS) - math.log(c * size * size + EPS)
    assert delta[0] == 0.0
    assert delta[1:].tolist() == pytest.approx([expected] * (size // 2 - 1), rel=1e-6)
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
    assert freqs == pytest.approx([0, 0.25, 0.5, 0.75])  # the authors' half-diagonal: pi left out
    assert not [r for r in rows if r["metric"] == "dlogamp_nyquist"]
    depth = [r["value"] for r in rows if r["metric"] == "depth"]
    assert depth[0] == 0.0 and depth[-1] == 1.0
    assert all(math.isfinite(r["value"]) for r in rows)
    assert_same_state(model, before)


def test_fourier_analysis_nyquist_option_adds_pi_and_keeps_the_authors_high_value():
    data = tiny_data()
    model = tiny_model("vit_ti")
    ctx = context(model, data)
    plain = run_analysis(resolve_analyses([{"fourier": {"n_samples": 16}}], "vit_ti", "cifar10")[0], ctx)
    both = run_analysis(resolve_analyses([{"fourier": {"n_samples": 16, "nyquist": True}}], "vit_ti", "cifar10")[0], ctx)
    value = lambda rows, metric: [r["value"] for r in rows if r["metric"] == metric]  # noqa: E731
    assert value(both, "dlogamp_high") == pytest.approx(value(plain, "dlogamp_high"))
    assert len(value(both, "dlogamp_nyquist")) == len(value(plain, "dlogamp_high"))
    stem = [r["value"] for r in both if r["metric"] == "frequency" and r["layer"] == "stem"]
    assert stem == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
