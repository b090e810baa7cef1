"""The report's figures, drawn with matplotlib (Agg) from `summarize`'s rows, the member runs and `selection`'s
curves: sensitivity.png (the metric and Q overestimation against each knob), learning_curves.png, profiles.png
(performance profiles), eop.png (Expected Online Performance) and bandit.png (the bandit protocol's curves). Figures
only: every number they show is computed elsewhere (summary.py, selection.py, statistics.py).
"""
from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..algorithms import ALGORITHMS
from .atomic_fs import write_atomic
from .results import MemberRun
from .selection import settings
from .statistics import BOOTSTRAP_SEED, bootstrap_ci, finite_mean, performance_profile
from .summary import knob_names


def plot_sensitivity(study, rows: list[dict], runs: list[MemberRun], path: Path) -> None:
    """One column of panels per (algorithm, knob): the metric (top) and Q overestimation (bottom) against
    the knob, the x-axis running from weaker to stronger constraint (the learner's `CONSTRAINT_KNOBS`), log
    scale when the grid is log-spaced. Per-seed points (x: a diverged seed, at the failure level) under the
    mean and its 95% CI; a mean whose CI cannot be computed is drawn hollow, without a bar. The study's `reference:`
    entries are black stars at their knob value (on a panel without a knob axis, at 0), labelled with the dataset
    they were published on: the papers' points on the user's own curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = _panels(rows)
    fig, axes = plt.subplots(2, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 8), squeeze=False)
    members_of = {id(row): setting.members for row, setting in zip(rows, settings(runs))}
    for column, ((algorithm, knob), lines) in enumerate(panels.items()):
        ax_metric, ax_q = axes[0, column], axes[1, column]
        for n, (label, points) in enumerate(lines.items()):
            color = f"C{n % 10}"
            points = sorted(points, key=lambda p: p[0])
            xs = np.array([p[0] for p in points], dtype=float)
            for ax, mean_key, low_key, high_key, value in (
                    (ax_metric, f"{study.optimize}_mean", f"{study.optimize}_mean_ci_low",
                     f"{study.optimize}_mean_ci_high", lambda m: m.score(study.optimize)),
                    (ax_q, "q_overestimation_mean_survivors", "q_overestimation_ci_low", "q_overestimation_ci_high",
                     lambda m: math.nan if m.diverged else m.q_overestimation)):
                means = np.array([p[1][mean_key] for p in points], dtype=float)
                low = np.array([p[1][low_key] for p in points], dtype=float)
                high = np.array([p[1][high_key] for p in points], dtype=float)
                ax.plot(xs, means, "-", color=color, label=label)
                has_ci = np.isfinite(low) & np.isfinite(high)
                ax.errorbar(xs[has_ci], means[has_ci], yerr=[means[has_ci] - low[has_ci], high[has_ci] - means[has_ci]],
                            fmt="o", color=color, capsize=3)
                ax.plot(xs[~has_ci], means[~has_ci], "o", mfc="none", color=color)
                for x, (_, row) in zip(xs, points):
                    for m in members_of[id(row)]:
                        if math.isfinite(value(m)) or (ax is ax_metric and m.diverged):
                            ax.plot(x, value(m), "x" if m.diverged else ".", color=color, alpha=0.6, ms=6)
        _published_markers(ax_metric, study, algorithm, knob)
        direction = ALGORITHMS[algorithm].CONSTRAINT_KNOBS.get(knob) if algorithm in ALGORITHMS else None
        all_x = sorted({p[0] for points in lines.values() for p in points})
        for ax in (ax_metric, ax_q):
            if _log_spaced(all_x):
                ax.set_xscale("log")
            if direction == "lower":
                ax.invert_xaxis()
            ax.set_xlabel(f"{knob}  (weaker -> stronger constraint)" if direction else knob)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax_metric.set_title(f"{algorithm}: {knob}")
        ax_metric.set_ylabel(f"{study.optimize} {study.metric}")
        ax_q.set_ylabel("Q - Monte-Carlo return (survivors)")
        ax_q.axhline(0.0, color="grey", lw=0.8)
    fig.suptitle(f"{study.name}: mean and 95% bootstrap CI over seeds\n(dots: seeds; x: diverged, scored as a "
                 f"failure; hollow: no CI)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _published_markers(ax, study, algorithm: str, knob: str) -> None:
    """The `reference:` entries of `algorithm` on `knob`'s panel (entries without a knob on a panel without a knob
    axis), as black stars, the first labelled for the legend."""
    entries = [e for e in getattr(study, "reference", ()) if e.algorithm == algorithm
               and ((e.knob is not None and e.knob[0] == knob) or (e.knob is None and knob == "(single setting)")
                    or (e.knob is not None and knob == "(single setting)"))]
    for n, entry in enumerate(entries):
        x = entry.knob[1] if entry.knob is not None and entry.knob[0] == knob else 0.0
        budget = f", {entry.budget:,} updates" if entry.budget else ""
        ax.plot(x, entry.value, "*", color="black", ms=12, ls="none",
                label="published (see report; often another budget)" if n == 0 else None)
        ax.annotate(f"{entry.published_dataset or entry.dataset}{budget}", (x, entry.value), fontsize=6,
                    xytext=(4, 4), textcoords="offset points")


def plot_published(study, rows: list[dict], path: Path) -> None:
    """One panel per dataset with a `reference:` entry that a setting matched: per matched setting (a line each,
    as the report's "Beside the published scores" table), the measured IQM of the optimized score with its 95% CI
    and the published value as a star, hollow where it was trained for another budget than this study's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_dataset: dict = defaultdict(list)
    for row in rows:
        if "published_value" in row:
            by_dataset[row["dataset"]].append(row)
    height = 1.2 + 0.45 * max(len(matched) for matched in by_dataset.values())
    fig, axes = plt.subplots(1, len(by_dataset), figsize=(max(7.0, 5.0 * len(by_dataset)), height), squeeze=False)
    for ax, (dataset, matched) in zip(axes[0], by_dataset.items()):
        _published_panel(ax, study, matched)
        ax.set_title(dataset, fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{study.name}: measured {study.optimize} {study.metric}\n(IQM, 95% bootstrap CI over seeds) beside "
                 f"the published values", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _published_panel(ax, study, matched: list[dict]) -> None:
    """`matched` (report rows with `published_*` columns) top to bottom: a dot with its CI for the measured IQM, a
    star for the published value (hollow: another budget)."""
    score = study.optimize
    knobs = sorted(knob_names(matched))
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        first = label not in labelled
        labelled.add(label)
        return label if first else None
    for y, row in enumerate(reversed(matched)):
        iqm, low, high = (row[f"{score}_iqm"], row[f"{score}_iqm_ci_low"], row[f"{score}_iqm_ci_high"])
        errors = [[iqm - low], [high - iqm]] if math.isfinite(low) and math.isfinite(high) else None
        ax.errorbar([iqm], [y], xerr=errors, fmt="o", color="C0", capsize=3, label=once("measured"))
        other_budget = row["published_different_budget"]
        ax.plot([row["published_value"]], [y], "*", ms=12, ls="none", color="black",
                markerfacecolor="none" if other_budget else "black",
                label=once("published, another budget" if other_budget else "published (budget the same or not given)"))
    ax.set_yticks(range(len(matched)))
    def label(row: dict) -> str:
        return row["algorithm"] + "".join(f" {k}={row[k]:g}" for k in knobs
                                          if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool))
    ax.set_yticklabels([label(row) for row in reversed(matched)], fontsize=7)
    ax.set_xlabel(study.metric, fontsize=8)
    ax.grid(alpha=0.3, axis="x")


def plot_learning_curves(study, rows: list[dict], runs: list[MemberRun], path: Path) -> None:
    """One column per (algorithm, knob), one line per knob value (and dataset), darker = stronger
    constraint: the metric per iteration (mean over seeds, diverged ones at the failure level, and its 95%
    bootstrap CI as a band), Q overestimation per iteration (survivors), and the metric against the learned
    Q at the visited states (the lecture's return-against-log-Q plot, one point per iteration; log x where
    Q spans decades)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    panels = _panels(rows)
    fig, axes = plt.subplots(3, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 11), squeeze=False)
    members_of = {id(row): setting.members for row, setting in zip(rows, settings(runs))}
    for column, ((algorithm, knob), lines) in enumerate(panels.items()):
        ax_metric, ax_q, ax_log_q = axes[:, column]
        direction = ALGORITHMS[algorithm].CONSTRAINT_KNOBS.get(knob) if algorithm in ALGORITHMS else None
        values = sorted({x for points in lines.values() for x, _ in points}, reverse=direction == "lower")
        curves = sorted(((label, x, row) for label, points in lines.items() for x, row in points),
                        key=lambda c: (c[0], values.index(c[1])))
        for label, x, row in curves:
            color = plt.cm.viridis_r(0.15 + 0.75 * values.index(x) / max(1, len(values) - 1))
            name = f"{label} {knob}={x:g}" if knob != "(single setting)" else label
            members = members_of[id(row)]
            length = max(len(m.history) for m in members)
            def stack(values):
                return np.array([np.pad(v, (0, length - len(v)), constant_values=np.nan) for v in values])
            scored = stack([m.scored_history() for m in members])
            iterations = np.arange(1, length + 1)
            mean = finite_mean(scored)
            band = np.array([bootstrap_ci(c) for c in scored.T])
            ax_metric.plot(iterations, mean, color=color, label=name)
            ax_metric.fill_between(iterations, band[:, 0], band[:, 1], color=color, alpha=0.2)
            q = stack([m.curves.get("eval/q_overestimation", np.full(len(m.history), np.nan)) for m in members])
            q_mean = stack([m.curves.get("eval/q_mean", np.full(len(m.history), np.nan)) for m in members])
            with np.errstate(all="ignore"):
                ax_q.plot(iterations, finite_mean(q), color=color, label=name)
                ax_log_q.plot(finite_mean(q_mean), finite_mean(stack([m.history for m in members])), "o-",
                              color=color, ms=3, label=name)
        ax_metric.set_title(f"{algorithm}: {knob}" + (" (darker: stronger constraint)" if direction else ""))
        ax_metric.set_ylabel(f"{study.metric} (diverged: failure level)")
        ax_q.set_ylabel("Q - Monte-Carlo return (survivors)")
        ax_q.axhline(0.0, color="grey", lw=0.8)
        q_seen = np.concatenate([m.curves.get("eval/q_mean", np.empty(0)) for m in runs if m.algorithm == algorithm])
        q_seen = q_seen[np.isfinite(q_seen)]
        scale = "linear"
        if len(q_seen) and np.ptp(q_seen) > 0:     # log where Q spans decades (symlog when it crosses zero)
            if q_seen.min() > 0 and q_seen.max() / q_seen.min() > 10:
                scale = "log"
            elif q_seen.min() < 0 < q_seen.max() and np.abs(q_seen).max() > 100:
                scale = "symlog"
        ax_log_q.set_xscale(scale)
        ax_log_q.set_xlabel(f"learned Q at the visited states (eval/q_mean{', ' + scale if scale != 'linear' else ''})")
        ax_log_q.set_ylabel(f"{study.metric} (survivors)")
        for ax in (ax_metric, ax_q):
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (ax_metric, ax_q, ax_log_q):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: learning curves, mean and 95% bootstrap CI over seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_profiles(study, rows: list[dict], runs: list[MemberRun], path: Path) -> None:
    """Performance profiles (Agarwal et al. 2021), one panel per (algorithm, knob), one line per knob value
    (pooled over datasets, each dataset weighing the same): the fraction of runs whose failure-scored
    metric exceeds each threshold, with a 95% stratified-bootstrap band. Only where the metric is "max"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = _panels(rows)
    setting_of = {id(row): setting for row, setting in zip(rows, settings(runs))}
    scores = [m.score(study.optimize) for m in runs if math.isfinite(m.score(study.optimize))]
    taus = np.linspace(min(scores), max(scores), 101) if scores else np.zeros(1)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 4.5), squeeze=False)
    for ax, ((algorithm, knob), lines) in zip(axes[0], panels.items()):
        direction = ALGORITHMS[algorithm].CONSTRAINT_KNOBS.get(knob) if algorithm in ALGORITHMS else None
        by_value: dict = defaultdict(list)
        for label, points in lines.items():
            for x, row in points:     # pooled over datasets: the line's label without its dataset
                pooled = " ".join(label.replace(row["dataset"], "", 1).replace(":", "").split())
                by_value[(pooled, x)].append(setting_of[id(row)])
        values = sorted({x for _, x in by_value}, reverse=direction == "lower")
        for (prefix, x), chosen in sorted(by_value.items(), key=lambda item: (item[0][0], values.index(item[0][1]))):
            strata = [np.array(list(s.scores(study.optimize).values())) for s in chosen]
            color = plt.cm.viridis_r(0.15 + 0.75 * values.index(x) / max(1, len(values) - 1))
            ax.plot(taus, performance_profile(strata, taus), color=color,
                    label=f"{prefix + ' ' if prefix else ''}{knob}={x:g}" if knob != "(single setting)" else prefix or algorithm)
            if sum(len(v) for v in strata) >= 2:
                resampled = np.array([performance_profile([v[rng.integers(0, len(v), len(v))] for v in strata if len(v)], taus)
                                      for _ in range(1000)])
                low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
                ax.fill_between(taus, low, high, color=color, alpha=0.15)
        ax.set_title(f"{algorithm}: {knob}" + (" (darker: stronger constraint)" if direction else ""))
        ax.set_xlabel(f"threshold tau on {study.optimize} {study.metric}")
        ax.set_ylabel("fraction of runs scoring > tau")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: performance profiles over seeds and datasets (diverged runs at the failure level)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_eop(study, curves: list[dict], path: Path, oracles: dict[tuple, float]) -> None:
    """One panel per (study, algorithm, dataset): the Expected Online Performance against the online budget k,
    for uniform selection and for each offline criterion, the online oracle's score (`oracles`, by panel) dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    panels: dict = defaultdict(lambda: defaultdict(list))
    for row in curves:
        panel = panels[(row["study"], row["algorithm"], row["dataset"])]
        panel[row["selection"]].append((row["k"], row["expected_best"]))
    several = len({key[0] for key in panels}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 4.5), squeeze=False)
    for ax, ((study_name, algorithm, dataset), lines) in zip(axes[0], panels.items()):
        for n, (name, points) in enumerate(lines.items()):
            ks, expected = zip(*points)
            ax.plot(ks, expected, "o-" if name != "random" else "-", color=f"C{n % 10}", ms=3,
                    label="uniform at random, with replacement (exact)" if name == "random" else f"top k by {name}")
        oracle = oracles[(study_name, algorithm, dataset)]
        ax.axhline(oracle, color="grey", lw=0.8, ls="--", label="online oracle (all settings tried)")
        ax.set_title(f"{study_name + ': ' if several else ''}{algorithm} on {dataset}")
        ax.set_xlabel("online budget k (settings evaluated in the test environment)")
        ax.set_ylabel(f"expected best mean {study.optimize} {study.metric}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: Expected Online Performance (Kurenkov & Kolesnikov 2022), diverged seeds at the "
                 f"failure level", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


BANDIT_LABELS = {"ucb": "UCB bandit over the policies", "round_robin": "round-robin (uniform)",
                 "fqe_top_k_ucb": "FQE's top {top_k}, then UCB among them"}


def plot_bandit(study, rows: list[dict], path: Path) -> None:
    """One panel per (study, algorithm, dataset): the expected true score of the policy each method would deploy
    against the online episodes spent (log x, as Unifloral's plots), with its 95% CI as a band; guides: the best
    arm of a subsample (what unlimited episodes find), the mean arm (a random pick) and FQE's top arm (no episode)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        panels[(row["study"], row["algorithm"], row["dataset"])][row["method"]].append(row)
    several = len({key[0] for key in panels}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 5.5 * len(panels)), 4.5), squeeze=False)
    for ax, ((study_name, algorithm, dataset), methods) in zip(axes[0], panels.items()):
        for n, (method, points) in enumerate(methods.items()):
            episodes = [p["episodes"] for p in points]
            ax.plot(episodes, [p["expected_score"] for p in points], color=f"C{n % 10}",
                    label=BANDIT_LABELS[method].format(top_k=points[0]["top_k"]))
            ax.fill_between(episodes, [p["ci_low"] for p in points], [p["ci_high"] for p in points],
                            color=f"C{n % 10}", alpha=0.2)
        first = next(iter(methods.values()))[0]
        ax.axhline(first["oracle"], color="grey", lw=0.9, ls="--",
                   label=f"oracle: the best of {first['subsample']} policies (unlimited episodes)")
        ax.axhline(first["random_arm"], color="grey", lw=0.9, ls=":", label="random: a policy picked blind")
        if math.isfinite(first["fqe_pick"]):
            ax.axhline(first["fqe_pick"], color="C2", lw=0.9, ls="-.", label="FQE's top policy (no episode)")
        ax.set_xscale("log")
        ax.set_title(f"{study_name + ': ' if several else ''}{algorithm} on {dataset} ({first['arms']} policies"
                     + (f", {first['left_out']} without recorded episodes left out" if first["left_out"] else "") + ")",
                     fontsize=9)
        ax.set_xlabel("online episodes spent choosing")
        ax.set_ylabel(f"expected true {study.metric.removesuffix('_best')}\nof the deployed policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: choosing a trained policy with a counted online budget (the bandit protocol of "
                 f"Jackson et al. 2025)\nmean over repeats and 95% bootstrap CI; diverged policies at the failure "
                 f"level", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _panels(rows: list[dict]) -> dict:
    """{(algorithm, knob): {line label: [(x, row), ...]}}: one panel per numeric knob that varies within an
    algorithm's settings, one line per dataset and setting of the algorithm's other knobs."""
    names = knob_names(rows)
    panels: dict = {}
    by_algorithm: dict = defaultdict(list)
    for row in rows:
        by_algorithm[row["algorithm"]].append(row)
    for algorithm, group in by_algorithm.items():
        knobs = sorted(k for k in names if any(k in r for r in group))
        varying = [k for k in knobs if len({json.dumps(r.get(k)) for r in group}) > 1
                   and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in group)]
        for knob in varying or [None]:
            lines: dict = defaultdict(list)
            for row in group:
                others = ", ".join(f"{k}={row.get(k)}" for k in knobs if k != knob and k in row and
                                   len({json.dumps(r.get(k)) for r in group}) > 1)
                label = (f"{row['study']}: " if "study" in row else "") + row["dataset"] + (f" [{others}]" if others else "")
                lines[label].append((row.get(knob, 0.0) if knob else 0.0, row))
            panels[(algorithm, knob or "(single setting)")] = dict(lines)
    return panels


def _log_spaced(xs: list[float]) -> bool:
    """A grid of three or more positive values spanning a factor of ten or more, closer to evenly spaced in
    log than in linear terms."""
    xs = np.array(sorted(set(xs)), dtype=float)
    if len(xs) < 3 or xs.min() <= 0 or xs.max() / xs.min() < 10:
        return False
    def unevenness(v):
        steps = np.diff(v)
        return steps.std() / steps.mean()
    return unevenness(np.log(xs)) < unevenness(xs)


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG at `path`, written whole (atomic_fs.write_atomic): never a partial image, never through
    a link planted at `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())
