"""`launch.py report`: report.md and its CSVs for one study, or several of the same metric side by side.

report.md states, per setting, summary.py's statistics (mean and IQM over seeds with 95% bootstrap CIs, diverged
seeds at the failure level), the winners and how far the seeds let them be told apart, the settings pooled across
datasets, offline model selection against the online oracle with Expected Online Performance, and the bandit
protocol's choice with a counted online budget (selection.py). report.csv, aggregate.csv, selection.csv, eop.csv
and bandit.csv hold the same numbers, a column each; the figures beside them are plots.py's. Everything comes from
results.py's reading of the study folders; nothing here starts Ray.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from .atomic_fs import refuse_links, write_atomic
from .plots import plot_bandit, plot_eop, plot_learning_curves, plot_profiles, plot_published, plot_sensitivity
from .reference import published_columns
from .results import collect_studies
from .selection import bandit, ranking, selection
from .study import SELECTION_METRICS, StudyError
from .summary import SUMMARY_COLUMNS, aggregate, knob_names, summarize, winner_comparison


def write_report(folders, out: str | Path | None = None) -> dict[str, Path]:
    """report.md, report.csv, sensitivity.png and learning_curves.png for one study folder (in
    `<folder>/report/`) or several of the same metric side by side (in `out`, by default
    `report-<name>+<name>/` beside the first); where there are several datasets or studies, also their
    comparison across datasets (aggregate.csv and a second table); offline model selection against the online
    oracle (selection.csv) and Expected Online Performance (eop.csv, eop.png), see `selection`; the bandit
    protocol's curves (bandit.csv, and bandit.png where a panel has arms), see `bandit`. Returns the paths."""
    folders = [Path(f).expanduser().resolve() for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
    study, runs = collect_studies(folders)
    rows = summarize(study, runs)
    budgets = {(m.algorithm, m.dataset): m.trial_config.get("total_updates") for m in runs}
    for row in rows:
        row.update(published_columns(study.reference, row, budgets.get((row["algorithm"], row["dataset"]))))
    if out:
        out = Path(out).expanduser().resolve()
    elif len(folders) == 1:
        out = folders[0] / "report"
        refuse_links(out, folders[0], StudyError)        # a planted report/ link must not redirect the writes
    else:
        out = folders[0].parent / ("report-" + "+".join(f.name for f in folders))
        refuse_links(out, folders[0].parent, StudyError)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    _write_csv(out / "report.csv", columns, rows)
    levels = sorted({(m.dataset, m.failure, m.failure_rule) for m in runs})
    # report.md: one cell per statistic with its CI; report.csv has every column apart.
    table = [(c, c, None) for c in columns if c in ("study", "algorithm", "dataset", *knob_names(rows), *SUMMARY_COLUMNS)
             and c != "failure_level"]
    table += [("last: mean [95% CI]", "last_mean", "last_mean_ci"), ("last: IQM [95% CI]", "last_iqm", "last_iqm_ci"),
              ("last: mean of survivors only", "last_mean_survivors", None),
              ("best: mean [95% CI]", "best_mean", "best_mean_ci"), ("best: IQM [95% CI]", "best_iqm", "best_iqm_ci"),
              ("Q overestimation, survivors [95% CI]", "q_overestimation_mean_survivors", "q_overestimation_ci"),
              ("updates/s", "updates_per_second", None)]
    lines = [f"# {study.name}", "", study.description or "", "",
             f"Metric `{study.metric}` ({study.mode}); the study optimizes the **{study.optimize}** evaluation. "
             f"Per setting: `seeds` reported, `finished` their whole budget, `diverged` (`diverged_seeds`: "
             f"seed@iteration), `used` in the statistics. A diverged seed scores the failure level from the "
             f"iteration it diverged on, in every mean, IQM, CI and ranking (failure level: "
             + "; ".join(f"{d}: {v:.4g}, {rule}" for d, v, rule in levels) +
             "). Means and IQMs (interquartile means) carry 95% percentile-bootstrap CIs over seeds "
             "(`[nan, nan]`: fewer than two seeds, no CI); the mean of survivors only is shown for reference "
             "and ranks nothing. Q overestimation is the learned Q minus the Monte-Carlo return at the visited "
             "states, over the survivors. updates/s: gradient updates per second of the setting's trials (each "
             "updates its whole packed population at once), averaged over their evaluations.", "",
             "| " + " | ".join(title for title, _, _ in table) + " |", "|" + "---|" * len(table)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) + (f" [{_cell(row[ci + '_low'])}, {_cell(row[ci + '_high'])}]"
                                                             if ci else "") for _, key, ci in table) + " |")
    lines += _published_lines(study, rows, budgets)
    lines += ["", "## Winners", "",
              "Per algorithm and dataset, the setting of the highest mean (diverged seeds at the failure level), "
              "as `export` writes it by default, and how far the seeds let it be told apart from the rest. It is "
              "chosen with the test environment (online oracle)"
              + (", and so is each seed's score: `optimize: best` takes its best evaluation during training, a "
                 "checkpoint picked by test-environment returns, which no offline user can do"
                 if study.optimize == "best" else "")
              + "; Expected online performance (and Offline model selection, where the members reported `ope/*` "
                "metrics) show what choosing without it costs.", ""]
    for (study_name, algorithm, dataset), (score, winner, others) in ranking(study, runs).items():
        lines.append(f"- **{study_name + ' ' if len(folders) > 1 else ''}{algorithm} on {dataset}: {winner.label()}**: "
                     + "; ".join(winner_comparison(study, winner, score, others)))
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "plot": out / "sensitivity.png",
             "curves": out / "learning_curves.png"}
    if len(folders) > 1 or len({m.dataset for m in runs}) > 1:
        pooled, comparisons = aggregate(study, runs)
        lines += ["", "## Across datasets", "",
                  f"Per setting, the {study.optimize} `{study.metric}` of every (dataset, seed), diverged seeds at "
                  f"the failure level: IQM and mean with 95% stratified-bootstrap CIs (seeds resampled within each "
                  f"dataset). \"best setting per dataset\" (an algorithm with several settings) picks each dataset's "
                  f"best mean on the same seeds, so it is optimistic.", ""]
        if pooled:
            _write_csv(out / "aggregate.csv", list(pooled[0]), pooled)
            paths["aggregate"] = out / "aggregate.csv"
            lines += ["| study | algorithm | setting | datasets | used | diverged | IQM [95% CI] | mean [95% CI] |",
                      "|" + "---|" * 8]
            lines += [f"| {r['study']} | {r['algorithm']} | {r['setting']} | {r['datasets']} | {r['used']} | "
                      f"{r['diverged']} | {_cell(r['iqm'])} [{_cell(r['iqm_ci_low'])}, {_cell(r['iqm_ci_high'])}] | "
                      f"{_cell(r['mean'])} [{_cell(r['mean_ci_low'])}, {_cell(r['mean_ci_high'])}] |" for r in pooled]
        lines += [""] + [f"- {line}" for line in comparisons]
    chosen, curves = selection(study, runs)
    lines += _selection_lines(study, chosen, curves, several=len(folders) > 1)
    budget = bandit(study, runs)
    lines += _bandit_lines(study, budget, several=len(folders) > 1)
    for key, table in (("selection", chosen), ("eop", curves), ("bandit", budget)):
        paths[key] = out / f"{key}.csv"
        _write_csv(paths[key], list(table[0]) if table else ["study", "algorithm", "dataset"], table)
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    if curves:
        paths["eop_plot"] = out / "eop.png"
        plot_eop(study, curves, paths["eop_plot"], {(row["study"], row["algorithm"], row["dataset"]): row["score"]
                                                    for row in chosen if row["criterion"] == "online"})
    if budget:
        paths["bandit_plot"] = out / "bandit.png"
        plot_bandit(study, budget, paths["bandit_plot"])
    plot_sensitivity(study, rows, runs, paths["plot"])
    plot_learning_curves(study, rows, runs, paths["curves"])
    if any("published_value" in row for row in rows):
        paths["published_plot"] = out / "published.png"
        plot_published(study, rows, paths["published_plot"])
    if study.mode == "max":
        paths["profiles"] = out / "profiles.png"
        plot_profiles(study, rows, runs, paths["profiles"])
    return paths


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """`rows` as a CSV file with a header, written whole (atomic_fs.write_atomic)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def _published_lines(study, rows: list[dict], budgets: dict) -> list[str]:
    """report.md's section putting the study's `reference:` values beside the measured scores (none without one)."""
    matched = [row for row in rows if "published_value" in row]
    if not study.reference:
        return []
    score = study.optimize
    lines = ["", "## Beside the published scores", "",
             f"The study's `reference:` entries next to the setting each was published for: the measured {score} "
             f"`{study.metric}` (IQM and mean over seeds with 95% bootstrap CIs, diverged seeds at the failure level), "
             f"Q overestimation and updates/s, and the published value with its source. **A published value marked "
             f"\"different budget\" was trained for another number of updates than this study** (usually 1M against "
             f"a CPU budget of a few thousand): it shows where the curve is headed, not what this budget should reach. "
             f"`published.png` draws the table.",
             "", "| algorithm | dataset | setting | measured IQM [95% CI] | measured mean [95% CI] | Q overestimation | "
             "updates/s | published | published on | published budget | source |", "|" + "---|" * 11]
    knobs = sorted(knob_names(rows))
    for row in matched:
        setting = ", ".join(f"{k}={row[k]}" for k in knobs if k in row) or "-"
        budget = row["published_budget"]
        budget_cell = (f"{budget:,} updates" if budget != "" else "not given") + (
            f" (different budget: this study {budgets.get((row['algorithm'], row['dataset'])):,})"
            if row["published_different_budget"] else "")
        lines.append(f"| {row['algorithm']} | {row['dataset']} | {setting} | {_cell(row[score + '_iqm'])} "
                     f"[{_cell(row[score + '_iqm_ci_low'])}, {_cell(row[score + '_iqm_ci_high'])}] | "
                     f"{_cell(row[score + '_mean'])} [{_cell(row[score + '_mean_ci_low'])}, "
                     f"{_cell(row[score + '_mean_ci_high'])}] | {_cell(row['q_overestimation_mean_survivors'])} | "
                     f"{_cell(row['updates_per_second'])} | {_cell(row['published_value'])} | "
                     f"{row['published_dataset'] or '-'} | {budget_cell} | {row['published_source']} |")
    unmatched = [entry for entry in study.reference if not any(entry.matches(row) for row in rows)]
    datasets = {d for part in study.parts for d in part.datasets}
    lines += [f"- no setting was measured for the entry {entry.algorithm} on {entry.dataset}"
              + (f" at {entry.knob[0]}={entry.knob[1]:g}" if entry.knob else "") + f" ({entry.source})"
              for entry in unmatched if entry.dataset in datasets]
    elsewhere = sum(entry.dataset not in datasets for entry in unmatched)
    if elsewhere:       # a study narrowed to some of its datasets ('datasets=[hopper/medium-v0]'): one line, not a list
        lines.append(f"- {elsewhere} entr{'y' if elsewhere == 1 else 'ies'} for datasets this study did not run "
                     f"({', '.join(sorted({e.dataset for e in unmatched} - datasets))}) left out")
    return lines


def _selection_lines(study, chosen: list[dict], curves: list[dict], several: bool) -> list[str]:
    """report.md's sections on offline model selection (only where some member reported a criterion) and on
    Expected Online Performance."""
    score = f"mean {study.optimize} `{study.metric}`"
    flipped = "the other way round for a metric to minimize, " if study.mode == "min" else ""
    lines = []
    if any(row["criterion"] != "online" for row in chosen):
        lines += ["", "## Offline model selection", "",
                  f"Which setting each criterion picks per algorithm and dataset, and what that costs in the test "
                  f"environment. **online**: the Winners' setting, the highest {score}, **chosen with the test "
                  f"environment (online oracle)**. The others use the dataset alone, each member's last reported "
                  f"value averaged over the setting's seeds (a diverged seed at the criterion's worst value among "
                  f"the dataset's survivors): "
                  + ", ".join(f"**{name}** (`{key}`, {'higher' if mode == 'max' else 'lower'} is better)"
                              for name, (key, mode) in SELECTION_METRICS.items())
                  + f". Score: the picked setting's {score} (diverged seeds at the failure level). Regret: the "
                    f"online pick's score minus the picked one's ({flipped}>= 0); regret %: as a share of the "
                    f"online pick's score minus the worst setting's (0%: the oracle's pick, 100%: the worst). "
                    f"Spearman rho: the rank correlation over members between the criterion and the score, both "
                    f"oriented so higher is better (td_error negated; +1: the criterion ranks the members as the "
                    f"test environment does), n: members with both.", "",
                  "| " + ("study | " if several else "") + "algorithm | dataset | criterion | picks | criterion "
                  "value | score | regret | regret % | Spearman rho (n) |", "|" + "---|" * (9 + several)]
        for row in chosen:
            name = ("online (chosen with the test environment)" if row["criterion"] == "online"
                    else f"{row['criterion']} (`{row['metric']}`)")
            rho = "-" if row["criterion"] == "online" else f"{_cell(row['spearman'])} (n={row['spearman_n']})"
            lines.append("| " + (f"{row['study']} | " if several else "") + f"{row['algorithm']} | {row['dataset']} | "
                         f"{name} | {row['setting']} | {_cell(row['criterion_value'])} | {_cell(row['score'])} | "
                         f"{_cell(row['regret'])} | {_cell(row['regret_pct'])}% | {rho} |")
    lines += ["", "## Expected online performance", "",
              f"Kurenkov & Kolesnikov 2022, \"Showing Your Offline Reinforcement Learning Work: Online Evaluation "
              f"Budget Matters\" (ICML): the expected best {score} of a setting when only k of the N settings can "
              f"be evaluated in the test environment and the best of those is kept. **random**: the k drawn "
              f"uniformly with replacement, as the authors' eop.py (after Dodge et al. 2019; exact, by order "
              f"statistics: even k = N may miss the best); **top k by** a criterion: the k distinct settings the "
              f"offline criterion ranks highest (ties entered in random order), which reach the online oracle's "
              f"pick at k = N. A criterion whose row lies below random at small k costs more test evaluations "
              f"than picking blind. Curves: eop.png; every k: eop.csv."
              + ("" if any(row["criterion"] != "online" for row in chosen) else
                 " No member reported an offline criterion (`ope/*` metrics), so only random is shown.")]
    panels: dict = defaultdict(lambda: defaultdict(dict))
    for row in curves:
        panels[(row["study"], row["algorithm"], row["dataset"])][row["selection"]][row["k"]] = row["expected_best"]
    for (study_name, algorithm, dataset), by_selection in panels.items():
        budgets = _budgets(len(by_selection["random"]))
        lines += ["", f"**{study_name + ' ' if several else ''}{algorithm} on {dataset}** "
                      f"(N = {len(by_selection['random'])} settings)", "",
                  "| selection | " + " | ".join(f"k={k}" for k in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
        lines += [f"| {'random' if name == 'random' else 'top k by ' + name} | "
                  + " | ".join(_cell(expected[k]) for k in budgets) + " |" for name, expected in by_selection.items()]
    return lines


def _bandit_lines(study, rows: list[dict], several: bool) -> list[str]:
    """report.md's section on choosing with a counted online budget: the bandit curves at a few budgets."""
    lines = ["", "## Choosing with a counted online budget (bandit)", "",
             "Jackson et al. 2025, \"A Clean Slate for Offline Reinforcement Learning\" (the Unifloral library's "
             "evaluation.py): the online budget counted in **episodes**. The arms are the trained policies, every seed "
             "of every setting, each with the returns of its last evaluation's episodes (a diverged one at the failure "
             "level). Each of 1000 repeats draws a subsample of the policies and spends up to 200 episodes on them, "
             "each episode's return drawn from the pulled policy's recorded ones; after each episode it would deploy "
             "the policy of the highest mean return so far. Shown: the expected true score of that policy (the mean "
             "of all its recorded episodes) [95% bootstrap CI over the repeats]. **ucb**: a UCB bandit (alpha 2), "
             "as the paper; **round_robin**: every policy in turn; **fqe_top_k_ucb**: FQE first (no episode), then "
             "the bandit among FQE's top k. Guides: the oracle (the best policy of a subsample, what unlimited "
             "episodes find), a random policy (the mean one) and FQE's top policy (no episode). A policy is one seed: "
             "its score includes that seed's luck, which re-training the setting does not repeat (so the oracle here "
             "lies above the Winners' best setting mean), and it is the final policy whatever the study optimizes. "
             "Curves: bandit.png; every budget: bandit.csv."]
    if not rows:
        return lines + ["", "No bandit curve: " + ("the study's metric is not a return to maximize."
                                                   if study.mode != "max" or study.metric.removesuffix("_best")
                                                   not in ("eval/return", "eval/normalized_return") else
                                                   "no member recorded its last evaluation's episode returns "
                                                   "(`train.final_eval_episodes`; a trial stopped early records none).")]
    panels: dict = defaultdict(dict)
    for row in rows:
        panels[(row["study"], row["algorithm"], row["dataset"])].setdefault(row["method"], {})[row["episodes"]] = row
    for (study_name, algorithm, dataset), methods in panels.items():
        first = next(iter(next(iter(methods.values())).values()))
        budgets = _budgets(len(next(iter(methods.values()))))
        guides = (f"oracle {_cell(first['oracle'])}, random {_cell(first['random_arm'])}"
                  + (f", FQE's top policy {_cell(first['fqe_pick'])}" if math.isfinite(first["fqe_pick"]) else ""))
        lines += ["", f"**{study_name + ' ' if several else ''}{algorithm} on {dataset}** ({first['arms']} policies, "
                      f"{first['recorded']} recorded episodes each, subsamples of {first['subsample']}"
                      + (f"; {first['left_out']} members without recorded episodes left out" if first["left_out"]
                         else "") + f"; {guides})", "",
                  "| method | " + " | ".join(f"{t} ep." for t in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
        for method, by_budget in methods.items():
            name = f"fqe top {first['top_k']}, then ucb" if method == "fqe_top_k_ucb" else method
            lines.append(f"| {name} | " + " | ".join(
                f"{_cell(by_budget[t]['expected_score'])} [{_cell(by_budget[t]['ci_low'])}, "
                f"{_cell(by_budget[t]['ci_high'])}]" for t in budgets) + " |")
    return lines


def _cell(value) -> str:
    if value is None:                   # a knob this row's algorithm does not have
        return ""
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.3g}"
    return str(value)


def _budgets(n: int) -> list[int]:
    """The budgets k a table shows: every one up to 10 settings, then 1, 2, 3, 5, 10, 20, 50, ... and N."""
    if n <= 10:
        return list(range(1, n + 1))
    steps = [k for decade in (1, 10, 100, 1000, 10_000) for k in (decade, 2 * decade, 5 * decade)] + [3]
    return sorted({k for k in steps if k < n} | {n})
