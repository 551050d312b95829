"""The papers' published numbers (results/reference/*.csv): complete against PAPERS.md, consistent, joinable."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.perf.store import synthetic_row
from bench.query import comparison_table
from bench.reference import COLUMNS, SOURCES, best_match, load_reference, reference_dir, setting_holds, trial_fields
from bench.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
NUM = r"\d+(?:\.\d+)?(?:e\d+)?"

# PAPERS.md lives beside the repository (the team's shared folder). These are its
# result-bearing passages, verbatim, for a checkout without it; when the file is there,
# the test reads the file itself (and checks these quotes are still in it).
PAPERS_EXCERPT = """
error plateaus near 7% and falls to about 3% around 1e4 steps; cos(v, w*) reaches 0.99.
seeds), vanilla vs positional: CIFAR-10 ≈90.2 vs ≈90.6; CIFAR-100 ≈68.0 vs ≈68.0;
SVHN ≈98.2 vs ≈97.3; ImageNet 71.9 vs 68.9 (exact). Block-shuffled CIFAR-100
(shuffle grid 2,4,8,16,32; 32 = no shuffle): ViT patch 2 stays ≈63.5% at every grid,
ResNet ≈57.3/66.2/73.2/78.4/79.9 (fig).
(5.40M params, 100 classes). PiT-Ti: patch 2 stride 1. Swin-Ti: patch 1, window 4, dims
no max-pool): 23.71M params. Mixer-Ti: depth 8, hidden 256. ConViT here means local 2-D
with m = (0,1,1,2) for the CIFAR-100 model (4 MSAs, 33.0M params) — the ImageNet model
set (batch 16, about 10% of it), compute the top-5 Hessian eigenvalues of
- airbench: 94% on CIFAR-10 in about 3 s on one A100, data kept on the GPU, no DataLoader.
- CCT-7/3x1 reaches 94.8% on CIFAR-10 with 3.76M params; a 7-layer d384 ViT about 91%.
- Forward FLOPs at 32 px: ViT-Ti/4 0.73 GFLOP, ViT-Ti/2 3.34 GFLOP, ResNet-18 with CIFAR
  stem 1.11 GFLOP (ImageNet stem: 0.074 — record which stem ran). Training ≈ 3x forward.
