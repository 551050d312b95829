"""Exact accuracies of two reference rules on the spatially structured data, in closed form.

The noise of a `spatial` sample is orthogonal to the feature w*, so everything a rule can
know about the label is in the coefficients c_j = <X_j, w*> in {-1, 0, +1}: y on every
patch of the signal set, a spurious delta_j (+1 w.p. q/2, -1 w.p. q/2, 0 otherwise) on
the other D - C patches.

- Counting rule: sign(sum_j c_j), blind to where the patches are. Given y = +1 it is right
  when C + a - b > 0, with (a, b) the numbers of spurious +1 and -1 among D - C patches
  (a trinomial); a tie is a coin flip.
- Bayes rule: P(c | y, l) is zero unless set S_l is all y, and otherwise the same for
  every such l (the spurious patches of S_l are replaced by forced ones at the same
  cost), so the posterior odds of y = +1 are n+ / n-, the numbers of sets all +1 and all
  -1. Given y = +1, n+ = 1 + A and n- = B with (A, B) trinomial over the L - 1 other
  sets, each all +1 or all -1 with probability r = (q/2)^C; ties are coin flips.

A model beats counting only by using the partition; Bayes is the ceiling. Both are exact
sums (no sampling), so they can sit next to measured accuracies in every table.

How they are summed: both rules have p+ = p-, so condition on the number m of nonzero draws
(Binomial(n, p+ + p-)); given m, the +1s among them are Binomial(m, 1/2), and the rule is right
when 2a > m - margin0 (ties half). Terms come from scipy's binomial in log space and are
added with logsumexp (those below e^-80 of the largest left out, O(sqrt(n)) remain): D = 400
takes about 1.5 ms, D = 10^5 about 30 ms, and nothing overflows (the direct trinomial sum took
0.7 s at D = 400 and overflowed a float at D = 1,200). Results are cached per (D, C, q): once
per dataset, not once per trial row; one that cannot be computed is recorded empty (None)
with one warning, never an error in the driver's callback.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom


def _sign_rule_accuracy(n: int, p_each: float, margin0: int) -> float:
    """P(margin0 + a - b > 0) + P(= 0) / 2, with a +1s and b -1s among n draws, each +1 and -1
    with probability `p_each`. Summed over m = a + b in log space (see the module doc)."""
    if n <= 0:
        return 1.0 if margin0 > 0 else (0.5 if margin0 == 0 else 0.0)
    m = np.arange(n + 1)
    log_m = binom.logpmf(m, n, min(1.0, 2.0 * p_each))
    keep = log_m > log_m.max() - 80.0  # the rest weigh less than e^-80 of the largest term: O(sqrt(n)) left
    m, log_m = m[keep], log_m[keep]
    k = m - margin0  # right when 2a > k; a tie when 2a == k
    right = binom.sf(np.floor(k / 2), m, 0.5) + 0.5 * np.where(k % 2 == 0, binom.pmf(k // 2, m, 0.5), 0.0)
    with np.errstate(divide="ignore"):
        log_right = np.log(right)
    return float(min(1.0, np.exp(logsumexp(log_m + log_right))))


@lru_cache(maxsize=256)
def counting_accuracy(num_patches: int, set_size: int, q: float) -> float:
    """Accuracy of sign(sum of feature coefficients) with coin-flip ties."""
    return _sign_rule_accuracy(num_patches - set_size, q / 2, set_size)


@lru_cache(maxsize=256)
def bayes_accuracy(num_patches: int, set_size: int, q: float) -> float:
    """Accuracy of the Bayes rule sign(#sets all +1 - #sets all -1) with coin-flip ties."""
    return _sign_rule_accuracy(num_patches // set_size - 1, (q / 2) ** set_size, 1)


_warned: set[tuple[str, int, int, float]] = set()


def _or_none(rule: str, compute, d_count: int, c: int, q: float) -> float | None:
    """A baseline, or None (recorded empty) with one warning per dataset if it cannot be computed."""
    try:
        value = compute(d_count, c, q)
        if not 0.0 <= value <= 1.0:
            raise ArithmeticError(f"got {value}")
        return value
    except Exception as exc:  # a baseline must never keep a trial's row from being written
        if (rule, d_count, c, q) not in _warned:
            _warned.add((rule, d_count, c, q))
            print(f"bench: warning: spatial data D={d_count}, C={c}, q={q}: the {rule} baseline could not be "
                  f"computed ({type(exc).__name__}: {str(exc)[:200]}); recorded empty", file=sys.stderr, flush=True)
        return None


def spatial_baselines(options: Any) -> dict[str, float] | None:
    """{'chance', 'counting', 'bayes'} for a `spatial` dataset block (dict or options); None for other data."""
    from bench.data.registry import parse_options

    if isinstance(options, dict):
        if options.get("name") != "spatial":
            return None
        options = parse_options(options)
    if getattr(options, "name", None) != "spatial":
        return None
    d_count, c, q = options.n_patches, options.set_size, float(options.q)
    return {"chance": 0.5, "counting": _or_none("counting", counting_accuracy, d_count, c, q),
            "bayes": _or_none("Bayes", bayes_accuracy, d_count, c, q)}
