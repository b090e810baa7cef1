"""Offline model selection and Expected Online Performance on synthetic study folders (no Ray, no training):
what each criterion picks and costs against the online oracle, EOP against hand computations, and the export
by a criterion."""
from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import yaml

from offline_sweeps.algorithms.trainer import flatten_members
from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.selection import criterion_values, selection
from offline_sweeps.sweeps.statistics import expected_max_random, expected_max_top, rank_correlation
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study

from .test_report import DATASET, curves_of, flat, iql_study


def add_final_metrics(folder, values: dict) -> None:
    """Report `values[(knob value, seed)]` ({"ope/fqe_value": v, ...}) with each trial's last result, as
    `flatten_members` writes them (`member_k/ope/...` for a packed trial, `ope/...` for one member)."""
    for trial_dir in sorted(folder.glob("trial_*")):
        trial = json.loads((trial_dir / "params.json").read_text())["trial"]
        knob = next(iter(trial["study"]["point"].values()))
        own = [values.get((knob, member["seed"]), {}) for member in trial["members"]]
        keys = sorted({key for metrics in own for key in metrics})
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        rows[-1].update(flatten_members({key: np.array([m.get(key, np.nan) for m in own]) for key in keys}))
        (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def ranked_study(tmp_path, **values):
    """expectile 0.5, 0.7, 0.9 score 30, 60, 90 (+ the seed); fqe ranks the members as the test environment
    does, the critic's Q the other way round; nobody reports a TD error."""
    curves = {(knob, seed): [score + seed] * 3 for knob, score in ((0.5, 30.0), (0.7, 60.0), (0.9, 90.0))
              for seed in (0, 1)}
    folder = iql_study(tmp_path, curves, **values)
    add_final_metrics(folder, {key: {"ope/fqe_value": curve[-1] / 10, "ope/critic_initial_q": -curve[-1]}
                               for key, curve in curves.items()})
    return folder


def test_eop_of_uniform_selection_against_hand_computation():
    # With replacement (the authors' eop.py), v = 1, 2, 3, 4: P(max = v_(i)) = (i/4)^k - ((i-1)/4)^k, so
    # k = 2: (1*1 + 2*3 + 3*5 + 4*7) / 16; k = 4: (1*1 + 2*15 + 3*65 + 4*175) / 256, short of the best.
    assert expected_max_random([4, 2, 1, 3]) == pytest.approx([2.5, 50 / 16, expected_three(), 926 / 256])
    # Without replacement: k = 2 (2*1 + 3*2 + 4*3) / 6; k = 3 (3*1 + 4*3) / 4; k = 4 the maximum.
    assert expected_max_random([4, 2, 1, 3], replacement=False) == pytest.approx([2.5, 20 / 6, 3.75, 4.0])
    values = np.random.default_rng(0).normal(size=5)
    for k in range(1, 6):     # against every subset, and every ordered draw with repeats, of k of the 5
        distinct = np.mean([max(subset) for subset in itertools.combinations(values, k)])
        repeated = np.mean([max(draw) for draw in itertools.product(values, repeat=k)])
        assert expected_max_random(values, replacement=False)[k - 1] == pytest.approx(distinct)
        assert expected_max_random(values)[k - 1] == pytest.approx(repeated)


def expected_three() -> float:
    """k = 3 with replacement over 1, 2, 3, 4 by hand: P(max = i) = (i^3 - (i-1)^3) / 64 = 1, 7, 19, 37 / 64."""
    return (1 * 1 + 2 * 7 + 3 * 19 + 4 * 37) / 64


def test_eop_by_criterion_takes_the_top_k_and_breaks_ties_at_random():
    # The criterion ranks 0 first, then 2, then 1: the best true value among the top k.
    assert expected_max_top([5.0, 9.0, 1.0], [3.0, 1.0, 2.0]) == pytest.approx([5.0, 5.0, 9.0])
    # Settings 0 and 1 tie on top: k = 1 draws one of them (mean of 10 and 0); nan ranks last.
    assert expected_max_top([10.0, 0.0, 50.0], [1.0, 1.0, math.nan]) == pytest.approx([5.0, 10.0, 50.0])
    assert expected_max_top([3.0, 1.0, 2.0], [7.0, 7.0, 7.0]) == pytest.approx(expected_max_random([3.0, 1.0, 2.0], replacement=False))


def test_rank_correlation_is_nan_safe_and_counts_its_pairs():
    assert rank_correlation([1, 2, 3, math.nan], [10, 20, 30, 40]) == (pytest.approx(1.0), 3)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == (pytest.approx(-1.0), 3)
    rho, n = rank_correlation([1, 2], [1, 2])
    assert math.isnan(rho) and n == 2
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3])[0])


