"""`bench results plot`: figures from a real Parquet store with real analysis rows of two zoo models."""

from __future__ import annotations

import pytest
import torch

from bench.analysis import resolve_analyses, run_analysis
from bench.cli import main
from bench.plots import plot_sweep
from bench.store import ResultStore
from tests.helpers.analysis import context, one_thread, tiny_data, tiny_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ANALYSES = [
    {"hessian": {"n_batches": 2, "k": 2, "batch_size": 8, "max_iter": 6}},
    {"fourier": {"n_samples": 16}},
    {"variance": {"n_samples": 16}},
    {"noise": {"n_samples": 32, "amplitude": 0.5}},
    {"lesion": {"n_samples": 32}},
    {"landscape": {"points": 5, "n_batches": 1, "batch_size": 16}},
    {"attention_distance": {"n_samples": 8}},
    "pos_similarity",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two models x two training-set sizes x two seeds; the analyses really run (once per model and seed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("results")
    store = ResultStore(root, "demo")
    data = tiny_data(size=8)
    for model_name in ("resnet18", "vit_ti"):
        for seed in (0, 1):
            model = tiny_model(model_name, size=8, seed=seed)
            rows = []
            for spec in resolve_analyses(ANALYSES, model_name, "cifar10"):
                rows += run_analysis(spec, context(model, data))
            for n_train, acc in ((100, 0.4), (1000, 0.7)):
                trial_id = f"{model_name}-{n_train}-{seed}"
                store.write_trial({"sweep": "demo", "trial_id": trial_id, "model": model_name, "dataset": "cifar10",
                                   "train_size": n_train / 1000, "n_train": n_train, "seed": seed, "status": "ok",
                                   "test_acc": acc + 0.05 * seed + (0.1 if model_name == "vit_ti" else 0.0),
                                   "test_loss": 2.0 - acc - 0.1 * seed})
                store.write_analysis(trial_id, rows)
    store.write_trial({"sweep": "demo", "trial_id": "broken", "model": "vit_ti", "dataset": "cifar10",
                       "train_size": 1.0, "n_train": 1000, "seed": 5, "status": "failed"})
    torch.set_num_threads(before)
    return root


def test_plot_sweep_writes_scaling_and_one_figure_per_analysis(store, tmp_path):
    paths = plot_sweep(store, "demo", tmp_path / "figs")
    names = sorted(p.name for p in paths)
    stems = {"accuracy_vs_train_size", "hessian", "fourier", "variance", "noise", "lesion", "landscape",
             "attention_distance", "pos_similarity"}
    assert names == sorted(f"{s}.{f}" for s in stems for f in ("png", "svg"))
    assert paths[0].stem == "accuracy_vs_train_size"
    for path in paths:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<?xml" in head or head.startswith(b"<svg")
        assert path.stat().st_size > 5_000


def test_cli_results_plot_formats_and_bad_input(store, tmp_path, capsys):
    out = tmp_path / "png-only"
    assert main(["results", "plot", "demo", "--results", str(store), "--out", str(out), "--format", "png"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written and all(n.endswith(".png") for n in written) and "noise.png" in written
    assert "wrote" in capsys.readouterr().out
    assert main(["results", "plot", "nothing-here", "--results", str(store)]) == 2
    assert "no ok trials" in capsys.readouterr().err
    assert main(["results", "plot", "demo", "--results", str(store), "--format", "jpg"]) == 2


def test_transfer_and_shuffle_grid_curves_from_stored_rows(tmp_path):
    """Rows as a transfer sweep and a block-shuffle sweep write them: each gets its own figure."""
    from PIL import Image

    from bench.spec import parse_sweep
    from bench.store import trial_row

    def write(name, document, acc):
        store = ResultStore(tmp_path / "results", name)
        for config in parse_sweep(document).trials:
            store.write_trial(trial_row(config, status="ok", result={"test_acc": acc(config), "test_loss": 1.0,
                                                                      "n_train": config["train_size"], "epochs": 1}))

    write("shuffled", {"name": "shuffled", "model": "vit_ti", "dataset": {"name": "cifar10", "root": str(tmp_path)},
                       "grid": {"model": ["vit_ti", "resnet18"], "dataset.shuffle_grid": [4, 8, 32], "seed": [0, 1]}},
          lambda c: 0.3 + 0.01 * c["dataset"]["shuffle_grid"] + 0.01 * c["seed"])
    paths = plot_sweep(tmp_path / "results", "shuffled", tmp_path / "fig1", formats=["png"])
    assert [p.name for p in paths] == ["accuracy_vs_train_size.png", "accuracy_vs_shuffle_grid.png"]

    transfer = {"name": "moved", "model": "vit_ti", "stages": [
        {"name": "pretrain", "grid": {"seed": [0, 1]}},
        {"name": "down", "source": "pretrain",
         "grid": {"transfer": ["scratch", "finetune"], "train_size": [16, 256], "seed": [0, 1]}}]}
    write("moved", transfer, lambda c: 0.5 + (0.2 if c.get("transfer") == "finetune" else 0.0) + c["train_size"] / 1000)
    paths = plot_sweep(tmp_path / "results", "moved", tmp_path / "fig2", formats=["png"])
    assert [p.name for p in paths] == ["accuracy_vs_train_size.png", "transfer.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] >= 800 and len(image.getcolors(1 << 20) or []) > 50  # drawn, not blank
