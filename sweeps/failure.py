"""Divergence is a result, not a gap (DESIGN.md section 7): the failure level a diverged member scores.

A member that diverged scores the study's *failure level* from the evaluation at which it diverged on, in every
aggregate that ranks or exports (its best evaluation so far keeps the evaluations before it diverged):
- `eval/normalized_return`: the random-policy level, 0;
- `eval/return`: the dataset's random-policy level (its ref_min_score), read back from the study's own
  pairs of `eval/return` and `eval/normalized_return` (the normalization is linear), so the report needs
  no dataset;
- any other metric, or when the random level cannot be read back: the worst value of the metric seen on
  that dataset anywhere in the study.
The level is lowered to the worst value seen on the dataset when an evaluation scored below it, so a
diverged member never scores above an observed evaluation, and a setting with diverged seeds never
outranks a stable one of equal survivors' mean. The mean over the survivors alone stays as an extra
column of the report, `*_mean_survivors`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .results import MemberRun


def random_level(metric: str, pairs) -> float | None:
    """The metric's random-policy level, or None: 0 for normalized returns; for raw returns, the return
    whose normalized score is 0, from `(return, normalized return)` pairs (a line through two or more)."""
    base = metric.removesuffix("_best")
    if base == "eval/normalized_return":
        return 0.0
    if base != "eval/return":
        return None
    pairs = np.array([p for p in pairs if all(math.isfinite(v) for v in p)], dtype=np.float64).reshape(-1, 2)
    if len(np.unique(pairs[:, 0])) < 2:
        return None
    slope, intercept = np.polyfit(pairs[:, 0], pairs[:, 1], 1)
    return float(-intercept / slope) if slope > 0 else None


def failure_levels(study, runs: list[MemberRun], normalization: dict) -> dict[str, tuple[float, str]]:
    """{dataset: (failure level, how it was chosen)} (see the module docstring)."""
    levels = {}
    for dataset in sorted({run.dataset for run in runs}):
        seen = np.concatenate([run.history for run in runs if run.dataset == dataset])
        seen = seen[np.isfinite(seen)]
        worst = (seen.min() if study.mode == "max" else seen.max()) if len(seen) else math.nan
        level = random_level(study.metric, normalization.get(dataset, [])) if study.mode == "max" else None
        if level is None:
            levels[dataset] = (float(worst) if math.isfinite(worst) else 0.0, "the worst value seen on the dataset")
        elif math.isfinite(worst) and worst < level:
            levels[dataset] = (float(worst), "the worst value seen on the dataset (below the random-policy level)")
        else:
            levels[dataset] = (level, "the random-policy level")
    return levels


def score_failure(run: MemberRun, level: float, mode: str) -> None:
    """Set `failure`, `last` and `best` of `run`, every evaluation from its divergence on at `level`."""
    run.failure = level
    scored = run.scored_history()
    finite = scored[np.isfinite(scored)]
    run.last = float(scored[-1])
    run.best = float((finite.max() if mode == "max" else finite.min())) if len(finite) else math.nan