def test_fqe_ranks_like_the_test_environment_and_the_critic_the_other_way_round(tmp_path):
    study, runs = collect(ranked_study(tmp_path))
    rows, curves = selection(study, runs)
    by = {row["criterion"]: row for row in rows}
    assert sorted(by) == ["critic", "fqe", "online"]            # no td_error reported: no row
    assert by["online"]["setting"] == by["fqe"]["setting"] == "expectile=0.9"
    assert by["fqe"]["score"] == pytest.approx(90.5) and by["fqe"]["regret"] == 0.0
    assert by["fqe"]["criterion_value"] == pytest.approx(9.05)
    assert (by["fqe"]["spearman"], by["fqe"]["spearman_n"]) == (pytest.approx(1.0), 6)
    assert by["critic"]["setting"] == "expectile=0.5" and by["critic"]["score"] == pytest.approx(30.5)
    assert by["critic"]["regret"] == pytest.approx(60.0) and by["critic"]["regret_pct"] == pytest.approx(100.0)
    assert by["critic"]["spearman"] == pytest.approx(-1.0)
    eop = {(row["selection"], row["k"]): row["expected_best"] for row in curves}
    # Settings 30.5, 60.5, 90.5 drawn with replacement: k = 1 their mean, k = 2 (30.5 * 1 + 60.5 * 3 + 90.5 * 5) / 9,
    # k = 3 (30.5 * 1 + 60.5 * 7 + 90.5 * 19) / 27.
    assert [eop[("random", k)] for k in (1, 2, 3)] == pytest.approx([60.5, 664.5 / 9, 80.5])
    assert [eop[("fqe", k)] for k in (1, 2, 3)] == pytest.approx([90.5] * 3)
    assert [eop[("critic", k)] for k in (1, 2, 3)] == pytest.approx([30.5, 60.5, 90.5])


def test_report_shows_the_selection_and_eop_sections_and_their_csvs(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    dashed = []
    draw = Axes.axhline

    def axhline(ax, y=0, *args, **kwargs):
        dashed.append(y)
        return draw(ax, y, *args, **kwargs)
    monkeypatch.setattr(Axes, "axhline", axhline)
    paths = write_report(ranked_study(tmp_path))
    assert 90.5 in dashed          # eop.png's oracle line: the best setting, not random's k = N (80.5 with replacement)
    markdown = paths["markdown"].read_text()
    assert "## Offline model selection" in markdown and "chosen with the test environment (online oracle)" in markdown
    assert "| iql | pendulum/medium-v0 | online (chosen with the test environment) | expectile=0.9 |" in markdown
    assert "| iql | pendulum/medium-v0 | critic (`ope/critic_initial_q`) | expectile=0.5 | -30.5 | 30.5 | 60 | 100% " \
           "| -1 (n=6) |" in markdown
    assert "| random | 60.5 | 73.8 | 80.5 |" in markdown and "| top k by critic | 30.5 | 60.5 | 90.5 |" in markdown
    assert "Kurenkov & Kolesnikov 2022" in markdown
    with open(paths["selection"], newline="") as handle:
        assert [row["criterion"] for row in csv.DictReader(handle)] == ["online", "fqe", "critic"]
    with open(paths["eop"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3          # random, fqe, critic x k = 1..3
    assert paths["eop_plot"].stat().st_size > 10_000


def test_report_omits_the_selection_section_without_ope_metrics(tmp_path):
    paths = write_report(iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)})))
    markdown = paths["markdown"].read_text()
    assert "## Offline model selection" not in markdown and "| top k by" not in markdown
    assert "## Expected online performance" in markdown and "| random | 70 | 75 |" in markdown
    with open(paths["selection"], newline="") as handle:
        assert [row["criterion"] for row in csv.DictReader(handle)] == ["online"]


