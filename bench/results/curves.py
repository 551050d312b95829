"""Learning curves and crossovers: error(n) = a·n^(−b) + c fitted per architecture over the
training-set sizes, bootstrap intervals over seeds for b and c, and for each pair of
architectures the n where their fitted curves cross — the data-regime question (at what
size does one architecture overtake another?).

Fit. Least squares on the per-size means of the error (each size counts once, however many
seeds it has; the seeds enter through the bootstrap). The error is 1 − metric for an accuracy
(c in [0, 1]) or the metric itself for a loss (c >= 0); a >= 0 and b in [0.001, 3]. For a fixed
b the model is linear in (a, c), so b is profiled: exact bound-constrained least squares for
(a, c) on a grid of 61 values of b (step 0.05), then golden-section refinement next to the best one. That
is the global optimum within the bounds (curve_fit from one start can stop in a local one; a
test checks curve_fit from several starts never does better) and it fits every bootstrap
replicate at once, so 2,000 replicates cost milliseconds. A fit with a = 0 is flat: b is
undefined there (NaN), and such replicates are left out of b's interval and counted.

Bootstrap. Within each (model, size) the seeds are resampled with replacement, each model
independently, and the means refitted. With 3-10 seeds a plain resample understates the
spread by a factor sqrt((m-1)/m) at m seeds; `expand=True` (default) first widens each size's
seed values about their mean by sqrt(m/(m-1)) so the resampled mean has the usual variance
s²/m (the curve counterpart of the expanded intervals in bench.results.stats). Intervals are
percentile intervals of the replicates.

Crossover. The n where the two fitted curves are equal, searched on the window from the
measured range (the sizes both models have) divided by `extrapolate` to multiplied by it:
`observed` inside the measured range, `extrapolated` outside it but in the window, `none` when
the curves do not cross in the window or stay within `tol` of each other over all of it. Its
interval comes from the same replicates; a replicate whose curves do not cross in the window
counts as a crossing beyond the window on the side its ordering implies (0 below it, inf above
it). A bound of 0 or inf says the data cannot place the crossing inside the window: then
`where` is `none` even though the fitted curves cross (the numbers stay, `note` says why).
Measured: planted parallel curves (same a and b, c 0.03 apart, 5 seeds, noise 0.01) have
fitted curves that cross within 10x of the range in about 40% of replicates; this rule is
what keeps them `none` (tests/test_curves.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.errors import BenchInputError

ErrorMode = Literal["auto", "one_minus", "as_is"]
B_BOUNDS = (1e-3, 3.0)
B_GRID = np.linspace(B_BOUNDS[0], B_BOUNDS[1], 61)
GOLDEN_STEPS = 20
BISECTION_STEPS = 32
WINDOW_POINTS = 241
MIN_SIZES = 3
MODEL_COLUMNS = ["model", "a", "b", "c", "b_lo", "b_hi", "c_lo", "c_hi", "n_min", "n_max", "n_sizes", "seeds_min",
                 "sse", "n_boot", "n_boot_failed", "n_boot_flat"]
PAIR_COLUMNS = ["model_a", "model_b", "crossover_n", "crossover_lo", "crossover_hi", "where", "better_below",
                "better_above", "n_boot_cross", "n_boot", "note"]


@dataclass(frozen=True)
class LearningCurves:
    """The fits of one sweep: `models` (one row per model), `pairs` (one row per pair of
    models), `points` (the error of every trial used: model, n, error) and how they were made.
    "model" is whatever column `by` named; `models` and `pairs` are sorted by it."""

    models: pd.DataFrame
    pairs: pd.DataFrame
    points: pd.DataFrame
    metric: str
    error_label: str
    ci: float
    n_boot: int
    extrapolate: float
    tol: float
    expand: bool

    @property
    def label(self) -> str:
        """The lines a table or figure prints under itself to say how its numbers were made."""
        widened = ", seeds widened by sqrt(m/(m-1))" if self.expand else ""
        return (f"fit: {self.error_label} = a·n^(−b) + c, least squares on the per-size means; "
                f"{self.ci:g}% CIs: percentile bootstrap over seeds within each size "
                f"({self.n_boot:,} resamples{widened}); "
                f"crossover observed inside the measured n, extrapolated up to {self.extrapolate:g}x beyond it")


def power_law(n: Any, a: Any, b: Any, c: Any) -> np.ndarray:
    """a·n^(−b) + c, broadcast; a flat fit (a == 0, b undefined) is c."""
    n, a, b, c = (np.asarray(v, dtype=float) for v in (n, a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(a == 0, c + 0.0 * n, a * n ** np.where(a == 0, 0.0, -b) + c)


def _solve(sx: np.ndarray, sxx: np.ndarray, sy: np.ndarray, syy: np.ndarray, sxy: np.ndarray, k: int,
           c_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of y ≈ a·x + c over k points with a >= 0, 0 <= c <= c_max, from the sums
    (broadcast). Convex: the unconstrained optimum if feasible, else the best of each edge's optimum."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # edge a = 0: c is the clipped mean
        c = np.clip(sy / k, 0.0, c_max)
        a = np.zeros_like(c)
        sse = syy - 2 * c * sy + k * c * c
        # edge c = 0 (and c = c_max): a is the clipped slope through that intercept
        for intercept in ((0.0, c_max) if math.isfinite(c_max) else (0.0,)):
            slope = np.maximum(0.0, (sxy - intercept * sx) / sxx)
            value = (syy - 2 * slope * sxy - 2 * intercept * sy + slope * slope * sxx + 2 * slope * intercept * sx
                     + k * intercept * intercept)
            better = value < sse
            a, c, sse = np.where(better, slope, a), np.where(better, intercept, c), np.where(better, value, sse)
        # the interior: the unconstrained optimum where it is feasible
        sxx_c = sxx - sx * sx / k
        sxy_c = sxy - sx * sy / k
        slope = sxy_c / sxx_c
        intercept = (sy - slope * sx) / k
        value = syy - sy * sy / k - slope * sxy_c
        better = (sxx_c > 1e-14 * sxx) & (slope >= 0) & (intercept >= 0) & (intercept <= c_max) & (value < sse)
        a, c, sse = np.where(better, slope, a), np.where(better, intercept, c), np.where(better, value, sse)
    return a, c, np.maximum(np.where(np.isfinite(sse), sse, np.inf), 0.0)


def _sums_at(b: np.ndarray, log_s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The sums of x = s^(−b) that `_solve` needs, one b per row of y (R,) -> (R,)."""
    x = np.exp(-b[:, None] * log_s[None, :])
    return x.sum(1), (x * x).sum(1), (x * y).sum(1)


