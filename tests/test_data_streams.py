"""Every data stream is independent of the model init (`torch.manual_seed(seed)`) and of each other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench.data import load_splits, resolve_dataset
from bench.data.patchgrid import sample_generator
from bench.data.streams import stream_generator, stream_seed
from bench.models import create_model
from bench.spec import parse_sweep
from bench.train import run_trial

SEEDS = range(21)
FEATURE_SEEDS = range(6)
DRAWS = 32


def _first_draws(generator: torch.Generator | None = None) -> tuple[float, ...]:
    return tuple(torch.rand(DRAWS, generator=generator).tolist())


def _data_streams() -> dict[tuple, torch.Generator]:
    streams: dict[tuple, torch.Generator] = {}
    for seed in SEEDS:
        for purpose in ("feature", "partition", "teacher", "loader"):
            streams[(purpose, seed)] = stream_generator(purpose, seed)
        for epoch in range(3):
            streams[("analysis", seed, epoch)] = stream_generator("analysis", seed, epoch)
        for dataset, split, key in itertools.product(("spatial", "spatial_control"), (0, 1), FEATURE_SEEDS):
            streams[("sample", dataset, seed, split, key)] = sample_generator(dataset, seed, split, key)
    return streams


def test_data_streams_differ_from_the_init_stream_and_from_each_other() -> None:
    init = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        init[_first_draws()] = seed
    draws = {name: _first_draws(g) for name, g in _data_streams().items()}
    shared = {name: init[d] for name, d in draws.items() if d in init}
    assert not shared, f"data streams equal to the init stream of a trial seed: {shared}"
    # Not only unequal sequences: no stream repeats any of the init's first draws at all.
    init_values = {v for d in init for v in d}
    assert not [name for name, d in draws.items() if init_values & set(d)]
    assert len(set(draws.values())) == len(draws), "two purposes share a stream"
    # The subset order's NumPy stream is not NumPy's stream of the bare seed either.
    for seed in SEEDS:
        assert stream_seed("subset", seed) not in SEEDS
        assert not np.array_equal(np.random.default_rng(stream_seed("subset", seed)).random(DRAWS),
                                  np.random.default_rng(seed).random(DRAWS))


def test_stream_seeds_are_fixed_functions_of_their_keys() -> None:
    assert stream_seed("loader", 0) == stream_seed("loader", 0) != stream_seed("loader", 1)
    assert stream_seed("loader", 0) != stream_seed("analysis", 0)
    assert 0 <= stream_seed("sample", "spatial", 0, 0, 0) < 2**63
    with pytest.raises(ValueError, match="purpose"):
        stream_seed("init", 0)


@pytest.mark.parametrize("dataset", [
    {"name": "spatial_control", "num_patches": 36, "patch_dim": 36, "set_size": 4, "grid": 6, "partition": "random",
     "num_train": 64, "num_test": 64},
    {"name": "spatial", "num_patches": 10, "patch_dim": 10, "set_size": 2, "partition": "random",
     "num_train": 64, "num_test": 64},
])
def test_pa_theory_init_shares_no_coordinate_with_the_data(dataset: dict) -> None:
    """The issue's symptom: with seed 0 everywhere, pa_theory's initial v (N(0, 1/d^2)) was drawn from
    the same stream as the first training patch (20 of 36 coordinates equal on spatial_control)."""
    for seed in range(3):
        splits = load_splits(resolve_dataset({**dataset, "sample_seed": seed}), "patches")
        torch.manual_seed(seed)
        d = dataset["patch_dim"]
        v = create_model("pa_theory", 2, img_size=dataset["num_patches"], in_chans=d).v.detach() * d
        # Coordinate k of v against coordinate k of every patch of the first samples (as drawn:
        # the old shared stream gave equal values at equal positions).
        patches = splits.train_x[:8].reshape(-1, d)
        assert not torch.isclose(v[None, :], patches, atol=1e-6, rtol=0).any()


def test_a_trial_shuffles_and_analyses_on_its_own_streams(monkeypatch) -> None:
    """run_trial hands the loader (and the analyses' batches) the salted streams, not the init's."""
    import bench.train

    config = parse_sweep({
        "name": "streams", "model": "pa_theory",
        "dataset": {"name": "spatial", "num_patches": 10, "patch_dim": 10, "set_size": 2, "partition": "random",
                    "num_train": 64, "num_test": 64},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "warmup_epochs": 0},
        "grid": {"seed": [3]},
    }).trials[0]
    seen: list[torch.Tensor] = []
    make_loader = bench.train.make_loader

    def spy(data, train, generator, batch_size=None):
        seen.append(generator.get_state().clone())
        return make_loader(data, train, generator, batch_size)

    monkeypatch.setattr(bench.train, "make_loader", spy)
    first = run_trial(config, device="cpu")
    assert torch.equal(seen[0], stream_generator("loader", 3).get_state())
    torch.manual_seed(3)
    assert not torch.equal(seen[0], torch.get_rng_state())
    assert run_trial(config, device="cpu")["test_loss"] == first["test_loss"]  # deterministic on these streams
