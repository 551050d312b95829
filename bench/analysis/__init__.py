"""The analyses of the two papers, computed inside trials and stored in the long analysis table.

Importing the analysis modules registers them (see `bench.analysis.registry`). The worker
(`bench.train`) runs the ones a trial's config selects, at the epochs they ask for.
"""

# Importing the analysis modules registers them.
from bench.analysis import attention  # noqa: F401
from bench.analysis import attention_distance, fourier, hessian, landscape, lesion, noise, variance  # noqa: F401
from bench.analysis import pos_similarity  # noqa: F401
from bench.analysis.registry import (
    AnalysisContext,
    AnalysisOptions,
    analysis_entry,
    due,
    list_analyses,
    register_analysis,
    register_plot,
    resolve_analyses,
    run_analysis,
)

__all__ = [
    "AnalysisContext",
    "AnalysisOptions",
    "analysis_entry",
    "due",
    "list_analyses",
    "register_analysis",
    "register_plot",
    "resolve_analyses",
    "run_analysis",
]
