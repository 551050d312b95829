"""One row per model of what a sweep's Park & Kim analyses measured, set up to be read against
the paper's qualitative claims (docs/ANALYSIS.md).

The figures show curves; the claims are about signs and directions: whether negative Hessian
eigenvalues appear, whether an MSA block lowers the high-frequency amplitude and the variance
of the feature map it receives and a Conv block raises them, which noise band hurts most.
`block_changes` measures the direction block by block: the value after a block minus the
value before it (its input, i.e. the previous block's output), only where both maps have the
same resolution, since a strided block changes what "highest frequency" and "spatial
variance" mean (a 4 x 4 map has its pi where a 32 x 32 map has pi/8).

    python -m bench.analysis.summary SWEEP [--results DIR]   # the table as Markdown
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.hessian import spectrum_summary
from bench.models.base import BLOCK_KINDS

#: Noise bands (centres in units of pi) summarised together.
NOISE_BANDS = {"low (0.1-0.3)": (0.1, 0.3), "mid (0.4-0.6)": (0.4, 0.6), "high (0.7-0.9)": (0.7, 0.9)}


def _last_epoch(frame: pd.DataFrame) -> pd.DataFrame:
    from bench.analysis.figures import last_epoch

    return last_epoch(frame)


def joined(trials: pd.DataFrame, analysis: pd.DataFrame, every_epoch: tuple[str, ...] = ()) -> pd.DataFrame:
    """Analysis rows of the latest ok row of each trial, with the trial's model, at each trial's last
    analysed epoch (every epoch for the analyses named in `every_epoch`)."""
    from bench.plots import latest_ok_trials

    ok = latest_ok_trials(trials)
    if analysis.empty or ok.empty:
        return pd.DataFrame(columns=["trial_id", "analysis", "metric", "layer", "index", "value", "model"])
    out = analysis.merge(ok[["trial_id", "model"]], on="trial_id", how="inner")
    parts = [group if name in every_epoch else _last_epoch(group) for name, group in out.groupby("analysis")]
    return pd.concat(parts, ignore_index=True) if parts else out


def block_changes(frame: pd.DataFrame, analysis: str, value_metric: str, log: bool = False) -> pd.DataFrame:
    """Per trial and block: `change` = value after the block minus value before it (log10 ratio if `log`).

    `frame` holds the rows of `analysis` (per-block `value_metric`, `kind`) and of `fourier`
    (per-block `resolution`, the map size; without it every pair of blocks is compared).
    Blocks whose input map has another resolution than their output are left out, and so is the
    first block (the stem: its input is the image).
    """
    rows = frame[frame["analysis"] == analysis]
    value = rows[rows["metric"] == value_metric][["trial_id", "model", "index", "layer", "value"]]
    kind = rows[rows["metric"] == "kind"][["trial_id", "index", "value"]].rename(columns={"value": "kind"})
    res = frame[(frame["analysis"] == "fourier") & (frame["metric"] == "resolution")]
    res = res[["trial_id", "index", "value"]].rename(columns={"value": "resolution"})
    table = value.merge(kind, on=["trial_id", "index"], how="left")
    table = table.merge(res, on=["trial_id", "index"], how="left") if not res.empty else table.assign(resolution=np.nan)
    out = []
    for _, group in table.sort_values(["trial_id", "index"]).groupby("trial_id"):
        values, res_values = group["value"].to_numpy(float), group["resolution"].to_numpy(float)
        for j in range(1, len(group)):
            same = np.isnan(res_values[j]) or np.isnan(res_values[j - 1]) or res_values[j] == res_values[j - 1]
            if not same:
                continue
            if log:
                if values[j] <= 0 or values[j - 1] <= 0:
                    continue
                change = math.log10(values[j] / values[j - 1])
            else:
                change = values[j] - values[j - 1]
            code = group["kind"].iloc[j]
            out.append({"trial_id": group["trial_id"].iloc[j], "model": group["model"].iloc[j],
                        "layer": group["layer"].iloc[j],
                        "kind": BLOCK_KINDS[int(code)] if pd.notna(code) else "conv", "change": change})
    return pd.DataFrame(out, columns=["trial_id", "model", "layer", "kind", "change"])


def _kind_stats(changes: pd.DataFrame, model: str, prefix: str) -> dict[str, Any]:
    """Mean change and the share of blocks that lower the value, per block kind, for one model."""
    out: dict[str, Any] = {}
    for kind in ("conv", "msa", "mlp"):
        mine = changes[(changes["model"] == model) & (changes["kind"] == kind)]["change"]
        if len(mine):
            out[f"{prefix}_{kind}_mean_change"] = float(mine.mean())
            out[f"{prefix}_{kind}_share_lowered"] = float((mine < 0).mean())
            out[f"{prefix}_{kind}_blocks"] = int(len(mine))
    return out


def model_summary(trials: pd.DataFrame, analysis: pd.DataFrame) -> pd.DataFrame:
    """One row per model: accuracy, Hessian spectrum, Fourier/variance directions and noise drops (means over trials)."""
    from bench.plots import latest_ok_trials

    ok = latest_ok_trials(trials)
    frame = joined(trials, analysis, every_epoch=("hessian",))
    # dlogamp_high: the authors' half-diagonal's last point; dlogamp_nyquist (option): pi, bench's reading before issue 26.
    hf_changes = {m: block_changes(frame, "fourier", m) for m in ("dlogamp_high", "dlogamp_nyquist")}
    var_changes = block_changes(frame, "variance", "variance", log=True)
    rows = []
    for model, mine in frame.groupby("model"):
        row: dict[str, Any] = {"model": model, "trials": int(mine["trial_id"].nunique())}
        accs = ok[ok["model"] == model]["test_acc"]
        row["test_acc"] = float(accs.mean()) if len(accs) else math.nan
        if "ece" in ok.columns and ok[ok["model"] == model]["ece"].notna().any():
            row["ece"] = float(ok[ok["model"] == model]["ece"].mean())

        hess = mine[mine["analysis"] == "hessian"]
        epochs = sorted(hess["epoch"].dropna().unique()) if "epoch" in hess.columns else []
        for epoch in epochs:  # the last analysed epoch unsuffixed, earlier ones (e.g. end of warmup) as name@epoch
            suffix = "" if epoch == epochs[-1] else f"@{int(epoch)}"
            row.update({f"{k}{suffix}": v for k, v in hessian_stats(hess[hess["epoch"] == epoch]).items()})
        if not epochs:
            row.update(hessian_stats(hess))

        fourier = mine[mine["analysis"] == "fourier"]
        for metric, prefix in (("dlogamp_high", "dlogamp"), ("dlogamp_nyquist", "dlogamp_nyquist")):
            high = fourier[fourier["metric"] == metric]
            if len(high):
                last = high[high["index"] == high.groupby("trial_id")["index"].transform("max")]
                first = high[high["index"] == high.groupby("trial_id")["index"].transform("min")]
                row[f"{metric}_first"] = float(first["value"].mean())
                row[f"{metric}_last"] = float(last["value"].mean())
            row.update(_kind_stats(hf_changes[metric], model, prefix))

        variance = mine[(mine["analysis"] == "variance") & (mine["metric"] == "variance")]
        if len(variance):
            last = variance[variance["index"] == variance.groupby("trial_id")["index"].transform("max")]
            row["variance_last"] = float(last["value"].mean())
        row.update(_kind_stats(var_changes, model, "logvar"))

        noise = mine[mine["analysis"] == "noise"]
        if len(noise):
            clean = noise[noise["metric"] == "clean_acc"]["value"]
            row["noise_clean_acc"] = float(clean.mean())
            drops = noise[(noise["metric"] == "acc_drop") & (noise["layer"] == "band")][["trial_id", "index", "value"]]
            freqs = noise[noise["metric"] == "band_frequency"][["trial_id", "index", "value"]].rename(columns={"value": "f"})
            bands = drops.merge(freqs, on=["trial_id", "index"])
            for name, (lo, hi) in NOISE_BANDS.items():
                chosen = bands[(bands["f"] >= lo - 1e-9) & (bands["f"] <= hi + 1e-9)]["value"]
                row[f"noise_drop_{name.split()[0]}"] = float(chosen.mean()) if len(chosen) else math.nan
            if len(bands):
                worst = bands.groupby("f")["value"].mean()
                row["noise_worst_frequency"] = float(worst.idxmax())
            white = noise[(noise["metric"] == "acc_drop") & (noise["layer"] == "random")]["value"]
            row["noise_drop_white"] = float(white.mean()) if len(white) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    groups = ("model", "trials", "test_acc", "ece", "eigenvalues", "nep", "ape", "negative", "top_", "smallest", "largest",
              "converged", "hvps", "s_per", "dlogamp_high", "dlogamp_conv", "dlogamp_msa", "dlogamp_mlp",
              "dlogamp_nyquist", "variance",
              "logvar_conv", "logvar_msa", "logvar_mlp", "noise")
    def key(column: str) -> tuple[int, int, int]:
        base, _, epoch = column.partition("@")
        group = next((g for g, prefix in enumerate(groups) if base.startswith(prefix)), len(groups))
        hessian_block = groups.index("eigenvalues") <= group <= groups.index("s_per")
        return (groups.index("eigenvalues") if hessian_block else group, int(epoch) if epoch else 10**9,
                list(out.columns).index(column))

    return out[sorted(out.columns, key=key)]


def hessian_stats(hess: pd.DataFrame) -> dict[str, Any]:
    """Spectrum summaries of one epoch's hessian rows (all trials of a model together)."""
    eig = hess[hess["metric"] == "eigenvalue"]
    if eig.empty:
        return {}
    values = eig["value"].tolist()
    summary = spectrum_summary(values)
    row: dict[str, Any] = {
        "eigenvalues": len(values), "nep": summary["nep"], "ape": summary["ape"],
        "negative_count": int(sum(v < 0 for v in values)),
        "smallest": float(min(values)), "largest": float(max(values)),
        # Per batch, the first of its top-k is the largest magnitude: how often that one is negative.
        "top_negative_share": float((batch_tops(hess) < 0).mean()),
        "negative_magnitude_share": float(sum(-v for v in values if v < 0) / sum(abs(v) for v in values)),
    }
    for name in ("converged_share", "hvps_per_eigenvalue", "s_per_hvp"):
        chosen = hess[hess["metric"] == name]["value"]
        row[name] = float(chosen.mean()) if len(chosen) else math.nan
    return row


