"""What a report says about each setting, as plain rows and lines (report.md, the CSVs and export headers).

`summarize`: one row per setting, its seeds (finished, diverged, used), the failure level, and for its last and best
evaluation the mean and IQM with 95% bootstrap CIs; `aggregate`: the settings pooled across datasets, with
stratified-bootstrap CIs and the probability that one algorithm's best beats another's; `winner_comparison`: how
far the seeds let a winner be told apart from the other settings.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np

from .results import MemberRun
from .selection import Setting, ranking, settings
from .statistics import (bootstrap_ci, iqm, probability_of_improvement, probability_of_improvement_across,
                         stratified_bootstrap_ci)


def summarize(study, runs: list[MemberRun]) -> list[dict]:
    """One row per setting: its seeds (finished, diverged, used), the failure level, and for the last and
    best evaluation the mean and IQM with their 95% bootstrap CIs (diverged seeds at the failure level)
    and the plain mean over the survivors; Q overestimation over the survivors; the updates per second of the
    setting's trials (each a packed population), averaged over their evaluations."""
    rows, several = [], len({run.study for run in runs}) > 1
    for setting in settings(runs):
        members = setting.members
        row = {**({"study": setting.study} if several else {}),
               "algorithm": setting.algorithm, "dataset": setting.dataset, **setting.knobs,
               "seeds": len(members), "finished": sum(m.finished for m in members),
               "diverged": sum(m.diverged for m in members),
               "used": sum(math.isfinite(m.last) for m in members),
               "diverged_seeds": " ".join(f"{m.seed}@{m.diverged_at}" for m in members if m.diverged),
               "failure_level": members[0].failure}
        for name in ("last", "best"):
            values = [m.score(name) for m in members]
            finite = [v for v in values if math.isfinite(v)]
            row[f"{name}_mean"] = float(np.mean(finite)) if finite else math.nan
            row[f"{name}_mean_ci_low"], row[f"{name}_mean_ci_high"] = bootstrap_ci(finite)
            row[f"{name}_iqm"] = float(iqm(finite)) if finite else math.nan
            row[f"{name}_iqm_ci_low"], row[f"{name}_iqm_ci_high"] = bootstrap_ci(finite, iqm)
            survivors = [v for m, v in zip(members, values) if not m.diverged and math.isfinite(v)]
            row[f"{name}_mean_survivors"] = float(np.mean(survivors)) if survivors else math.nan
        q = [m.q_overestimation for m in members if not m.diverged and math.isfinite(m.q_overestimation)]
        row["q_overestimation_mean_survivors"] = float(np.mean(q)) if q else math.nan
        row["q_overestimation_ci_low"], row["q_overestimation_ci_high"] = bootstrap_ci(q)
        speeds = [np.nanmean(m.curves["updates_per_second"]) for m in members
                  if np.isfinite(m.curves.get("updates_per_second", np.empty(0))).any()]
        row["updates_per_second"] = float(np.mean(speeds)) if speeds else math.nan
        rows.append(row)
    return rows


# The counts of a `summarize` row, besides its identity, its knobs and its statistics.
SUMMARY_COLUMNS = ("seeds", "finished", "diverged", "used", "diverged_seeds", "failure_level")


def knob_names(rows: list[dict]) -> set[str]:
    """The knob columns of `summarize`'s rows."""
    fixed = {"study", "algorithm", "dataset", "updates_per_second", *SUMMARY_COLUMNS}
    return {k for row in rows for k in row if k not in fixed
            and not k.startswith(("last_", "best_", "q_overestimation", "published_"))}


