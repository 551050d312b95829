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
"""

from __future__ import annotations

from math import comb
from typing import Any


def _trinomial(n: int, p_plus: float, p_minus: float):
    """(a, b, probability) for a +1s and b -1s among n independent draws."""
    p_zero = 1.0 - p_plus - p_minus
    for a in range(n + 1):
        for b in range(n - a + 1):
            yield a, b, comb(n, a) * comb(n - a, b) * p_plus**a * p_minus**b * p_zero ** (n - a - b)


def counting_accuracy(num_patches: int, set_size: int, q: float) -> float:
    """Accuracy of sign(sum of feature coefficients) with coin-flip ties."""
    acc = 0.0
    for a, b, p in _trinomial(num_patches - set_size, q / 2, q / 2):
        margin = set_size + a - b
        acc += p if margin > 0 else (p / 2 if margin == 0 else 0.0)
    return acc


def bayes_accuracy(num_patches: int, set_size: int, q: float) -> float:
    """Accuracy of the Bayes rule sign(#sets all +1 - #sets all -1) with coin-flip ties."""
    r = (q / 2) ** set_size
    acc = 0.0
    for a, b, p in _trinomial(num_patches // set_size - 1, r, r):
        margin = 1 + a - b
        acc += p if margin > 0 else (p / 2 if margin == 0 else 0.0)
    return acc


def spatial_baselines(options: Any) -> dict[str, float] | None:
    """{'chance', 'counting', 'bayes'} for a `spatial` dataset block (dict or options); None for other data."""
    from bench.data.registry import parse_options

    if isinstance(options, dict):
        if options.get("name") != "spatial":
            return None
        options = parse_options(options)
    if getattr(options, "name", None) != "spatial":
        return None
    d_count, c, q = options.n_patches, options.set_size, options.q
    return {"chance": 0.5, "counting": counting_accuracy(d_count, c, q), "bayes": bayes_accuracy(d_count, c, q)}