def batch_tops(hess: pd.DataFrame) -> pd.Series:
    """The largest-magnitude eigenvalue of every batch (the first of its top-k), over all trials.

    Eigenvalue rows are indexed batch * k + j, largest magnitude first; k per trial is the
    number of eigenvalue rows over its `n_batches`.
    """
    tops = []
    for _, rows in hess.groupby("trial_id"):
        eig = rows[rows["metric"] == "eigenvalue"]
        batches = rows[rows["metric"] == "n_batches"]["value"]
        k = max(1, round(len(eig) / float(batches.iloc[0]))) if len(batches) and batches.iloc[0] > 0 else 1
        tops.append(eig[eig["index"] % k == 0]["value"])
    return pd.concat(tops) if tops else pd.Series(dtype=float)


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary transposed (a column per model), numbers at 3 significant digits."""
    if summary.empty:
        return "(no analysis rows)"
    table = summary.set_index("model").T

    def fmt(value: Any) -> str:
        if isinstance(value, (int, np.integer)):
            return str(value)
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.3g}"
        return str(value)

    header = "| metric | " + " | ".join(table.columns) + " |"
    lines = [header, "|---|" + "---:|" * len(table.columns)]
    for name, values in table.iterrows():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.query import load

    parser = argparse.ArgumentParser(prog="python -m bench.analysis.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    tables = load(args.sweep, args.results)
    print(to_markdown(model_summary(tables["trials"], tables["analysis"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
