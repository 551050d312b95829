"""Every sweep file in sweeps/ is valid, plain and as its smoke variant; two run end to end with --smoke.

`bench validate` needs no data (missing datasets are found by `bench run`'s preflight), so
every file validates here although CIFAR, SVHN and ImageNet are not on this machine. The
end-to-end runs use tiny files in torchvision's real on-disk formats, written by the test.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.cli import main

from tests.conftest import REPO, run_cli

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))

#: One file per experiment of the two papers (issue 13), each with a header and a smoke section.
EXPERIMENTS = [
    "park2022_data_regime", "park2022_fourier_variance", "park2022_noise_robustness", "park2022_lesion",
    "park2022_loss_landscape", "park2022_alternet_msa", "park2022_local_attention",
    "jelassi2022_real_data", "jelassi2022_block_shuffle", "jelassi2022_imagenet",
]


def has_smoke(path) -> bool:
    return bool(yaml.safe_load(path.read_text()).get("smoke"))


def test_the_experiment_files_are_all_there_with_header_and_smoke_section():
    assert set(EXPERIMENTS) <= {p.stem for p in SWEEPS}
    for name in EXPERIMENTS:
        text = (REPO / "sweeps" / f"{name}.yaml").read_text()
        header = text.split("\nname:")[0]
        for part in ("Reproduces:", "Cost at full size (an estimate", "GPU-hours", "How:", "Scale down:", "Departures"):
            assert part in header, f"{name}.yaml: header lacks {part!r}"
        raw = yaml.safe_load(text)
        assert isinstance(raw.get("smoke"), dict) and raw["smoke"], f"{name}.yaml: no smoke section"


def validate(capsys, *args: str) -> tuple[int, str, str]:
    """`bench validate` in this process (a subprocess per file would cost CI seconds each)."""
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_validates_plain_and_as_smoke(path, capsys):
    code, out, err = validate(capsys, str(path))
    assert code == 0, err
    name = yaml.safe_load(path.read_text())["name"]
    assert out.startswith(f"{name}: ")
    code, out, err = validate(capsys, str(path), "--smoke")
    if not has_smoke(path):  # older files are scaled down by --set (see their headers)
        assert code == 2 and "no 'smoke:' section" in err
        return
    assert code == 0, err
    assert out.startswith(f"{name}-smoke: ")


def test_sweeps_that_train_by_plain_gradient_descent_do_not_clip():
    """A trial trained by full-batch SGD without momentum is the papers' plain GD: bench's default
    gradient clipping (norm 1.0) would make it another optimiser, so those sweeps set grad_clip: null."""
    from bench.spec import load_sweep

    plain = 0
    for path in SWEEPS:
        for trial in load_sweep(path).trials:
            train = trial["train"]
            if train["batch_size"] == "full" and train["optimizer"] == "sgd" and not train["momentum"]:
                plain += 1
                assert train["grad_clip"] is None, f"{path.name}: {trial['stage']} trial clips plain GD"
    assert plain > 0


def test_validate_as_a_user_runs_it():
    done = run_cli("validate", str(REPO / "sweeps" / "park2022_data_regime.yaml"), "--smoke")
    assert done.returncode == 0 and done.stdout.startswith("park2022-data-regime-smoke: 4 trials"), done.stderr


@pytest.mark.slow
def test_the_real_data_sweep_runs_as_smoke_on_tiny_cifar_and_svhn_files(ray_local, tmp_path):
    """sweeps/jelassi2022_real_data.yaml --smoke: ViT and positional ViT on CIFAR-10, CIFAR-100, SVHN."""
    from tests.test_data_sets import write_cifar10, write_cifar100, write_svhn

    data = tmp_path / "data"
    write_cifar10(data, per_batch=8, test=10)
    write_cifar100(data, n_train=40, n_test=10)
    write_svhn(data, n_train=40, n_test=10)
    results = tmp_path / "results"
    sweep = str(REPO / "sweeps" / "jelassi2022_real_data.yaml")
    assert main(["run", sweep, "--smoke", "--results", str(results), "--set", f"dataset.root={data}"]) == 0
    trials = pd.read_parquet(results / "jelassi2022-real-data-smoke" / "trials")
    assert len(trials) == 6 and set(trials.status) == {"ok"}
    assert set(zip(trials.model, trials.dataset)) == {(m, d) for m in ("vit_s", "vit_s_pos") for d in ("cifar10", "cifar100", "svhn")}
    configs = [json.loads(c) for c in trials.config]
    assert all(c["train"]["epochs"] == 1 and c["train"]["optimizer"] == "adamw" for c in configs)  # smoke over the recipe
    assert {tuple(c["train"]["augment"]) for c in configs if c["dataset"]["name"] == "svhn"} == {("crop",)}
    analysis = pd.read_parquet(results / "jelassi2022-real-data-smoke" / "analysis")
    assert set(analysis.analysis) == {"attention_distance", "pos_similarity"}
    maps = analysis[(analysis.analysis == "pos_similarity") & (analysis.metric == "cos")]
    assert set(maps.trial_id) == set(trials.trial_id) and len(maps) == 6 * 16 * 16  # 4 x 4 patches of 8 px
    assert not (results / "jelassi2022-real-data").exists()  # a smoke run never writes into the full run's results


@pytest.mark.slow
def test_the_data_regime_sweep_runs_as_smoke_with_hessian_spectra(ray_local, tmp_path):
    """sweeps/park2022_data_regime.yaml --smoke: two models x two nested fractions of a tiny CIFAR-100, Hessian."""
    from tests.test_data_sets import write_cifar100

    data = tmp_path / "data"
    write_cifar100(data, n_train=100, n_test=10)
    results = tmp_path / "results"
    sweep = str(REPO / "sweeps" / "park2022_data_regime.yaml")
    assert main(["run", sweep, "--smoke", "--results", str(results), "--set", f"dataset.root={data}"]) == 0
    trials = pd.read_parquet(results / "park2022-data-regime-smoke" / "trials")
    assert len(trials) == 4 and set(trials.status) == {"ok"}
    assert sorted(zip(trials.model, trials.n_train)) == [("resnet50", 50), ("resnet50", 100), ("vit_ti", 50), ("vit_ti", 100)]
    config = json.loads(trials.config.iloc[0])
    assert config["train"]["lr"] == 1.25e-4 and config["train"]["grad_clip"] == 5.0  # the park2022 recipe
    analysis = pd.read_parquet(results / "park2022-data-regime-smoke" / "analysis")
    hessian = analysis[analysis.analysis == "hessian"]
    assert set(hessian.trial_id) == set(trials.trial_id)
    assert {"nep", "ape"} <= set(hessian.metric)
