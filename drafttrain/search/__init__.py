"""Self-draft search: tune which sublayers a self-draft view of the target skips (and which layer
groups it quantizes) with Optuna, and export K draft levels for a CAS-Spec style cascade.

Modules: `config` (SearchConfig), `space` (SearchSpace, cost_fraction), `objectives`
(expected_speedup, CheapObjective, MeasuredObjective), `study` (open_study, run_search,
pareto_levels, write_levels, write_plots, search). Names are imported lazily so that loading the
config does not import Optuna or torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchConfig": "config",
    "SearchSpace": "space", "cost_fraction": "space",
    "expected_speedup": "objectives", "CheapObjective": "objectives", "MeasuredObjective": "objectives",
    "Evaluation": "objectives",
    "Level": "study", "open_study": "study", "run_search": "study", "pareto_levels": "study",
    "write_levels": "study", "read_levels": "study", "write_plots": "study", "search": "study",
    "build_objective": "study",
}

__all__ = [
    "CheapObjective", "Evaluation", "Level", "MeasuredObjective", "SearchConfig", "SearchSpace",
    "build_objective", "cost_fraction", "expected_speedup", "open_study", "pareto_levels", "read_levels",
    "run_search", "search", "write_levels", "write_plots",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"drafttrain.search.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'drafttrain.search' has no attribute {name!r}")