def test_diverged_members_score_the_criterions_failure_level(tmp_path):
    # 0.9: seed 0 at 90 (fqe 9), seed 1 diverged at iteration 2 with an fqe of 100 left in its last result:
    # it scores the worst fqe among survivors, 1 (0.5's), so 0.9's fqe is (9 + 1) / 2 < 8 (0.7's).
    curves = curves_of({0.5: flat(10.0, seeds=(0, 1)), 0.7: flat(60.0, seeds=(0, 1)), 0.9: flat(90.0, seeds=(0, 1))})
    folder = iql_study(tmp_path, curves, {(0.9, 1): 2})
    add_final_metrics(folder, {(0.5, 0): {"ope/fqe_value": 1.0}, (0.5, 1): {"ope/fqe_value": 1.0},
                               (0.7, 0): {"ope/fqe_value": 8.0}, (0.7, 1): {"ope/fqe_value": 8.0},
                               (0.9, 0): {"ope/fqe_value": 9.0}, (0.9, 1): {"ope/fqe_value": 100.0}})
    study, runs = collect(folder)
    diverged = next(run for run in runs if run.diverged)
    assert criterion_values(runs, "fqe")[id(diverged)] == 1.0
    by = {row["criterion"]: row for row in selection(study, runs)[0]}
    assert by["fqe"]["setting"] == by["online"]["setting"] == "expectile=0.7"      # 0.9 scores (90 + 0) / 2
    assert by["fqe"]["spearman_n"] == 6
    assert yaml.safe_load(export_best(folder, select="fqe")[0].read_text())["algo"]["expectile"] == 0.7


def test_export_by_fqe_writes_its_pick_with_the_criterion_and_the_test_env_score(tmp_path):
    folder = ranked_study(tmp_path)
    online = export_best(folder)[0].read_text()
    assert online.startswith("# Best iql on pendulum/medium-v0 in study synthetic, chosen with the test environment "
                             "(online oracle): expectile=0.9")
    text = export_best(folder, select="critic")[0].read_text()
    header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    assert yaml.safe_load(text)["algo"]["expectile"] == 0.5
    assert header[0] == "Best iql on pendulum/medium-v0 in study synthetic, chosen offline (from the dataset alone) " \
                        "by critic: expectile=0.5"
    assert header[1].startswith("critic: mean final ope/critic_initial_q = -30.5 over seeds [0, 1] (higher is better")
    assert header[2].startswith("for reference, measured in the test environment (not used to choose): mean last "
                                "eval/normalized_return = 30.5")
    assert header[2].endswith("the online oracle picks expectile=0.9 at 90.5, regret 60")
    assert yaml.safe_load(export_best(folder, select="fqe")[0].read_text())["algo"]["expectile"] == 0.9
    with pytest.raises(StudyError, match="select: td_error needs ope/td_error"):
        export_best(folder, select="td_error")
    with pytest.raises(StudyError, match="select: 'oracle' must be one of online, fqe, critic, td_error"):
        export_best(folder, select="oracle")


def test_the_studys_select_key_is_exports_default(tmp_path):
    folder = ranked_study(tmp_path, select="critic")
    assert collect(folder)[0].select == "critic"
    assert yaml.safe_load(export_best(folder)[0].read_text())["algo"]["expectile"] == 0.5
    assert yaml.safe_load(export_best(folder, select="online")[0].read_text())["algo"]["expectile"] == 0.9


def test_study_select_is_validated():
    base = {"name": "s", "algorithm": "iql", "datasets": [DATASET], "wandb": {"enabled": False}}
    assert parse_study(base).select == "online"
    assert parse_study({**base, "select": "td_error"}).select == "td_error"
    for bad in ("oracle", ["fqe"], None):
        with pytest.raises(StudyError, match=r"^select: .* must be one of online, fqe, critic, td_error$"):
            parse_study({**base, "select": bad})


def test_one_member_trials_report_plain_ope_keys(tmp_path):
    curves = curves_of({0.7: flat(60.0, seeds=(0, 1)), 0.9: flat(80.0, seeds=(0, 1))})
    folder = iql_study(tmp_path, curves, pack=[])
    add_final_metrics(folder, {key: {"ope/td_error": 100 - curve[-1]} for key, curve in curves.items()})
    assert "ope/td_error" in (folder / "trial_00" / "result.json").read_text().splitlines()[-1]
    study, runs = collect(folder)
    by = {row["criterion"]: row for row in selection(study, runs)[0]}
    assert by["td_error"]["setting"] == "expectile=0.9" and by["td_error"]["criterion_value"] == pytest.approx(20.0)