def aggregate(study, runs: list[MemberRun]) -> tuple[list[dict], list[str]]:
    """Across datasets, per (study, algorithm): each knob setting and each dataset's best setting (by the
    mean; chosen on the same seeds, so optimistic), pooled over (dataset, seed) scores: IQM and mean with
    stratified-bootstrap 95% CIs; and lines of P(one's best beats another's) over their shared datasets.
    Empty where pooling is meaningless: raw returns of several datasets."""
    datasets = sorted({run.dataset for run in runs})
    if len(datasets) > 1 and not study.metric.removesuffix("_best") == "eval/normalized_return":
        return [], [f"Not pooled across datasets: `{study.metric}` is not normalized."]
    groups: dict[tuple, dict[str, list[Setting]]] = defaultdict(lambda: defaultdict(list))
    for setting in settings(runs):
        groups[(setting.study, setting.algorithm)][json.dumps(setting.knobs, sort_keys=True)].append(setting)
    best: dict[tuple, dict[str, Setting]] = defaultdict(dict)
    for (study_name, algorithm, dataset), (_, winner, _) in ranking(study, runs).items():
        best[(study_name, algorithm)][dataset] = winner
    rows = []
    for (study_name, algorithm), by_knobs in sorted(groups.items()):
        # With one setting, each dataset's best is that setting: its row would only repeat the one above.
        for label, chosen in [(json.loads(k), v) for k, v in sorted(by_knobs.items())] + [
                ("best setting per dataset", list(best[(study_name, algorithm)].values()))] * (len(by_knobs) > 1):
            strata = [list(s.scores(study.optimize).values()) for s in chosen]
            pooled = [v for values in strata for v in values]
            row = {"study": study_name, "algorithm": algorithm,
                   "setting": label if isinstance(label, str) else ", ".join(f"{k}={v}" for k, v in label.items()),
                   "datasets": len(chosen), "used": len(pooled),
                   "diverged": sum(m.diverged for s in chosen for m in s.members),
                   "iqm": float(iqm(pooled)) if pooled else math.nan}
            row["iqm_ci_low"], row["iqm_ci_high"] = stratified_bootstrap_ci(strata)
            row["mean"] = float(np.mean(pooled)) if pooled else math.nan
            row["mean_ci_low"], row["mean_ci_high"] = stratified_bootstrap_ci(strata, np.mean)
            rows.append(row)
    lines = []
    keys = sorted(best)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            shared = sorted(set(best[first]) & set(best[second]))
            result = probability_of_improvement_across(
                [(best[first][d].scores(study.optimize), best[second][d].scores(study.optimize)) for d in shared],
                study.mode)
            lines.append(f"P({' '.join(first)} beats {' '.join(second)}), each at its best setting per dataset, "
                         f"over {len(shared)} shared dataset(s): {result['p']:.3g}, 95% CI "
                         f"[{result['ci_low']:.3g}, {result['ci_high']:.3g}]")
    return rows, lines


def winner_comparison(study, winner: Setting, score: float, others: list[Setting]) -> list[str]:
    """The export header's lines on the winner's statistics and how it compares with the other settings."""
    scores = winner.scores(study.optimize)
    low, high = bootstrap_ci(list(scores.values()))
    diverged = [f"seed {m.seed} (iteration {m.diverged_at})" for m in winner.members if m.diverged]
    lines = [f"mean {study.optimize} {study.metric} = {score:.4g}, 95% bootstrap CI [{low:.4g}, {high:.4g}], "
             f"IQM {float(iqm(list(scores.values()))):.4g}, over seeds {sorted(scores)}; "
             f"{len(winner.members)} seeds, {sum(m.finished for m in winner.members)} finished, "
             f"{len(diverged)} diverged, {len(scores)} used",
             ("diverged (scored at the failure level " + f"{winner.members[0].failure:.4g}" + "): " + ", ".join(diverged))
             if diverged else "no seed diverged"]
    if not others:
        return lines + ["the only setting: nothing to compare with"]
    tied = []
    for n, other in enumerate(others):
        improvement = probability_of_improvement(scores, other.scores(study.optimize), study.mode)
        other_low, other_high = bootstrap_ci(list(other.scores(study.optimize).values()))
        if n == 0:
            how = (f"paired over seeds {improvement['seeds']}" if improvement["paired"]
                   else "over all pairs of seeds (fewer than two shared)")
            lines.append(f"P(this beats the runner-up, {other.label()}) = {improvement['p']:.3g}, "
                         f"95% bootstrap CI [{improvement['ci_low']:.3g}, {improvement['ci_high']:.3g}], {how}")
        overlap = not (high < other_low or other_high < low)
        undecided = not improvement["ci_low"] > 0.5 and not improvement["ci_high"] < 0.5   # nan: undecided
        if overlap or undecided:
            tied.append(other.label())
    lines.append("cannot be told apart (95% CIs of the mean overlap, or the CI of P(this beats it) contains 0.5 or "
                 "cannot be computed) from: " + ("; ".join(tied) if tied else "none"))
    return lines