def fit_power_law(n: Any, y: Any, *, c_max: float = 1.0) -> dict[str, np.ndarray]:
    """Least-squares fit of y = a·n^(−b) + c within the bounds, for many curves at once.

    `n` has shape (K,) (K >= 3 sizes), `y` shape (..., K); returns a, b, c and sse of shape
    y.shape[:-1]. Flat fits (a == 0) have b = NaN. See the module docstring for the method.
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    shape = y.shape[:-1]
    y = y.reshape(-1, n.size)
    k = n.size
    n_ref = n.min()
    log_s = np.log(n / n_ref)  # x = (n / n_min)^(−b) lies in (0, 1]: well conditioned
    sy, syy = y.sum(1), (y * y).sum(1)
    grid_x = np.exp(-B_GRID[:, None] * log_s[None, :])
    _, _, grid_sse = _solve(grid_x.sum(1)[None], (grid_x * grid_x).sum(1)[None], sy[:, None], syy[:, None],
                            y @ grid_x.T, k, c_max)
    best = np.argmin(grid_sse, axis=1)
    lo = B_GRID[np.maximum(best - 1, 0)]
    hi = B_GRID[np.minimum(best + 1, B_GRID.size - 1)]

    def profile(b: np.ndarray) -> np.ndarray:
        sx, sxx, sxy = _sums_at(b, log_s, y)
        return _solve(sx, sxx, sy, syy, sxy, k, c_max)[2]

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    left, right = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f_left, f_right = profile(left), profile(right)
    for _ in range(GOLDEN_STEPS):
        # keep the better half; its inner point is reused, one new point is evaluated
        go_left = f_left < f_right
        hi, lo = np.where(go_left, right, hi), np.where(go_left, lo, left)
        left, right = (np.where(go_left, hi - ratio * (hi - lo), right),
                       np.where(go_left, left, lo + ratio * (hi - lo)))
        f_new = profile(np.where(go_left, left, right))
        f_left, f_right = np.where(go_left, f_new, f_right), np.where(go_left, f_left, f_new)
    b = (lo + hi) / 2.0
    sx, sxx, sxy = _sums_at(b, log_s, y)
    a_scaled, c, sse = _solve(sx, sxx, sy, syy, sxy, k, c_max)
    flat = a_scaled <= 0
    a = np.where(flat, 0.0, a_scaled * n_ref ** b)
    b = np.where(flat, np.nan, b)
    return {key: value.reshape(shape) for key, value in (("a", a), ("b", b), ("c", c), ("sse", sse))}


def crossings(first: dict[str, np.ndarray], second: dict[str, np.ndarray], measured: tuple[float, float],
              extrapolate: float, tol: float) -> dict[str, np.ndarray]:
    """Where curve `first` (params a, b, c of shape (R,)) meets curve `second`, per row.

    Returns `n` (NaN where they do not cross in the window), `where` (observed / extrapolated /
    none), and `sign_below`, `sign_above`: the sign of first − second just below and above
    the crossing (for a row without one, both are its sign over the window). Of two crossings
    the one inside the measured range is taken (the smaller if both are), else the nearer.
    """
    lo_range, hi_range = measured
    grid = np.geomspace(lo_range / extrapolate, hi_range * extrapolate, WINDOW_POINTS)
    log_grid = np.log(grid)

    def gap(log_n: np.ndarray) -> np.ndarray:
        n = np.exp(log_n)
        return (power_law(n, first["a"][:, None], first["b"][:, None], first["c"][:, None])
                - power_law(n, second["a"][:, None], second["b"][:, None], second["c"][:, None]))

    d = gap(log_grid[None, :])
    change = (np.sign(d[:, :-1]) * np.sign(d[:, 1:]) <= 0) & ~((d[:, :-1] == 0) & (d[:, 1:] == 0))
    mid = np.exp((log_grid[:-1] + log_grid[1:]) / 2.0)
    distance = np.where(mid < lo_range, np.log(lo_range / mid), np.where(mid > hi_range, np.log(mid / hi_range), 0.0))
    score = np.where(change, distance[None, :], np.inf)
    index = np.argmin(score, axis=1)
    rows = np.arange(d.shape[0])
    coincide = np.nanmax(np.abs(d), axis=1) <= tol
    crosses = np.isfinite(score[rows, index]) & ~coincide & np.isfinite(d).all(axis=1)
    low, high = log_grid[index].copy(), log_grid[index + 1].copy()
    d_low = d[rows, index]
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2.0
        d_mid = gap(middle[:, None])[:, 0]
        same = np.sign(d_mid) == np.sign(d_low)
        low, high = np.where(same, middle, low), np.where(same, high, middle)
        d_low = np.where(same, d_mid, d_low)
    root = np.where(crosses, np.exp((low + high) / 2.0), np.nan)
    inside = (root >= lo_range * (1 - 1e-9)) & (root <= hi_range * (1 + 1e-9))
    where = np.where(~crosses, "none", np.where(inside, "observed", "extrapolated"))
    overall = np.sign(d[:, WINDOW_POINTS // 2])
    sign_below = np.where(crosses, np.sign(d[rows, index]), overall)
    sign_above = np.where(crosses, np.sign(d[rows, index + 1]), overall)
    # a crossing exactly on a grid point has d == 0 there: take the sign one point further out
    sign_below = np.where(crosses & (sign_below == 0), np.sign(d[rows, np.maximum(index - 1, 0)]), sign_below)
    sign_above = np.where(crosses & (sign_above == 0), np.sign(d[rows, np.minimum(index + 2, WINDOW_POINTS - 1)]),
                          sign_above)
    return {"n": root, "where": where, "sign_below": sign_below, "sign_above": sign_above, "coincide": coincide}


def error_values(frame: pd.DataFrame, metric: str, error: ErrorMode) -> tuple[pd.Series, str, float]:
    """The error each trial's metric stands for, its label, and the upper bound of c."""
    values = frame[metric].astype(float)
    one_minus = error == "one_minus" or (error == "auto" and "acc" in metric.lower())
    if error not in ("auto", "one_minus", "as_is"):
        raise BenchInputError(f"error mode {error!r} is not one of: auto, one_minus, as_is")
    if one_minus:
        outside = values[(values < 0) | (values > 1)]
        if len(outside):
            raise BenchInputError(f"metric {metric!r} has values outside [0, 1] (e.g. {outside.iloc[0]:g}); "
                                  "an accuracy is expected as a fraction")
        return 1.0 - values, f"1 − {metric}", 1.0
    return values, metric, math.inf


