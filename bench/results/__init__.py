"""The results side: statistics over seeds, paired comparisons and learning curves, as pure functions."""
