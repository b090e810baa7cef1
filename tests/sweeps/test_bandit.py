"""The bandit protocol of Unifloral (Jackson et al. 2025) on hand-computable arms and on synthetic study folders (no
Ray, no training): UCB and round-robin against hand computations, reproducibility, a diverged member as an arm at
the failure level, FQE first, the report's section and the export by the bandit."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.selection import bandit, bandit_arms
from offline_sweeps.sweeps.statistics import (bandit_deployments, bootstrap_mean_columns, subsample_arms,
                                              top_arms)
from offline_sweeps.sweeps.study import StudyError

from .test_report import curves_of, flat, iql_study
from .test_selection import add_final_metrics

# Two arms of known means: arm 0 returns 0 or 2 (mean 1), arm 1 returns 1, 3 or 5 (mean 3).
TWO_ARMS = [np.array([0.0, 2.0]), np.array([1.0, 3.0, 5.0])]
TRUE = np.array([1.0, 3.0])


def deployed_score(rule: str, pulls: int, repeats: int = 40_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    subsets = subsample_arms(2, 20, repeats, rng)
    return TRUE[bandit_deployments(TWO_ARMS, subsets, pulls, rng, rule)].mean(axis=0)


def test_ucb_on_two_arms_against_hand_computation():
    score = deployed_score("ucb", 200)
    # 1 episode: log 1 = 0, so the first pull is a uniform draw, and it is what is deployed: (1 + 3) / 2.
    # 2 episodes: the other arm's bonus is unbounded, so each arm has one episode; arm 1 is deployed unless arm 0
    # drew 2 and arm 1 drew 1: P = 1 - 1/2 * 1/3 = 5/6, so 3 * 5/6 + 1 * 1/6 = 16/6.
    assert score[0] == pytest.approx(2.0, abs=0.02)
    assert score[1] == pytest.approx(16 / 6, abs=0.02)
    # It approaches the better arm as the budget grows, and never steps back far.
    assert score[9] > score[1] and score[49] > 2.95 and score[199] > 2.99
    assert np.all(np.diff(score[1:]) > -0.02)


def test_round_robin_on_two_arms_against_hand_computation():
    score = deployed_score("round_robin", 3)
    # 3 episodes: the row's first arm twice, the other once; a tie goes to the first arm in the row.
    # Arm 0 first (1/2): arm 0's mean is 0, 1, 2 w.p. 1/4, 1/2, 1/4 and arm 1 wins on > (1 ties 1): 3/4.
    # Arm 1 first (1/2): it loses only to arm 0's 2 against its mean 1 (two draws of 1: 1/9): 17/18.
    # P(arm 1) = (3/4 + 17/18) / 2 = 61/72.
    assert score[0] == pytest.approx(2.0, abs=0.02)
    assert score[1] == pytest.approx(16 / 6, abs=0.02)
    assert score[2] == pytest.approx(1 + 2 * 61 / 72, abs=0.02)
    rng = np.random.default_rng(1)
    subsets = subsample_arms(5, 5, 100, rng)
    pulled = bandit_deployments([np.array([float(-a)]) for a in range(5)], subsets, 5, rng, "round_robin")
    # The first deployment is the first arm of each row: an untried policy (mean 0 in Unifloral's code, above
    # every negative return) is never deployed.
    np.testing.assert_array_equal(pulled[:, 0], subsets[:, 0])
    np.testing.assert_array_equal(pulled[:, -1], np.zeros(100))          # all five tried: the best, 0


def test_the_resampling_is_reproducible_with_a_seed():
    first, again, other = (deployed_score("ucb", 20, repeats=500, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_subsamples_and_fqe_top_arms():
    rng = np.random.default_rng(0)
    subsets = subsample_arms(6, 4, 2000, rng)
    assert subsets.shape == (2000, 4) and all(len(set(row)) == 4 for row in subsets)
    assert np.bincount(subsets.ravel(), minlength=6) == pytest.approx(np.full(6, 2000 * 4 / 6), rel=0.1)
    assert subsample_arms(3, 20, 5, rng).shape == (5, 3)                  # min(subsample, arms)
    # Arms 1 and 2 tie on top, in random order; nan ranks last.
    top = top_arms(np.tile(np.arange(4), (4000, 1)), [0.0, 5.0, 5.0, np.nan], 3, rng)
    assert set(map(tuple, top)) == {(1, 2, 0), (2, 1, 0)}
    assert np.mean(top[:, 0] == 1) == pytest.approx(0.5, abs=0.05)


def test_bootstrap_ci_over_repeats():
    samples = np.column_stack([np.full(50, 7.0), np.arange(50.0)])
    mean, low, high = bootstrap_mean_columns(samples)
    assert mean == pytest.approx([7.0, 24.5]) and low[0] == high[0] == 7.0
    assert low[1] < 24.5 < high[1] and high[1] - low[1] == pytest.approx(4 * 14.43 / np.sqrt(50), rel=0.15)


def add_episodes(folder, episodes: dict) -> None:
    """Report `episodes[(knob value, seed)]` (a list of normalized returns) with each trial's last result, as the
    trainer writes them (`member_k/eval/episode_normalized_returns`, or the plain key for one member)."""
    for trial_dir in sorted(folder.glob("trial_*")):
        trial = json.loads((trial_dir / "params.json").read_text())["trial"]
        knob = next(iter(trial["study"]["point"].values()))
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        for k, member in enumerate(trial["members"]):
            if (knob, member["seed"]) in episodes:
                key = "eval/episode_normalized_returns"
                rows[-1][f"member_{k}/{key}" if len(trial["members"]) > 1 else key] = episodes[(knob, member["seed"])]
        (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def diverging_study(tmp_path, **values):
    """expectile 0.7: two seeds at 60 in every episode; 0.9: seed 0 at 90, seed 1 diverged at iteration 2 (its
    episodes would say 95, but it is an arm at the failure level, 0)."""
    curves = curves_of({0.7: flat(60.0, seeds=(0, 1)), 0.9: flat(90.0, seeds=(0, 1))})
    folder = iql_study(tmp_path, curves, {(0.9, 1): 2}, **values)
    add_episodes(folder, {(0.7, 0): [60.0] * 4, (0.7, 1): [58.0, 62.0], (0.9, 0): [90.0] * 3, (0.9, 1): [95.0]})
    return folder


def test_a_diverged_member_is_an_arm_at_the_failure_level(tmp_path):
    study, runs = collect(diverging_study(tmp_path))
    arms, returns = bandit_arms(study, runs)
    by = {(m.knobs["expectile"], m.seed): r.tolist() for m, r in zip(arms, returns)}
    assert by == {(0.7, 0): [60.0] * 4, (0.7, 1): [58.0, 62.0], (0.9, 0): [90.0] * 3, (0.9, 1): [0.0]}
    rows = bandit(study, runs, pulls=8)
    curve = {(row["method"], row["episodes"]): row for row in rows}
    first = rows[0]
    assert (first["arms"], first["left_out"], first["subsample"], first["recorded"]) == (4, 0, 4, 4)
    assert first["oracle"] == 90.0 and first["random_arm"] == pytest.approx((60 + 60 + 90 + 0) / 4)
    # One episode deploys a random arm; with four episodes UCB has tried every arm once and deploys the best.
    assert curve[("ucb", 1)]["expected_score"] == pytest.approx(52.5, abs=2.5)
    for t in range(4, 9):
        assert (curve[("ucb", t)]["expected_score"], curve[("ucb", t)]["ci_low"]) == (90.0, 90.0)
        assert curve[("round_robin", t)]["expected_score"] == 90.0
    assert not any(row["method"] == "fqe_top_k_ucb" for row in rows)       # nobody reported FQE


def test_fqe_first_then_the_bandit_among_its_top_k(tmp_path):
    folder = diverging_study(tmp_path)
    add_final_metrics(folder, {(0.7, 0): {"ope/fqe_value": 1.0}, (0.7, 1): {"ope/fqe_value": 2.0},
                               (0.9, 0): {"ope/fqe_value": 3.0}, (0.9, 1): {"ope/fqe_value": 9.0}})
    study, runs = collect(folder)
    rows = [row for row in bandit(study, runs, pulls=3, top_k=2) if row["method"] == "fqe_top_k_ucb"]
    # The diverged member's FQE is the survivors' worst (1), so the top 2 are 0.9 seed 0 (90) and 0.7 seed 1 (60).
    assert rows[0]["top_k"] == 2 and rows[0]["fqe_pick"] == 90.0
    assert rows[0]["expected_score"] == pytest.approx(75.0, abs=2.5)
    assert [row["expected_score"] for row in rows[1:]] == [90.0, 90.0]


def test_report_shows_the_bandit_beside_eop(tmp_path):
    paths = write_report(diverging_study(tmp_path))
    markdown = paths["markdown"].read_text()
    assert markdown.index("## Expected online performance") < markdown.index("## Choosing with a counted online")
    assert "**iql on pendulum/medium-v0** (4 policies, 4 recorded episodes each, subsamples of 4; oracle 90, " \
           "random 52.5)" in markdown
    assert "| method | 1 ep. | 2 ep. | 3 ep. | 5 ep. | 10 ep. | 20 ep. | 50 ep. | 100 ep. | 200 ep. |" in markdown
    assert "| round_robin |" in markdown and "| 90 [90, 90] |" in markdown
    with open(paths["bandit"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 200 and {row["method"] for row in rows} == {"ucb", "round_robin"}
    assert paths["bandit_plot"].stat().st_size > 10_000


def test_without_recorded_episodes_there_is_no_arm(tmp_path):
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0, seeds=(0, 1)), 0.9: flat(90.0, seeds=(0, 1))}))
    add_episodes(folder, {(0.9, 0): [90.0, 90.0]})
    study, runs = collect(folder)
    assert bandit(study, runs, pulls=2)[0]["left_out"] == 3
    empty = iql_study(tmp_path / "none", curves_of({0.7: flat(60.0, seeds=(0, 1))}))
    paths = write_report(empty)
    assert "No bandit curve: no member recorded its last evaluation's episode returns" in \
        paths["markdown"].read_text()
    assert "bandit_plot" not in paths
    with pytest.raises(StudyError, match="select: bandit needs recorded final episode returns"):
        export_best(empty, select="bandit", episodes=5)


def test_export_by_the_bandit_names_what_it_spent(tmp_path):
    folder = diverging_study(tmp_path)
    text = export_best(folder, select="bandit", episodes=6)[0].read_text()
    header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    assert yaml.safe_load(text)["algo"]["expectile"] == 0.9
    assert header[0] == "Best iql on pendulum/medium-v0 in study synthetic, chosen by a UCB bandit (Jackson et al. " \
                        "2025, Unifloral's protocol) spending 6 online episodes in the test environment: expectile=0.9"
    assert header[1].startswith("spent: 6 episodes over 4 trained policies")
    assert "deployed in 100% of them (seed 0 most often)" in header[1]
    assert "expected true final eval/normalized_return = 90, 95% bootstrap CI [90, 90]" in header[1]
    assert header[2].startswith("this config re-trains the setting with all its seeds: expect its mean last "
                                "eval/normalized_return = 45 over seeds [0, 1]")
    # With one episode the deployed policy is the one tried, at random: each setting owns half the policies.
    one = [line for line in export_best(folder, select="bandit", episodes=1)[0].read_text().splitlines()
           if line.startswith("# spent: 1 episodes")][0]
    share = float(one.split("was deployed in ")[1].split("%")[0])
    assert 50 <= share <= 54
    assert float(one.split("final eval/normalized_return = ")[1].split(",")[0]) == pytest.approx(52.5, abs=2.5)
    for select, episodes, message in (("bandit", None, "select bandit needs the online budget"),
                                      ("online", 5, "select bandit needs the online budget"),
                                      ("bandit", 0, "--episodes 0 must be a whole number of online episodes >= 1")):
        with pytest.raises(StudyError, match=message):
            export_best(folder, select=select, episodes=episodes)


def test_launch_export_by_the_bandit(tmp_path):
    folder = diverging_study(tmp_path)
    launch = Path(__file__).resolve().parents[2] / "launch.py"
    done = subprocess.run([sys.executable, str(launch), "export", str(folder), "--select", "bandit", "--episodes", "6"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "spending 6 online episodes" in (folder / "best" / "iql-pendulum_medium-v0.yaml").read_text()