"""
PAPERS_MD = Path(os.environ.get("BENCH_PAPERS_MD", REPO.parent / "shared" / "PAPERS.md"))

# Published results, by the phrases that carry them. Numbers that describe a method
# (hyper-parameters, subset sizes) are not results and are not in the CSVs.
CLAIMS = [
    rf"≈\s*({NUM}(?:/{NUM})*)",            # read off a figure (or approximate)
    rf"({NUM}) vs ({NUM}) \(exact\)",       # exact numbers
    rf"({NUM})M params",                    # parameter counts
    rf"({NUM}) GFLOP", rf"stem: ({NUM})",   # FLOPs reference points
    rf"(?:near|about|reaches) ({NUM})",     # approximate numbers in the text
    rf"({NUM})% on CIFAR-10",               # airbench's accuracy
]
NOT_RESULTS = {"about 10": "share of the training set the Hessian spectrum uses (a method setting)"}


def papers_text() -> tuple[str, str]:
    if PAPERS_MD.is_file():
        return PAPERS_MD.read_text(), str(PAPERS_MD)
    return PAPERS_EXCERPT, "the excerpt in this test"


def claimed_numbers(text: str) -> list[tuple[str, float]]:
    found = []
    for pattern in CLAIMS:
        for m in re.finditer(pattern, text):
            if any(m.group(0).startswith(k) for k in NOT_RESULTS):
                continue
            for group in m.groups():
                found += [(m.group(0), float(v)) for v in group.split("/")]
    return found


def numbers_in(text: str) -> set[float]:
    return {float(v) for v in re.findall(NUM, text)}


def test_every_published_number_of_papers_md_is_in_a_reference_csv():
    text, where = papers_text()
    if PAPERS_MD.is_file():  # the excerpt must stay true to the file it quotes
        flat = " ".join(text.split())
        missing = [line for line in PAPERS_EXCERPT.strip().splitlines() if " ".join(line.split()) not in flat]
        assert not missing, f"PAPERS.md changed; update the excerpt: {missing}"
    claims = claimed_numbers(text)
    ref = load_reference()
    published = ref[ref["source"] != "not published"]
    have = set().union(*(numbers_in(p) for p in published["published"]))
    missing = [(phrase, v) for phrase, v in claims if v not in have]
    assert not missing, f"numbers in {where} without a reference row: {missing}"
    # 6 real-data + 6 block-shuffle figures (63.5 once) + the 3x ratio + 2 exact + 4 params
    # + 4 FLOPs + 7 approximate (7%, 3%, 1e4, 0.99, 3 s, 94.8%, 91%) + airbench's 94%
    assert len(claims) == 31, claims
    # and every row with a number appears in PAPERS.md
    text_numbers = numbers_in(text)
    for row in published.itertuples():
        assert numbers_in(row.published) <= text_numbers | {1.0}, row


def test_csvs_are_tracked_not_ignored_and_well_formed():
    csvs = sorted(reference_dir().glob("*.csv"))
    assert {p.name for p in csvs} >= {"jelassi2022.csv", "park2022.csv", "reference_points.csv"}
    ignored = subprocess.run(["git", "check-ignore", *map(str, csvs)], cwd=REPO, capture_output=True, text=True)
    assert ignored.returncode == 1 and ignored.stdout == "", ignored.stdout  # 1: none of them is ignored
    ref = load_reference()
    for p in csvs:
        assert list(pd.read_csv(p, nrows=0).columns) == COLUMNS, p.name
    assert set(ref["source"]) <= set(SOURCES) and {"table", "figure", "not published"} <= set(ref["source"])
    unpublished = ref["source"] == "not published"
    assert ref.loc[unpublished, "value"].isna().all() and ref.loc[~unpublished, "value"].notna().all()
    keys = ["experiment", "model", "dataset", "setting", "metric"]
    assert not ref.duplicated(keys).any(), ref[ref.duplicated(keys, keep=False)]


SCALE = {"%": 0.01, "M params": 1e6, "GFLOP": 1e9}


@pytest.mark.parametrize("row", load_reference().query("source != 'not published'").to_dict("records"),
                         ids=lambda r: f"{r['experiment']}:{r['model']}:{r['metric']}:{r['setting']}")
def test_value_is_the_published_number_in_store_units(row):
    number = float(re.search(NUM, row["published"].replace("cos(v, w*)", "")).group(0))
    scale = next((s for unit, s in SCALE.items() if unit in row["published"]), 1.0)
    assert row["value"] == pytest.approx(number * scale, rel=1e-9)


def test_settings_match_on_config_paths_rows_and_defaults():
    fields = {"model": "vit_s", "dataset": "cifar100", "train_size": 1.0, "model_args.patch_size": 2,
              "dataset.shuffle_grid": None}
    assert setting_holds("dataset.shuffle_grid=32|none;model_args.patch_size=2", fields)
    assert not setting_holds("dataset.shuffle_grid=8;model_args.patch_size=2", fields)
    assert setting_holds("train_size=1.0", fields) and setting_holds("", fields)
    ref = load_reference()
    assert best_match(ref, fields, "test_acc")["published"] == "≈63.5%"
    fields.update({"model": "resnet18", "dataset.shuffle_grid": 8})
    assert best_match(ref, fields, "test_acc")["value"] == pytest.approx(0.732)
    assert best_match(ref, fields, "test_loss") is None


def _row(index, model, dataset, acc, seed, **extra):
    return synthetic_row("jelassi2022-real-data", index, test_acc=acc, model=model, dataset={"name": dataset},
                         train_size=1.0, seed=seed, model_args={"depth": 7, "heads": 12, "patch_size": 4}, **extra)


def test_table_vs_reference_adds_the_paper_number_and_the_difference(tmp_path):
    store = ResultStore(tmp_path, "jelassi2022-real-data")
    for i, (model, dataset, acc, seed) in enumerate([
        ("vit_s", "cifar10", 0.90, 0), ("vit_s", "cifar10", 0.91, 1), ("vit_s_pos", "cifar10", 0.905, 0),
        ("vit_s", "svhn", 0.97, 0), ("resnet50", "cifar10", 0.93, 0),
    ]):
        store.write_trial(_row(i, model, dataset, acc, seed))
    trials = pd.read_parquet(tmp_path / "jelassi2022-real-data" / "trials")
    md = comparison_table(trials, rows="model", cols="dataset", vs_reference=True, sweep="jelassi2022-real-data")
    line = next(l for l in md.splitlines() if l.startswith("| vit_s "))
    assert "90.5 ± 0.7 (n=2) · paper ≈90.2% (figure), Δ +0.3 pt" in line
    assert "97.0 (n=1) · paper ≈98.2% (figure), Δ -1.2 pt" in line
    assert "Δ = ours - paper" in md
    resnet = next(l for l in md.splitlines() if l.startswith("| resnet50 "))
    assert "paper" not in resnet and "93.0 (n=1)" in resnet  # no reference row: the cell alone
    csv = pd.read_csv(__import__("io").StringIO(comparison_table(
        trials, rows="model", cols="dataset", fmt="csv", vs_reference=True)))
    cell = csv.set_index(["model", "dataset"]).loc[("vit_s_pos", "cifar10")]
    assert cell["ref_value"] == pytest.approx(0.906) and cell["diff"] == pytest.approx(0.905 - 0.906)
    assert cell["ref_source"] == "figure" and cell["n"] == 1


def test_cli_vs_reference_and_a_natural_pandas_join(tmp_path, capsys):
    from bench.cli import main

    store = ResultStore(tmp_path, "jelassi2022-real-data")
    store.write_trial(_row(0, "vit_s_pos", "cifar100", 0.70, 0))
    assert main(["results", "table", "jelassi2022-real-data", "--results", str(tmp_path), "--cols", "dataset",
                 "--vs-reference", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"ref_published": "\\u224868.0%"' in out or '"ref_published": "≈68.0%"' in out
    # the CSV columns join a table of our own numbers on (experiment, model, dataset)
    ours = pd.DataFrame({"experiment": ["jelassi2022-real-data"], "model": ["vit_s_pos"], "dataset": ["cifar100"],
                         "metric": ["test_acc"], "ours": [0.70]})
    joined = ours.merge(load_reference(), on=["experiment", "model", "dataset", "metric"])
    assert joined["value"].tolist() == [0.68]
    assert trial_fields(pd.read_parquet(tmp_path / "jelassi2022-real-data" / "trials").iloc[0])["model_args.depth"] == 7
