"""The report and the export on synthetic study folders (no Ray, no training): diverged seeds scored as
failures, counts in every row, bootstrap statistics against hand computations, one panel per knob."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_sweeps.algorithms import ALGORITHMS
from offline_sweeps.algorithms.trainer import flatten_members, split_members
from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.failure import random_level
from offline_sweeps.sweeps.plots import _log_spaced, _panels
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect, load_results
from offline_sweeps.sweeps.statistics import (bootstrap_ci, iqm, performance_profile, probability_of_improvement,
                                              probability_of_improvement_across, stratified_bootstrap_ci)
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study import STUDY_FILE
from offline_sweeps.sweeps.study_yaml import parse_study
from offline_sweeps.sweeps.summary import summarize

DATASET = "pendulum/medium-v0"


def write_study(folder: Path, values: dict, curves: dict, diverged: dict = {}, iterations: int = 3) -> Path:
    """A study folder as Tune leaves it: study.yaml, and per trial params.json and result.json, whose rows
    are what `flatten_members` makes (trial n updates at 100 (n + 1) updates/s). `curves[(knob value, seed)]`: the normalized return per iteration
    (the raw return is 10 * normalized - 1000, so the random level is -1000); `diverged[(knob value, seed)]`:
    the iteration from which the member is diverged (nan metrics)."""
    study = parse_study({"name": "synthetic", "datasets": [DATASET], "pack": ["seed"], "storage": str(folder.parent),
                         "train": {"eval_every": 10, "total_updates": 10 * iterations},
                         "wandb": {"enabled": False}, **values})
    folder.mkdir(parents=True)
    (folder / STUDY_FILE).write_text(yaml.safe_dump(study.source))
    for n, trial in enumerate(study.trials()):
        knob = next(iter(trial["study"]["point"].values()))
        rows = []
        for i in range(1, iterations + 1):
            dead = np.array([diverged.get((knob, m["seed"]), math.inf) <= i for m in trial["members"]])
            normalized = np.array([curves[(knob, m["seed"])][i - 1] for m in trial["members"]], dtype=float)
            normalized[dead] = np.nan
            per_member = {"eval/normalized_return": normalized, "eval/return": 10 * normalized - 1000,
                          "eval/q_overestimation": np.where(dead, np.nan, 5.0), "eval/q_mean": normalized + 5,
                          "diverged": dead.astype(float)}
            rows.append({**flatten_members(per_member), "updates": 10 * i, "updates_per_second": 100.0 * (n + 1),
                         "training_iteration": i,
                         "members_diverged": int(dead.sum()), "done": i == iterations})
        trial_dir = folder / f"trial_{n:02d}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"trial": trial}))
        (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def iql_study(tmp_path, curves, diverged={}, **values) -> Path:
    grid = sorted({knob for knob, _ in curves})
    seeds = sorted({seed for _, seed in curves})
    return write_study(tmp_path / "study", {"algorithm": "iql", "seeds": seeds,
                                            "search": {"expectile": {"grid": grid}}, **values}, curves, diverged)


def flat(value, seeds=(0, 1, 2), iterations=3):
    return {seed: [value] * iterations for seed in seeds}


def curves_of(settings: dict) -> dict:
    return {(knob, seed): curve for knob, by_seed in settings.items() for seed, curve in by_seed.items()}


def test_a_setting_with_diverged_seeds_never_outranks_a_stable_one_of_equal_survivors_mean(tmp_path):
    # The case: expectile 0.9 keeps one survivor at 80; 0.7 is stable at 80 on every seed.
    folder = iql_study(tmp_path, curves_of({0.7: flat(80.0), 0.9: flat(80.0)}), {(0.9, 1): 2, (0.9, 2): 2})
    study, runs = collect(folder)
    rows = {row["expectile"]: row for row in summarize(study, runs)}
    assert (rows[0.9]["seeds"], rows[0.9]["finished"], rows[0.9]["diverged"], rows[0.9]["used"]) == (3, 3, 2, 3)
    assert rows[0.9]["last_mean"] == pytest.approx(80 / 3)               # the diverged seeds score 0
    assert rows[0.9]["last_mean_survivors"] == pytest.approx(80.0)      # the plain mean, labelled so
    assert rows[0.9]["best_mean"] == pytest.approx(80.0)                # before diverging they scored 80
    assert rows[0.9]["diverged_seeds"] == "1@2 2@2"
    assert rows[0.7]["last_mean"] == pytest.approx(80.0) and rows[0.7]["diverged"] == 0
    config = yaml.safe_load(export_best(folder)[0].read_text())
    assert config["algo"]["expectile"] == 0.7


def test_report_csv_and_markdown_show_the_counts_and_the_failure_scoring(tmp_path):
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)}), {(0.9, 1): 2, (0.9, 2): 3})
    paths = write_report(folder)
    with open(paths["csv"], newline="") as handle:
        rows = {float(row["expectile"]): row for row in csv.DictReader(handle)}
    assert {k: rows[0.9][k] for k in ("seeds", "finished", "diverged", "used", "diverged_seeds")} == \
        {"seeds": "3", "finished": "3", "diverged": "2", "used": "3", "diverged_seeds": "1@2 2@3"}
    assert float(rows[0.9]["failure_level"]) == 0.0
    assert float(rows[0.9]["last_mean"]) == pytest.approx(80 / 3)
    assert float(rows[0.9]["last_mean_survivors"]) == pytest.approx(80.0)
    markdown = paths["markdown"].read_text()
    assert "| seeds | finished | diverged | used | diverged_seeds |" in markdown
    assert "failure level: pendulum/medium-v0: 0, the random-policy level" in markdown
    assert "| 26.7 [0, 80] |" in markdown and "| 80 |" in markdown     # mean [CI], survivors only
    winner = next(line for line in markdown.splitlines() if line.startswith("- **iql on"))
    assert winner.startswith("- **iql on pendulum/medium-v0: expectile=0.7**: mean last eval/normalized_return = 60")
    # Paired: 60 < 80 on seed 0, 60 > 0 (diverged) on seeds 1 and 2.
    assert "P(this beats the runner-up, expectile=0.9) = 0.667, 95% bootstrap CI [0, 1], paired over seeds" in winner
    assert paths["plot"].stat().st_size > 10_000


def test_export_header_names_the_winners_diverged_seeds_its_ci_and_the_settings_it_ties_with(tmp_path):
    # 0.5: 90, 90 and seed 2 diverged at iteration 3 (mean 60); 0.7: stable 55; 0.9: two of three diverged.
    curves = curves_of({0.5: flat(90.0), 0.7: flat(55.0), 0.9: flat(80.0)})
    folder = iql_study(tmp_path, curves, {(0.5, 2): 3, (0.9, 1): 2, (0.9, 2): 2})
    text = export_best(folder)[0].read_text()
    header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    assert yaml.safe_load(text)["algo"]["expectile"] == 0.5
    assert "mean last eval/normalized_return = 60" in header[1] and "95% bootstrap CI [0, 90]" in header[1]
    assert "3 seeds, 3 finished, 1 diverged, 3 used" in header[1]
    assert header[2] == "diverged (scored at the failure level 0): seed 2 (iteration 3)"
    # Paired over seeds 0, 1, 2: 90 > 55, 90 > 55, 0 < 55: P = 2/3, its bootstrap CI [0, 1] contains 0.5.
    assert header[3].startswith("P(this beats the runner-up, expectile=0.7) = 0.667, 95% bootstrap CI [0, 1], "
                                "paired over seeds [0, 1, 2]")
    assert header[4].endswith("from: expectile=0.7; expectile=0.9")


def test_raw_return_failures_score_the_random_policy_level_read_back_from_the_results(tmp_path):
    curves = curves_of({0.7: {0: [10, 20, 30], 1: [10, 20, 30]}, 0.9: {0: [10, 50, 50], 1: [10, 50, 50]}})
    folder = iql_study(tmp_path, curves, {(0.9, 1): 3}, metric="eval/return")
    study, runs = collect(folder)
    diverged = next(r for r in runs if r.diverged)
    assert diverged.failure == pytest.approx(-1000.0) and diverged.last == pytest.approx(-1000.0)
    assert random_level("eval/return", [(0.0, 100.0), (-1000.0, 0.0), (math.nan, 3.0)]) == pytest.approx(-1000.0)
    assert random_level("eval/normalized_return", []) == 0.0
    assert random_level("train/critic_loss", []) is None


def test_failure_level_drops_to_the_worst_value_seen_when_something_scored_below_random(tmp_path):
    curves = curves_of({0.7: {0: [-30, -5, -5], 1: [-30, -5, -5]}, 0.9: {0: [-30, -5, -5], 1: [-30, -5, -5]}})
    folder = iql_study(tmp_path, curves, {(0.9, 1): 3})
    study, runs = collect(folder)
    assert {r.failure for r in runs} == {-30.0}
    rows = {row["expectile"]: row for row in summarize(study, runs)}
    assert rows[0.9]["last_mean"] < rows[0.7]["last_mean"] == -5.0
    assert yaml.safe_load(export_best(folder)[0].read_text())["algo"]["expectile"] == 0.7


def test_a_ci_that_cannot_be_computed_is_missing_not_zero(tmp_path):
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0, seeds=(0,)), 0.9: flat(70.0, seeds=(0,))}))
    study, runs = collect(folder)
    for row in summarize(study, runs):
        assert math.isnan(row["last_mean_ci_low"]) and math.isnan(row["last_iqm_ci_high"])
    assert "| 60 [nan, nan] |" in write_report(folder)["markdown"].read_text()
    header = export_best(folder)[0].read_text()
    assert "CI [nan, nan]" in header and "from: expectile=0.7" in header


def test_bootstrap_ci_and_iqm_against_hand_computation():
    # The bootstrap mean of [0, 0, 0, 100] is 25 * Binomial(4, 1/4): P(0) = 81/256 > 2.5%, and
    # P(<= 50) = 243/256 < 97.5% <= P(<= 75) = 255/256: the percentile CI is [0, 75].
    assert bootstrap_ci([0, 0, 0, 100]) == pytest.approx((0.0, 75.0))
    assert bootstrap_ci([5.0]) == (pytest.approx(math.nan, nan_ok=True),) * 2
    assert bootstrap_ci([7.0, 7.0, 7.0]) == pytest.approx((7.0, 7.0))
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)         # mean of 3, 4, 5, 6
    assert iqm([0, 0, 0, 100]) == pytest.approx(0.0)
    assert iqm([1, 2, 10]) == pytest.approx(13 / 3)            # three seeds: nothing to trim
    # The bootstrap IQM against its exact distribution over all 256 equally likely resamples.
    resamples = np.array(np.meshgrid(*[[0, 0, 0, 100]] * 4)).reshape(4, -1).T
    exact = np.sort(iqm(resamples, axis=1))
    low, high = bootstrap_ci([0, 0, 0, 100], iqm)
    assert low == pytest.approx(np.quantile(exact, 0.025)) and high == pytest.approx(np.quantile(exact, 0.975))


def test_probability_of_improvement_against_hand_computation():
    # Paired over three shared seeds: 80 > 70, 60 < 65, 70 > 50: P = 2/3. Resampling the seeds, the count
    # of wins is Binomial(3, 2/3); P(0 wins) = 1/27 > 2.5% and P(3 wins) = 8/27 > 2.5%: CI [0, 1].
    result = probability_of_improvement({0: 80, 1: 60, 2: 70}, {0: 70, 1: 65, 2: 50})
    assert result["paired"] and result["seeds"] == [0, 1, 2]
    assert (result["p"], result["ci_low"], result["ci_high"]) == pytest.approx((2 / 3, 0.0, 1.0))
    # Lower is better in mode "min": the same seeds, the other way round.
    assert probability_of_improvement({0: 80, 1: 60, 2: 70}, {0: 70, 1: 65, 2: 50}, "min")["p"] == pytest.approx(1 / 3)
    # Ten shared seeds, all won: every resample wins every pair.
    always = probability_of_improvement({s: 2.0 for s in range(10)}, {s: 1.0 for s in range(10)})
    assert (always["p"], always["ci_low"], always["ci_high"]) == (1.0, 1.0, 1.0)
    # No two shared seeds: over all pairs, ties counting half: (1 > 2? 0) (1 > 0: 1) (3 > 2: 1) (3 > 0: 1) -> 3/4.
    unpaired = probability_of_improvement({0: 1.0, 1: 3.0}, {2: 2.0, 3: 0.0})
    assert not unpaired["paired"] and unpaired["p"] == pytest.approx(0.75)
    assert probability_of_improvement({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0})["p"] == 0.5


@pytest.mark.parametrize("members", [1, 3])
def test_split_members_inverts_flatten_members(members):
    per_member = {"eval/return": np.arange(members, dtype=float) + 1, "diverged": np.zeros(members)}
    result = {**flatten_members(per_member), "updates": 20, "training_iteration": 2, "node_id": "n"}
    split = split_members(result, members)
    assert len(split) == members
    for k, metrics in enumerate(split):
        assert metrics["eval/return"] == k + 1 and metrics["diverged"] == 0.0
        assert metrics["updates"] == 20 and metrics["node_id"] == "n"


def test_report_and_export_import_no_ray():
    code = "import sys, offline_sweeps.sweeps.report, offline_sweeps.sweeps.export; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_constraint_knob_is_a_packable_field_with_a_direction():
    for name, learner in ALGORITHMS.items():
        for knob, stronger in learner.CONSTRAINT_KNOBS.items():
            assert knob in learner.PACKABLE, (name, knob)
            assert stronger in ("higher", "lower"), (name, knob)
    assert ALGORITHMS["iql"].CONSTRAINT_KNOBS["expectile"] == "lower"
    assert ALGORITHMS["brac"].CONSTRAINT_KNOBS["kl_weight"] == "higher"
    assert ALGORITHMS["bear"].CONSTRAINT_KNOBS["mmd_threshold"] == "lower"


def test_one_panel_per_algorithm_and_knob(tmp_path):
    short = {"eval_every": 10, "total_updates": 30, "algo": {"warm_start_updates": 0, "behavior_pretrain_steps": 0}}
    values = {"seeds": [0, 1], "train": short, "parts": [
        {"algorithm": "brac", "search": {"kl_weight": {"grid": [0.01, 0.1, 1.0]}}},
        {"algorithm": "bear", "search": {"mmd_threshold": {"grid": [0.02, 0.05]}}}]}
    curves = {(knob, seed): [50.0 + seed] * 3 for knob in (0.01, 0.1, 1.0, 0.02, 0.05) for seed in (0, 1)}
    folder = write_study(tmp_path / "study", values, curves)
    study, runs = collect(folder)
    panels = _panels(summarize(study, runs))
    assert sorted(panels) == [("bear", "mmd_threshold"), ("brac", "kl_weight")]
    assert sorted(p[0] for p in panels[("brac", "kl_weight")][DATASET]) == [0.01, 0.1, 1.0]
    assert write_report(folder)["plot"].stat().st_size > 10_000
    assert _log_spaced([0.01, 0.1, 1.0]) and not _log_spaced([0.5, 0.7, 0.9]) and not _log_spaced([1, 50, 100])


def test_load_results_is_one_row_per_trial_member_and_iteration(tmp_path):
    folder = iql_study(tmp_path, curves_of({0.7: {0: [1, 2, 3], 1: [4, 5, 6]}, 0.9: {0: [7, 8, 9], 1: [1, 1, 1]}}),
                       {(0.9, 1): 2})
    # A trial restored from its checkpoint after iteration 1 reports iterations 2 and 3 again: the last counts.
    result = folder / "trial_00" / "result.json"          # expectile 0.7
    rows = result.read_text().splitlines()
    again = [json.loads(row) for row in rows[1:]]
    for row in again:
        row["member_0/eval/normalized_return"] += 100
    result.write_text("\n".join(rows + [json.dumps(row) for row in again]) + "\n")
    frame = load_results(folder)
    assert len(frame) == 2 * 2 * 3
    assert list(frame.columns[:7]) == ["study", "trial", "member", "iteration", "algorithm", "dataset", "seed"]
    assert {"expectile", "eval/normalized_return", "eval/return", "diverged", "updates"} <= set(frame.columns)
    member = frame[(frame.expectile == 0.7) & (frame.seed == 0)]
    assert member["eval/normalized_return"].tolist() == [1, 102, 103] and member["iteration"].tolist() == [1, 2, 3]
    diverged = frame[(frame.expectile == 0.9) & (frame.seed == 1)]
    assert diverged["diverged"].tolist() == [0, 1, 1] and diverged["eval/normalized_return"].isna().tolist() == [
        False, True, True]
    assert frame.groupby("expectile")["updates"].max().tolist() == [30, 30]


def test_stratified_bootstrap_and_aggregate_probability_of_improvement_against_hand_computation():
    assert stratified_bootstrap_ci([[0, 0, 0, 100]], np.mean) == pytest.approx((0.0, 75.0))
    # Seeds resampled within each dataset: [0, 10] gives a sum of 0, 10 or 20 (1/4, 1/2, 1/4), [20, 20]
    # always 40, so the pooled mean is 10, 12.5 or 15: the CI is [10, 15] (pooled resampling: [5, 17.5]).
    assert stratified_bootstrap_ci([[0, 10], [20, 20]], np.mean) == pytest.approx((10.0, 15.0))
    assert stratified_bootstrap_ci([[1.0]]) == (pytest.approx(math.nan, nan_ok=True),) * 2
    # Dataset 1: x wins on every seed (P = 1), dataset 2: loses on every seed (P = 0): 0.5, whatever the resample.
    result = probability_of_improvement_across([({0: 2, 1: 2}, {0: 1, 1: 1}), ({0: 0, 1: 0}, {0: 1, 1: 1})])
    assert (result["p"], result["ci_low"], result["ci_high"], result["datasets"]) == (0.5, 0.5, 0.5, 2)
    single = probability_of_improvement_across([({0: 80, 1: 60, 2: 70}, {0: 70, 1: 65, 2: 50})])
    assert (single["p"], single["ci_low"], single["ci_high"]) == pytest.approx((2 / 3, 0.0, 1.0))


def test_report_of_two_studies_side_by_side_with_their_comparison(tmp_path):
    iql = write_study(tmp_path / "iql-tau", {"name": "iql-tau", "algorithm": "iql", "seeds": [0, 1, 2],
                                             "search": {"expectile": {"grid": [0.7, 0.9]}}},
                      curves_of({0.7: flat(60.0), 0.9: flat(80.0)}), {(0.9, 2): 2})
    cql = write_study(tmp_path / "cql-alpha", {"name": "cql-alpha", "algorithm": "cql", "seeds": [0, 1, 2],
                                               "search": {"conservative_weight": {"grid": [1.0, 5.0]}}},
                      curves_of({1.0: flat(50.0), 5.0: {0: [40] * 3, 1: [45] * 3, 2: [50] * 3}}))
    single = write_study(tmp_path / "iql-one", {"name": "iql-one", "algorithm": "iql", "seeds": [0, 1, 2],
                                                "search": {"expectile": {"grid": [0.7]}}}, curves_of({0.7: flat(70.0)}))
    paths = write_report([iql, cql, single], out=tmp_path / "both")
    markdown = paths["markdown"].read_text()
    assert "| study | algorithm | dataset |" in markdown and "| iql-tau | iql |" in markdown and "| cql-alpha | cql |" in markdown
    assert "None" not in markdown          # iql's rows leave cql's knob column blank, and the reverse
    study, runs = collect(iql)
    assert sorted(_panels(summarize(study, collect(iql)[1] + collect(cql)[1]))) == [("cql", "conservative_weight"),
                                                                                  ("iql", "expectile")]
    with open(paths["aggregate"], newline="") as handle:
        pooled = {(row["study"], row["setting"]): row for row in csv.DictReader(handle)}
    # iql's best setting is 0.7 (60 > (80 + 80 + 0) / 3); cql's is alpha 1 (50 > 45).
    assert float(pooled[("iql-tau", "best setting per dataset")]["mean"]) == pytest.approx(60.0)
    assert float(pooled[("cql-alpha", "best setting per dataset")]["mean"]) == pytest.approx(50.0)
    assert float(pooled[("iql-tau", "expectile=0.9")]["mean"]) == pytest.approx(160 / 3)
    # one setting: no "best setting per dataset" row repeating it
    assert float(pooled[("iql-one", "expectile=0.7")]["mean"]) == pytest.approx(70.0)
    assert ("iql-one", "best setting per dataset") not in pooled
    assert "P(cql-alpha cql beats iql-tau iql), each at its best setting per dataset, over 1 shared dataset(s): 0, " \
           "95% CI [0, 0]" in markdown
    assert all(paths[key].stat().st_size > 10_000 for key in ("plot", "curves", "profiles"))


def test_launch_report_takes_several_folders(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("launch", Path(__file__).resolve().parents[2] / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    first = write_study(tmp_path / "a", {"name": "a", "algorithm": "iql", "seeds": [0, 1],
                                         "search": {"expectile": {"grid": [0.7]}}}, {(0.7, 0): [1.0] * 3, (0.7, 1): [2.0] * 3})
    second = write_study(tmp_path / "b", {"name": "b", "algorithm": "iql", "seeds": [0, 1],
                                          "search": {"expectile": {"grid": [0.9]}}}, {(0.9, 0): [3.0] * 3, (0.9, 1): [4.0] * 3})
    assert launch.main(["report", str(first), str(second), "--no-wandb"]) == 0
    assert (tmp_path / "report-a+b" / "report.md").is_file() and "| a | iql |" in capsys.readouterr().out


def test_studies_of_different_metrics_do_not_share_a_report(tmp_path):
    first = iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)}))
    second = write_study(tmp_path / "raw", {"name": "raw", "algorithm": "iql", "seeds": [0], "metric": "eval/return",
                                            "search": {"expectile": {"grid": [0.7]}}}, {(0.7, 0): [1.0] * 3})
    with pytest.raises(StudyError, match="only studies of the same metric share a report"):
        write_report([first, second], out=tmp_path / "both")


def test_reporting_again_updates_the_same_wandb_report_run(tmp_path, monkeypatch):
    from offline_sweeps.sweeps.wandb_logging import log_report, report_run_id
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)}), wandb={"enabled": True, "project": "t"})
    study, _ = collect(folder)
    runs = [log_report(study, write_report(folder)) for _ in range(2)]
    assert all(run.name.endswith(report_run_id(study)) for run in runs)      # one W&B run, logged twice
    assert report_run_id(study) != report_run_id(collect(write_study(
        tmp_path / "other", {"name": "other", "algorithm": "iql", "seeds": [0], "search": {"expectile": {"grid": [0.7]}},
                             "wandb": {"enabled": True, "project": "t"}}, {(0.7, 0): [1.0] * 3}))[0])


def test_progress_lines_show_the_members_range_from_split_members():
    from types import SimpleNamespace

    from offline_sweeps.sweeps.run import ProgressLines
    trial = parse_study({"name": "p", "algorithm": "iql", "datasets": [DATASET], "seeds": [0, 1, 2], "pack": ["seed"],
                         "train": {"eval_every": 10, "total_updates": 30}}).trials()[0]
    per_member = {"eval/normalized_return": np.array([10.0, np.nan, 30.0]), "diverged": np.array([0.0, 1.0, 0.0])}
    result = {**flatten_members(per_member), "training_iteration": 1, "updates_per_second": 5.0}
    lines = []
    ProgressLines("eval/normalized_return", lines.append).on_trial_result(
        1, [], SimpleNamespace(config={"trial": trial}, status="RUNNING"), result)
    assert "eval/normalized_return    20.00 [10.0, 30.0]" in lines[0] and "iter 1/3" in lines[0]


def test_performance_profile_against_hand_computation():
    assert performance_profile([[0, 50, 100]], [25, 75, 100]) == pytest.approx([2 / 3, 1 / 3, 0])
    # Each dataset weighs the same: (1/2 + 4/4) / 2 at tau 25, however many seeds each has.
    assert performance_profile([[0, 100], [50, 50, 50, 50]], [25]) == pytest.approx([0.75])


def test_a_received_folder_does_not_resolve_environment_interpolations(tmp_path, monkeypatch):
    """A study.yaml from someone else naming ${oc.env:SECRET_TOKEN} must not put this machine's token into the
    report (issue 15, item 3); a sweep that resolves one lists the key."""
    from offline_sweeps.sweeps.study_yaml import load_study
    monkeypatch.setenv("SECRET_TOKEN", "s3cr3t-value")
    folder = iql_study(tmp_path, curves_of({0.7: flat(80.0), 0.9: flat(70.0)}))
    received = yaml.safe_load((folder / STUDY_FILE).read_text())
    received["description"] = "leak ${oc.env:SECRET_TOKEN}"
    (folder / STUDY_FILE).write_text(yaml.safe_dump(received))
    paths = write_report(folder)
    report = paths["markdown"].read_text()
    assert "s3cr3t-value" not in report and "${oc.env:SECRET_TOKEN}" in report
    for path in export_best(folder):
        assert "s3cr3t-value" not in path.read_text()
    resolved = load_study(folder / STUDY_FILE)
    assert resolved.description == "leak s3cr3t-value" and resolved.interpolated == ("description",)
    assert load_study(folder / STUDY_FILE, resolve=False).interpolated == ()
