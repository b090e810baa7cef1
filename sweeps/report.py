"""Read a study's results back: one row per member run, sensitivity tables and plots, best configs.

Everything is read from Tune's files under the study folder (params.json and result.json of each trial),
the source of truth whether or not W&B was reachable.
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .run import STUDY_FILE, apply_sampled, trial_train_config
from .study import StudyError, load_study

# Two-sided 95% Student-t quantiles by degrees of freedom: the CI over a handful of seeds is wide.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass
class MemberRun:
    algorithm: str
    dataset: str
    knobs: dict            # the study's axis values for this member, seed excluded
    seed: int
    last: float            # the study metric at the last evaluation
    best: float            # the best evaluation so far of that metric
    q_overestimation: float
    diverged: bool
    iterations: int
    trial_config: dict     # the trial's TrainConfig dict
    member: dict           # this member's entry of trial_config["members"]

    def score(self, optimize: str) -> float:
        return self.best if optimize == "best" else self.last


def collect(folder: str | Path) -> tuple[object, list[MemberRun]]:
    """The study and one MemberRun per member of every trial that reported at least once."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / STUDY_FILE).is_file():
        raise StudyError(f"{folder} is not a study folder (no {STUDY_FILE}); give <storage>/<study name>")
    study = load_study(folder / STUDY_FILE)
    runs = []
    for params_file in sorted(folder.glob("*/params.json")):
        results_file = params_file.with_name("result.json")
        if not results_file.is_file() or results_file.stat().st_size == 0:
            continue
        trial = apply_sampled(json.loads(params_file.read_text()))
        results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
        config = trial_train_config(trial)
        packed = len(config["members"]) > 1
        point = trial["study"]["point"]
        for k, member in enumerate(config["members"]):
            prefix = f"member_{k}/" if packed else ""

            def value(row: dict, key: str) -> float:
                found = row.get(prefix + key)
                return float("nan") if found is None else float(found)
            history = np.array([value(r, study.metric) for r in results])
            finite = history[np.isfinite(history)]
            best = (finite.max() if study.mode == "max" else finite.min()) if len(finite) else float("nan")
            knobs = {**{k2: v for k2, v in point.items() if k2 not in ("seed", "sample")},
                     **{k2: v for k2, v in member.items() if k2 != "seed"}}
            runs.append(MemberRun(config["algorithm"], config["dataset"], knobs, int(member.get("seed", 0)),
                                  float(history[-1]), float(best), value(results[-1], "eval/q_overestimation"),
                                  bool(value(results[-1], "diverged") > 0) if packed else
                                  bool(results[-1].get("members_diverged", 0)), len(results), config, member))
    if not runs:
        raise StudyError(f"{folder} has no trial results yet; run or resume the study first")
    return study, runs