def _check_frame(frame: pd.DataFrame, by: str, x: str, metric: str) -> pd.DataFrame:
    missing = [c for c in (by, x, metric) if c not in frame.columns]
    if missing:
        raise BenchInputError(f"column(s) {', '.join(missing)} not in the trials "
                              f"(known: {', '.join(map(str, frame.columns))})")
    for column in (x, metric):
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or not (pd.api.types.is_numeric_dtype(series) or series.isna().all()):
            example = series.dropna().iloc[0] if series.notna().any() else None
            raise BenchInputError(f"column {column!r} is not numeric (e.g. {example!r}); "
                                  "a learning curve needs numbers")
    used = frame[[by, x, metric]].dropna()
    if used.empty:
        raise BenchInputError(f"no trials with both {x!r} and {metric!r}; nothing to fit")
    if (used[x] <= 0).any():
        raise BenchInputError(f"column {x!r} has values <= 0 (e.g. {used[x][used[x] <= 0].iloc[0]:g}); "
                              "training-set sizes must be positive")
    return used


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite-or-infinite replicates (no interpolation across an infinity)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def learning_curves(frame: pd.DataFrame, *, by: str = "model", x: str = "n_train", metric: str = "test_acc",
                    error: ErrorMode = "auto", ci: float = 95.0, n_boot: int = 1999, extrapolate: float = 10.0,
                    tol: float = 1e-3, expand: bool = True,
                    random_state: int | np.random.Generator | None = 0) -> LearningCurves:
    """Fit a learning curve per value of `by` (one row per trial in `frame`: its size `x`, its
    `metric`) and find each pair's crossover, with bootstrap intervals over seeds.

    Bad input (a missing or non-numeric column, a model with fewer than 3 sizes, an accuracy
    outside [0, 1], a level outside (0, 100)) raises BenchInputError with one line.
    """
    if not 0.0 < float(ci) < 100.0:
        raise BenchInputError(f"confidence level {ci!r} is outside (0, 100); give a percentage, e.g. --ci 95")
    if extrapolate < 1.0:
        raise BenchInputError(f"extrapolation factor {extrapolate!r} must be >= 1")
    level = float(ci) / 100.0
    used = _check_frame(frame, by, x, metric)
    errors, error_label, c_max = error_values(used, metric, error)
    points = pd.DataFrame({"model": used[by].to_numpy(), "n": used[x].astype(float).to_numpy(),
                           "error": errors.to_numpy()})
    for model, group in points.groupby("model", sort=True):
        sizes = np.unique(group["n"])
        if sizes.size < MIN_SIZES:
            raise BenchInputError(f"learning curve: {by} {model!r} has {sizes.size} size(s) of {x!r} "
                                  f"({', '.join(f'{s:g}' for s in sizes)}); "
                                  f"a fit of a·n^(−b) + c needs at least {MIN_SIZES}")
    rng = np.random.default_rng(random_state)
    fits: dict[Any, dict[str, Any]] = {}
    model_rows = []
    for model, group in points.groupby("model", sort=True):
        sizes, seeds = _seed_groups(group)
        estimate = fit_power_law(sizes, np.array([s.mean() for s in seeds]), c_max=c_max)
        boot = fit_power_law(sizes, _resampled_means(seeds, n_boot, rng, expand), c_max=c_max)
        failed = ~(np.isfinite(boot["a"]) & np.isfinite(boot["c"]) & np.isfinite(boot["sse"]))
        for key in boot:
            boot[key] = np.where(failed, np.nan, boot[key])
        b_lo, b_hi = _quantiles(boot["b"], level)
        c_lo, c_hi = _quantiles(boot["c"], level)
        fits[model] = {"estimate": estimate, "boot": boot, "range": (float(sizes.min()), float(sizes.max()))}
        model_rows.append({"model": model, "a": float(estimate["a"]), "b": float(estimate["b"]),
                           "c": float(estimate["c"]), "b_lo": b_lo, "b_hi": b_hi, "c_lo": c_lo, "c_hi": c_hi,
                           "n_min": float(sizes.min()), "n_max": float(sizes.max()), "n_sizes": int(sizes.size),
                           "seeds_min": int(min(s.size for s in seeds)), "sse": float(estimate["sse"]),
                           "n_boot": n_boot, "n_boot_failed": int(failed.sum()),
                           "n_boot_flat": int((~failed & np.isnan(boot["b"])).sum())})
    pair_rows = [_pair_row(first, second, fits, level, extrapolate, tol) for first, second in combinations(fits, 2)]
    return LearningCurves(models=pd.DataFrame(model_rows, columns=MODEL_COLUMNS),
                          pairs=pd.DataFrame(pair_rows, columns=PAIR_COLUMNS), points=points, metric=metric,
                          error_label=error_label, ci=float(ci), n_boot=n_boot, extrapolate=extrapolate, tol=tol,
                          expand=expand)


