"""Expected calibration error of top-1 predictions, as Park & Kim compute it (how-do-vits-work,
ops/tests.py): 10 equal-width bins of the top-1 confidence over [0, 1]; ECE is the sum over
bins of |accuracy - mean confidence| weighted by the bin's share of the predictions.

The paper reports calibration next to NLL; the trials table stores it as `ece`, and the bin
count with the trial (`recorded.ece_bins`). Bins are (lo, hi]: the authors count a
prediction and its accuracy in (lo, hi] but add its confidence to [lo, hi), which only
differs for a confidence exactly on a bin edge (1.0 included, a saturated softmax); here
all three use (lo, hi], so a prediction's confidence and correctness stay in one bin.

Counts are accumulated on the device batch by batch (`CalibrationCounts`), so the trial's
evaluation keeps its single synchronisation at the end.
"""

from __future__ import annotations

import torch

#: The authors' bins: np.linspace(0.0, 1.0, 11).
ECE_BINS = 10


class CalibrationCounts:
    """Per bin: predictions, summed top-1 confidence, correct predictions."""

    def __init__(self, bins: int = ECE_BINS, device: torch.device | str | None = None):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = bins
        self.table = torch.zeros(3, bins, dtype=torch.float64, device=device)
        #: Predictions whose confidence is not a number (a diverged model's NaN logits): they have
        #: no bin, and a model that made one has no calibration (its ECE is NaN).
        self.nonfinite = torch.zeros((), dtype=torch.long, device=device)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of logits (N, C) and class indices (N,)."""
        probs = torch.softmax(logits.double(), dim=1)
        confidence, predicted = probs.max(dim=1)
        finite = torch.isfinite(confidence)
        self.nonfinite += (~finite).sum()
        confidence, predicted, targets = confidence[finite], predicted[finite], targets[finite]
        index = (torch.ceil(confidence * self.bins) - 1).clamp(0, self.bins - 1).long()  # (lo, hi]
        correct = (predicted == targets).double()
        self.table[0].index_add_(0, index, torch.ones_like(confidence))
        self.table[1].index_add_(0, index, confidence)
        self.table[2].index_add_(0, index, correct)

    def ece(self) -> float:
        count, confidence, correct = self.table.cpu().unbind(0)
        total = float(count.sum())
        if total == 0 or int(self.nonfinite) > 0:
            return float("nan")
        filled = count > 0
        gap = (correct[filled] - confidence[filled]).abs() / count[filled]
        return float((gap * count[filled]).sum() / total)


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of one set of predictions (logits (N, C), class indices (N,))."""
    counts = CalibrationCounts(bins, logits.device)
    counts.add(logits, targets)
    return counts.ece()