def summarize(study, runs: list[MemberRun]) -> list[dict]:
    """Mean and 95% CI over seeds of the last and best metric, per (algorithm, dataset, knob setting)."""
    groups: dict[tuple, list[MemberRun]] = defaultdict(list)
    for run in runs:
        groups[(run.algorithm, run.dataset, json.dumps(run.knobs, sort_keys=True))].append(run)
    rows = []
    for (algorithm, dataset, knobs), members in sorted(groups.items()):
        row = {"algorithm": algorithm, "dataset": dataset, **json.loads(knobs), "seeds": len(members),
               "diverged": sum(m.diverged for m in members)}
        for name, values in (("last", [m.last for m in members]), ("best", [m.best for m in members]),
                             ("q_overestimation", [m.q_overestimation for m in members])):
            mean, half_width = mean_ci(values)
            row[f"{name}_mean"], row[f"{name}_ci95"] = mean, half_width
        rows.append(row)
    return rows


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval over the finite values (nan if none)."""
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    df = len(values) - 1
    # Between tabulated degrees of freedom take the next smaller one (a slightly wider interval).
    t = T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def write_report(folder: str | Path) -> dict[str, Path]:
    """report.md, report.csv and sensitivity.png in `<folder>/report/`; returns their paths."""
    folder = Path(folder).expanduser().resolve()
    study, runs = collect(folder)
    rows = summarize(study, runs)
    out = folder / "report"
    out.mkdir(exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {study.name}", "", study.description or "", "",
             f"Metric `{study.metric}` ({study.mode}), mean ± 95% CI over seeds; the study optimizes the "
             f"**{study.optimize}** evaluation. `q_overestimation` is the learned Q minus the Monte-Carlo return "
             f"at the visited states.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_sensitivity(study, rows, out / "sensitivity.png")
    return {"markdown": out / "report.md", "csv": out / "report.csv", "plot": out / "sensitivity.png"}


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.3g}"
    return str(value)


def plot_sensitivity(study, rows: list[dict], path: Path) -> None:
    """Metric (last and best) and Q overestimation against the swept knob, one line per algorithm/dataset
    and setting of the other knobs; error bars are the 95% CIs over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_return, ax_q) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (label, knob), points in _series(rows).items():
        xs = np.array([p[0] for p in points], dtype=float)
        order = np.argsort(xs)
        for ax, key, style in ((ax_return, "last", "-o"), (ax_return, "best", "--^"), (ax_q, "q_overestimation", "-o")):
            means = np.array([p[1][f"{key}_mean"] for p in points])[order]
            cis = np.nan_to_num(np.array([p[1][f"{key}_ci95"] for p in points])[order])
            ax.errorbar(xs[order], means, yerr=cis, fmt=style, capsize=3,
                        label=f"{label} ({key})" if ax is ax_return else label)
        ax_return.set_xlabel(knob)
        ax_q.set_xlabel(knob)
        if len(xs) > 2 and xs.min() > 0 and xs.max() / xs.min() > 20:
            ax_return.set_xscale("log")
            ax_q.set_xscale("log")
    ax_return.set_ylabel(study.metric)
    ax_return.set_title(f"{study.name}: {study.metric} vs constraint strength")
    ax_q.set_ylabel("Q - Monte-Carlo return")
    ax_q.axhline(0.0, color="grey", lw=0.8)
    ax_q.set_title("Q overestimation")
    for ax in (ax_return, ax_q):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(rows: list[dict]) -> dict:
    """{(line label, x knob name): [(x, row), ...]}: x is the first numeric knob that varies in the group."""
    fixed = {"algorithm", "dataset", "seeds", "diverged"}
    series: dict = defaultdict(list)
    by_group: dict = defaultdict(list)
    for row in rows:
        by_group[(row["algorithm"], row["dataset"])].append(row)
    for (algorithm, dataset), group in by_group.items():
        knobs = [k for k in group[0] if k not in fixed and not k.endswith(("_mean", "_ci95"))]
        varying = [k for k in knobs if len({json.dumps(r.get(k)) for r in group}) > 1
                   and all(isinstance(r.get(k), (int, float)) for r in group)]
        x = varying[0] if varying else None
        for row in group:
            others = ", ".join(f"{k}={row.get(k)}" for k in varying[1:])
            label = f"{algorithm} {dataset}" + (f" [{others}]" if others else "")
            series[(label, x or "(single setting)")].append((row.get(x, 0.0) if x else 0.0, row))
    return series


def export_best(folder: str | Path) -> list[Path]:
    """The best knob setting per (algorithm, dataset), by the mean over seeds of the study's metric (its
    last or best evaluation, as the study says), as a standalone YAML for `launch.py train --config`."""
    folder = Path(folder).expanduser().resolve()
    study, runs = collect(folder)
    groups: dict[tuple, list[MemberRun]] = defaultdict(list)
    for run in runs:
        groups[(run.algorithm, run.dataset, json.dumps(run.knobs, sort_keys=True))].append(run)
    best: dict[tuple, tuple[float, list[MemberRun]]] = {}
    sign = 1.0 if study.mode == "max" else -1.0
    for (algorithm, dataset, _), members in groups.items():
        score = mean_ci([m.score(study.optimize) for m in members])[0]
        if not math.isfinite(score):
            continue
        key = (algorithm, dataset)
        if key not in best or sign * score > sign * best[key][0]:
            best[key] = (score, members)
    out = folder / "best"
    out.mkdir(exist_ok=True)
    written = []
    for (algorithm, dataset), (score, members) in sorted(best.items()):
        members = sorted(members, key=lambda m: m.seed)
        config = {k: v for k, v in members[0].trial_config.items() if k != "members"}
        config["algo"] = {**config.get("algo", {}), **{k: v for k, v in members[0].knobs.items()
                                                        if not k.startswith("train.")}}
        for key, value in members[0].knobs.items():
            if key.startswith("train."):
                config[key[6:]] = value
        config["members"] = [{"seed": m.seed} for m in members]
        header = (f"# Best {algorithm} on {dataset} in study {study.name}: mean {study.optimize} {study.metric} = "
                  f"{score:.4g} over seeds {[m.seed for m in members]}.\n"
                  f"# Re-run: python launch.py train --config {{this file}}\n")
        path = out / f"{algorithm}-{dataset.strip('/').replace('/', '_')}.yaml"
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written