def _seed_groups(group: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sizes of one model and the errors of its trials (seeds) at each size."""
    by_size = group.groupby("n", sort=True)["error"]
    return np.array(list(by_size.groups), dtype=float), [values.to_numpy(float) for _, values in by_size]


def _resampled_means(seeds: list[np.ndarray], n_boot: int, rng: np.random.Generator, expand: bool) -> np.ndarray:
    """(n_boot, sizes) means of the seeds resampled with replacement within each size."""
    columns = []
    for values in seeds:
        m = values.size
        if expand and m > 1:
            values = values.mean() + math.sqrt(m / (m - 1)) * (values - values.mean())
        columns.append(values[rng.integers(0, m, size=(n_boot, m))].mean(axis=1))
    return np.stack(columns, axis=1)


def _pair_row(first: Any, second: Any, fits: dict[Any, dict[str, Any]], level: float, extrapolate: float,
              tol: float) -> dict[str, Any]:
    """One row of the pairs table: the crossover of the fitted curves and its bootstrap interval."""
    one, two = fits[first], fits[second]
    measured = (max(one["range"][0], two["range"][0]), min(one["range"][1], two["range"][1]))
    if measured[0] > measured[1]:  # no size in common: nothing is observed; the window spans both
        measured = (min(one["range"][0], two["range"][0]), max(one["range"][1], two["range"][1]))
    as_rows = (lambda params: {k: np.atleast_1d(v) for k, v in params.items()})
    estimate = crossings(as_rows(one["estimate"]), as_rows(two["estimate"]), measured, extrapolate, tol)
    boot = crossings(one["boot"], two["boot"], measured, extrapolate, tol)
    valid = np.isfinite(one["boot"]["a"]) & np.isfinite(two["boot"]["a"])
    n_cross = int((valid & np.isfinite(boot["n"])).sum())
    name = (lambda sign: first if sign < 0 else second if sign > 0 else "tie")
    where = str(estimate["where"][0])
    crossover, lo, hi, note = math.nan, math.nan, math.nan, ""
    if where != "none":
        crossover = float(estimate["n"][0])
        below, above = estimate["sign_below"][0], estimate["sign_above"][0]
        # no crossing in the window: beyond its low end if ordered as above the crossing, else beyond its high end
        placed = np.where(np.isfinite(boot["n"]), np.log(boot["n"]),
                          np.where(boot["sign_below"] == above, -np.inf,
                                   np.where(boot["sign_below"] == below, np.inf, np.nan)))
        log_lo, log_hi = _quantiles(placed[valid], level)
        lo, hi = math.exp(log_lo), math.exp(log_hi)
        if not (0.0 < lo and hi < math.inf):  # noise can bend two parallel curves into a crossing: not claimed
            note = (f"fitted curves cross at {crossover:.4g} but only {n_cross} of {int(valid.sum())} bootstrap fits "
                    f"cross within the window; the interval runs beyond it")
            where = "none"
    elif estimate["coincide"][0]:
        note = f"curves within {tol:g} of each other over the window"
    else:
        note = f"fitted curves do not cross within n {measured[0] / extrapolate:.4g} to {measured[1] * extrapolate:.4g}"
    return {"model_a": first, "model_b": second, "crossover_n": crossover, "crossover_lo": lo, "crossover_hi": hi,
            "where": where, "better_below": name(estimate["sign_below"][0]),
            "better_above": name(estimate["sign_above"][0]), "n_boot_cross": n_cross, "n_boot": int(valid.sum()),
            "note": note}
