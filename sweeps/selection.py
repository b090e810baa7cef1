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

`bandit` counts the online budget in episodes instead, by the protocol of Jackson et al. 2025 ("A Clean Slate for
Offline Reinforcement Learning", NeurIPS; the Unifloral library's evaluation.py, run_bandit_trials and
bootstrap_bandit_trials). The arms are the trained policies: every member (seed) of every setting of a panel, each
with the returns of its last evaluation's episodes (`train.final_eval_episodes`, in the study metric's units), a
diverged member an arm whose every episode scores the failure level (failure.py). Each of `BANDIT_REPEATS` repeats
draws `BANDIT_SUBSAMPLE` arms without replacement and runs a UCB bandit (alpha 2) for `BANDIT_PULLS` episodes, each
an episode return of the pulled arm drawn with replacement (statistics.bandit_deployments); after each episode the
policy of the highest empirical mean is deployed, and scored by its true mean (the mean of all its recorded
episodes). Per budget: the mean over repeats, with a 95% bootstrap CI. Beside it, on the same subsamples, uniform
round-robin, and "FQE first": the bandit among the `FQE_TOP_K` arms of the highest `ope/fqe_value`. As Unifloral:
the arms, alpha, the tie-breaking, the reward draws, what is deployed and how it is scored, the 1000 repeats, 200
pulls and 1000 bootstrap resamples, subsampling 20 (run_bandit_trials' default; its README and plots use 8). Not
as Unifloral: 100 recorded episodes per policy by default, not 1000; an untried policy is never deployed; numpy's
generator, not JAX's; the guides (`oracle`: the expected best arm of a subsample, `random_arm`: the mean arm,
`fqe_pick`: FQE's top arm with no online episode). `bandit_picks` (export) runs the bandit over every arm, with no
subsample, and names the setting whose policy it deploys most often.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .results import MemberRun
from .statistics import (BANDIT_SEED, bandit_deployments, bootstrap_mean_columns, expected_max_random,
                         expected_max_top, finite_mean, rank_correlation, subsample_arms, top_arms)
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


BANDIT_PULLS = 200         # run_bandit_trials' defaults (Unifloral evaluation.py): max_pulls,
BANDIT_REPEATS = 1_000     # num_repeats,
BANDIT_SUBSAMPLE = 20      # num_subsample
FQE_TOP_K = 5              # "FQE first": the bandit among this many arms of the highest ope/fqe_value


def bandit_arms(study, members: list[MemberRun]) -> tuple[list[MemberRun], list[np.ndarray]]:
    """The bandit's arms among `members`, and each one's episode returns: a diverged member at the failure level
    (one episode), a surviving one with its last evaluation's episodes; members without any are no arm. No arms
    where the study's metric is not a return to maximize (the bandit has no rewards then)."""
    if study.mode != "max" or study.metric.removesuffix("_best") not in ("eval/return", "eval/normalized_return"):
        return [], []
    arms = [m for m in members if m.diverged or len(m.episodes)]
    return arms, [np.array([m.failure]) if m.diverged else m.episodes for m in arms]


def _panels(runs: list[MemberRun]) -> dict[tuple, list[MemberRun]]:
    panels: dict[tuple, list[MemberRun]] = defaultdict(list)
    for setting in settings(runs):
        panels[(setting.study, setting.algorithm, setting.dataset)] += setting.members
    return dict(sorted(panels.items()))


def bandit(study, runs: list[MemberRun], pulls: int = BANDIT_PULLS, repeats: int = BANDIT_REPEATS,
           subsample: int = BANDIT_SUBSAMPLE, top_k: int = FQE_TOP_K, seed: int = BANDIT_SEED) -> list[dict]:
    """The bandit curves of every panel with arms (module docstring): one row per method ("ucb", "round_robin",
    "fqe_top_k_ucb" where FQE was reported) and budget of 1..`pulls` episodes, with the expected true score of the
    deployed policy, its 95% CI, the panel's arms (and members left out for want of recorded episodes), the
    episodes recorded per policy, the subsample size and the guides (`oracle`, `random_arm`, `fqe_pick`). Every
    panel draws from `seed`."""
    fqe = criterion_values(runs, "fqe")
    rows = []
    for (study_name, algorithm, dataset), members in _panels(runs).items():
        arms, returns = bandit_arms(study, members)
        if not arms:
            continue
        true = np.array([r.mean() for r in returns])
        rng = np.random.default_rng(seed)
        subsets = subsample_arms(len(arms), subsample, repeats, rng)
        criterion = np.array([fqe.get(id(m), math.nan) for m in arms])
        panel = {"study": study_name, "algorithm": algorithm, "dataset": dataset, "arms": len(arms),
                 "left_out": len(members) - len(arms), "subsample": subsets.shape[1], "top_k": 0,
                 "recorded": max((len(m.episodes) for m in arms if not m.diverged), default=0),
                 "oracle": float(expected_max_random(true, replacement=False)[subsets.shape[1] - 1]),
                 "random_arm": float(true.mean()), "fqe_pick": math.nan}
        methods = {"ucb": (subsets, "ucb"), "round_robin": (subsets, "round_robin")}
        if np.isfinite(criterion).any():
            top = top_arms(subsets, criterion, top_k, rng)
            methods["fqe_top_k_ucb"] = (top, "ucb")
            panel.update(top_k=top.shape[1], fqe_pick=float(true[top[:, 0]].mean()))
        for method, (chosen, rule) in methods.items():
            mean, low, high = bootstrap_mean_columns(true[bandit_deployments(returns, chosen, pulls, rng, rule)])
            rows += [{**panel, "method": method, "episodes": t, "expected_score": float(mean[t - 1]),
                      "ci_low": float(low[t - 1]), "ci_high": float(high[t - 1])} for t in range(1, pulls + 1)]
    return rows


def bandit_picks(study, runs: list[MemberRun], episodes: int, repeats: int = BANDIT_REPEATS,
                 seed: int = BANDIT_SEED) -> dict[tuple, dict]:
    """{(study, algorithm, dataset): pick} for export: UCB over every arm of the panel (no subsample; each repeat
    takes the arms in its own random order) for `episodes` episodes; the pick is the setting whose policy it
    deploys in the most repeats (a tie: the higher mean true score of those deployments), with "share" (of the
    repeats), "seed" (its policy deployed most often), "expected" and its 95% CI "ci" (the true score of the
    deployed policy, over every repeat), "arms" and "left_out"."""
    owner = {id(m): s for s in settings(runs) for m in s.members}
    picks = {}
    for panel, members in _panels(runs).items():
        arms, returns = bandit_arms(study, members)
        if not arms:
            continue
        true = np.array([r.mean() for r in returns])
        rng = np.random.default_rng(seed)
        deployed = bandit_deployments(returns, subsample_arms(len(arms), len(arms), repeats, rng), episodes, rng)[:, -1]
        mean, low, high = bootstrap_mean_columns(true[deployed][:, None])
        by_setting: dict[int, list[int]] = defaultdict(list)
        for arm in deployed:
            by_setting[id(owner[id(arms[arm])])].append(arm)
        chosen = max(by_setting.values(), key=lambda hits: (len(hits), float(true[hits].mean())))
        seeds = [arms[arm].seed for arm in chosen]
        picks[panel] = {"setting": owner[id(arms[chosen[0]])], "share": len(chosen) / repeats,
                        "seed": max(sorted(set(seeds)), key=seeds.count), "expected": float(mean[0]),
                        "ci": (float(low[0]), float(high[0])), "arms": len(arms), "left_out": len(members) - len(arms)}
    return picks
