"""Choosing a setting: the online oracle's ranking, offline model selection, regret and Expected Online Performance.

A setting is one (study, algorithm, dataset, knob values) with its members across seeds. `ranking` orders the
settings of each panel by the mean over seeds of the study's metric, diverged seeds at the failure level
(failure.py), fewer diverged seeds breaking a tie: the choice made with the test environment (the online oracle).
The mean, not the IQM, ranks: the IQM trims a quarter of the seeds at each end and could trim a diverged seed away.

Offline model selection ranks the settings instead by what the dataset alone can tell, each member's final
`ope/*` metric (study.SELECTION_METRICS: Fitted Q Evaluation's value; the critic's own initial Q; the critic's
TD error on a fixed sample of transitions, held-out episodes only with `train.holdout_fraction` > 0, by default
training transitions, so that it measures fit, not generalization), and `selection` reports what each choice
costs in test-environment score (regret against the oracle, Spearman's rho), and the Expected Online Performance
of Kurenkov & Kolesnikov 2022 ("Showing Your Offline Reinforcement Learning Work: Online Evaluation Budget
Matters", ICML): the expected best score when only k settings can be tried online.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .results import MemberRun
from .statistics import expected_max_random, expected_max_top, finite_mean, rank_correlation
from .study import SELECTION_METRICS


@dataclass
class Setting:
    """One (algorithm, dataset, knob setting) and its members across seeds."""
    algorithm: str
    dataset: str
    knobs: dict
    members: list[MemberRun]
    study: str = ""

    def scores(self, optimize: str) -> dict[int, float]:
        """{seed: failure-scored metric} of the members that have one."""
        return {m.seed: m.score(optimize) for m in self.members if math.isfinite(m.score(optimize))}

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.knobs.items()) or "(single setting)"


def settings(runs: list[MemberRun]) -> list[Setting]:
    groups: dict[tuple, list[MemberRun]] = defaultdict(list)
    for run in runs:
        groups[(run.study, run.algorithm, run.dataset, json.dumps(run.knobs, sort_keys=True))].append(run)
    return [Setting(algorithm, dataset, json.loads(knobs), sorted(members, key=lambda m: m.seed), study)
            for (study, algorithm, dataset, knobs), members in sorted(groups.items())]


def _rank(setting: Setting, study) -> float:
    """Higher is better: the mean failure-scored metric (its sign flipped for mode min); -inf if none."""
    scores = list(setting.scores(study.optimize).values())
    return (1.0 if study.mode == "max" else -1.0) * float(np.mean(scores)) if scores else -math.inf


def ranking(study, runs: list[MemberRun]) -> dict[tuple, tuple[float, Setting, list[Setting]]]:
    """{(study, algorithm, dataset): (the winner's score, the winner, the other settings best first)}: by
    the mean over seeds of the study's metric, diverged seeds at the failure level, fewer diverged seeds
    breaking a tie; settings without any score are left out."""
    candidates: dict[tuple, list[Setting]] = defaultdict(list)
    for setting in settings(runs):
        if setting.scores(study.optimize):
            candidates[(setting.study, setting.algorithm, setting.dataset)].append(setting)
    ranked = {}
    for key, group in sorted(candidates.items()):
        group.sort(key=lambda s: (-_rank(s, study), sum(m.diverged for m in s.members)))
        ranked[key] = ((1.0 if study.mode == "max" else -1.0) * _rank(group[0], study), group[0], group[1:])
    return ranked


def criterion_values(runs: list[MemberRun], criterion: str) -> dict[int, float]:
    """{id(member): its last reported value of the criterion's metric}, a diverged member at the worst value
    of the metric among the survivors of its dataset (failure.py's rule for a metric other than the returns).
    Nan where a member reported none; no entry for a dataset where no survivor reported any."""
    key, mode = SELECTION_METRICS[criterion]
    values = {}
    for dataset in sorted({run.dataset for run in runs}):
        members = [run for run in runs if run.dataset == dataset]
        seen = [v for v in (run.ope.get(key, math.nan) for run in members if not run.diverged) if math.isfinite(v)]
        if seen:
            failure = min(seen) if mode == "max" else max(seen)
            values.update({id(run): failure if run.diverged else run.ope.get(key, math.nan) for run in members})
    return values


def _criterion_means(candidates: list[Setting], values: dict[int, float]) -> np.ndarray:
    """Each setting's criterion: the mean over its seeds of their final values (diverged at the failure level)."""
    return np.array([float(finite_mean(np.array([values.get(id(m), math.nan) for m in s.members], dtype=np.float64)))
                     for s in candidates])


def _offline_pick(candidates: list[Setting], keyed: np.ndarray) -> int:
    """The index of the setting of the highest `keyed` criterion; a tie goes to fewer diverged seeds, then to
    the knobs' order, never to the test environment's scores."""
    order = sorted((i for i in range(len(candidates)) if math.isfinite(keyed[i])),
                   key=lambda i: json.dumps(candidates[i].knobs, sort_keys=True))
    return max(order, key=lambda i: (keyed[i], -sum(m.diverged for m in candidates[i].members)))


def selection(study, runs: list[MemberRun]) -> tuple[list[dict], list[dict]]:
    """Offline model selection per (study, algorithm, dataset), against the online oracle (`ranking`).

    rows, one per panel and criterion the panel's members reported (`online` always): the setting it picks,
    its criterion value, its score (the report's: mean failure-scored metric), the regret (the oracle's score
    minus the picked one's, in the metric's units, >= 0; and in % of the oracle's score minus the worst
    setting's), and Spearman's rho over the members between the criterion and the score, both oriented so
    that higher is better (+1: ranks the members as the test environment does), with n.
    curves, one per panel, selection ("random" or a criterion) and budget k = 1..N settings tried online: the
    expected best score (Expected Online Performance, `expected_max_random` and `expected_max_top`)."""
    sign = 1.0 if study.mode == "max" else -1.0
    values = {criterion: criterion_values(runs, criterion) for criterion in SELECTION_METRICS}
    rows, curves = [], []
    for (study_name, algorithm, dataset), (oracle, winner, others) in ranking(study, runs).items():
        candidates = [winner, *others]
        scores = np.array([np.mean(list(s.scores(study.optimize).values())) for s in candidates])
        spread = sign * (oracle - (scores.min() if sign > 0 else scores.max()))
        panel = {"study": study_name, "algorithm": algorithm, "dataset": dataset, "settings": len(candidates)}
        rows.append({**panel, "criterion": "online", "metric": f"{study.optimize} {study.metric}",
                     "setting": winner.label(), "criterion_value": oracle, "score": oracle, "regret": 0.0,
                     "regret_pct": 0.0, "spearman": math.nan, "spearman_n": 0})
        curves += [{**panel, "selection": "random", "k": k, "expected_best": float(v)}
                   for k, v in enumerate(sign * expected_max_random(sign * scores), 1)]
        for criterion, (key, mode) in SELECTION_METRICS.items():
            orient = 1.0 if mode == "max" else -1.0
            keyed = orient * _criterion_means(candidates, values[criterion])
            if not np.isfinite(keyed).any():
                continue
            pick = _offline_pick(candidates, keyed)
            regret = sign * (oracle - scores[pick])
            rho, n = rank_correlation(
                [orient * values[criterion].get(id(m), math.nan) for s in candidates for m in s.members],
                [sign * m.score(study.optimize) for s in candidates for m in s.members])
            rows.append({**panel, "criterion": criterion, "metric": key, "setting": candidates[pick].label(),
                         "criterion_value": orient * keyed[pick], "score": float(scores[pick]),
                         "regret": float(regret), "regret_pct": 100.0 * regret / spread if spread > 0 else 0.0,
                         "spearman": rho, "spearman_n": n})
            curves += [{**panel, "selection": criterion, "k": k, "expected_best": float(v)}
                       for k, v in enumerate(sign * expected_max_top(sign * scores, keyed), 1)]
    return rows, curves


def offline_picks(study, runs: list[MemberRun], criterion: str) -> dict[tuple, tuple[Setting, float]]:
    """{(study, algorithm, dataset): (the setting `criterion` picks, its criterion value)} for the panels
    whose members reported the criterion's metric (`selection`'s pick)."""
    key, mode = SELECTION_METRICS[criterion]
    orient = 1.0 if mode == "max" else -1.0
    values, picks = criterion_values(runs, criterion), {}
    for panel, (_, winner, others) in ranking(study, runs).items():
        candidates = [winner, *others]
        keyed = orient * _criterion_means(candidates, values)
        if np.isfinite(keyed).any():
            pick = _offline_pick(candidates, keyed)
            picks[panel] = (candidates[pick], float(orient * keyed[pick]))
    return picks
