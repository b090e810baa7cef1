"""Study YAMLs: validation that names the key, and expansion into Tune trials with packed members."""
from __future__ import annotations

from pathlib import Path

import pytest

from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import load_study, parse_study

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
BASE = {"name": "t", "algorithm": "iql", "datasets": ["d/medium-v0"], "seeds": [0, 1, 2],
        "search": {"expectile": {"grid": [0.5, 0.7]}}}


def test_seeds_packed_into_populations():
    trials = parse_study({**BASE, "pack": ["seed"]}).trials()
    assert len(trials) == 2
    assert [m["seed"] for m in trials[0]["members"]] == [0, 1, 2]
    assert {m["expectile"] for m in trials[1]["members"]} == {0.7}
    assert trials[0]["study"]["point"] == {"expectile": 0.5}


def test_unpacked_and_fully_packed_expansions():
    assert [len(t["members"]) for t in parse_study(BASE).trials()] == [1] * 6
    trials = parse_study({**BASE, "pack": ["seed", "expectile"]}).trials()
    assert len(trials) == 1 and len(trials[0]["members"]) == 6


def test_random_axes_are_drawn_once_per_configuration_and_reproducibly():
    values = {**BASE, "search": {"expectile": {"grid": [0.6]}, "inverse_temperature": {"loguniform": [0.5, 20]},
                                 "train.reward_scale": {"choice": [0.1, 1.0]}}, "num_samples": 4, "pack": ["seed"]}
    trials = parse_study(values).trials()
    assert len(trials) == 4
    for trial in trials:
        assert len({m["inverse_temperature"] for m in trial["members"]}) == 1       # shared by the seeds
        assert 0.5 <= trial["members"][0]["inverse_temperature"] <= 20
        assert trial["reward_scale"] in (0.1, 1.0)
    assert [t["members"][0]["inverse_temperature"] for t in parse_study(values).trials()] == \
        [t["members"][0]["inverse_temperature"] for t in trials]


def test_parts_run_several_algorithms():
    study = parse_study({"name": "kl-vs-support", "datasets": ["d/medium-v0"], "seeds": [0, 1], "pack": ["seed"],
                         "parts": [{"algorithm": "iql", "search": {"expectile": {"grid": [0.7, 0.9]}}},
                                   {"algorithm": "cql", "search": {"conservative_weight": {"grid": [1.0, 5.0]}}}]})
    assert sorted(t["algorithm"] for t in study.trials()) == ["cql", "cql", "iql", "iql"]


@pytest.mark.parametrize("change, message", [
    ({"algoritm": "iql"}, r"^algoritm: unknown key; allowed here: "),
    ({"algorithm": "dqn"}, r"^algorithm: 'dqn' is not one of "),
    ({"search": {"expectil": {"grid": [0.5]}}}, r"^search.expectil: 'expectil' is not a field of IQLConfig"),
    ({"search": {"expectile": {"grid": [1.5]}}}, r"expectile=1.5 must be in \(0, 1\)"),
    ({"search": {"expectile": {"range": [0.5, 0.9]}}}, r"^search.expectile: write one of \{grid"),
    ({"search": {"expectile": {"uniform": [0.9, 0.5]}}}, r"^search.expectile.uniform: give \[low, high\]"),
    ({"pack": ["hidden"]}, r"^pack: 'hidden' is neither 'seed' nor a search key"),
    ({"search": {"hidden": {"grid": [[32], [64]]}}, "pack": ["hidden"]}, r"cannot differ inside a iql population"),
    ({"search": {"expectile": {"uniform": [0.5, 0.9]}}, "pack": ["expectile"]}, r"only grid axes and seeds"),
    ({"train": {"eval_evry": 5}}, r"^train.eval_evry: unknown key"),
    ({"train": {"algo": {"tau": 0.7}}}, r"^train.algo.tau: unknown key"),
    ({"seeds": []}, r"^seeds: give a non-empty list"),
    ({"mode": "maximize"}, r"^mode: 'maximize' must be one of max, min"),
    ({"scheduler": {"name": "pbt"}}, r"^scheduler.name: 'pbt' must be one of none, asha"),
    ({"resources": {"cpu": 0}}, r"^resources.cpu: 0 must be positive"),
    ({"keep_checkpoints": 0}, r"^keep_checkpoints: "),
    ({"name": "a/b"}, r"^name: "),
    ({"searcher": "hyperopt"}, r"^searcher: 'hyperopt' must be one of default, optuna"),
    ({"searcher": "optuna"}, r"^searcher: optuna needs a choice, uniform or loguniform axis"),
    ({"searcher": "optuna", "search": {"expectile": {"uniform": [0.5, 0.9]}}},
     r"^pack: with searcher: optuna, grid axes and seeds are packed into each trial; add seed to pack:"),
])
def test_bad_studies_name_the_key(change, message):
    with pytest.raises(StudyError, match=message):
        parse_study({**BASE, **change})


def test_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nalgorithm: iql\ndatasets: [d/medium-v0]\nsearch:\n  expectile: {grid: [0.5]}\n")
    study = load_study(path, ["seeds=[3,4]", "search.expectile.grid=[0.6,0.8]", "train.total_updates=50", "train.eval_every=25"])
    assert len(study.trials()) == 4 and study.trials()[0]["total_updates"] == 50
    with pytest.raises(StudyError, match="^seeds: give a non-empty list"):
        load_study(path, ["seeds=[]"])
    path.write_text("name: s\nalgorithm: [iql\n")
    with pytest.raises(StudyError, match="is not valid YAML"):
        load_study(path)
    with pytest.raises(StudyError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = load_study(path)
    assert study.trials()


def test_optuna_study_is_one_template_trial_with_the_sampled_axes_left_to_optuna():
    pytest.importorskip("optuna")
    study = parse_study({**BASE, "searcher": "optuna", "pack": ["seed"], "num_samples": 4,
                         "search": {"expectile": {"uniform": [0.5, 0.9]}, "hidden": {"choice": [[16], [32]]}}})
    assert len(study.trials()) == 1 and len(study.trials()[0]["members"]) == 3
    assert {axis.key for axis in study.sampled_axes()} == {"expectile", "hidden"}


def test_an_error_in_the_first_part_names_it():
    """It named parts[1] and later, never parts[0] (`if part_index` was false for the first)."""
    values = {"name": "p", "datasets": ["pendulum/medium-v0"], "wandb": {"enabled": False},
              "parts": [{"algorithm": "bc", "train": {"model": {"seed": 0}}}, {"algorithm": "mopo"}]}
    with pytest.raises(StudyError, match=r"^parts\[0\]\.train/search: model: settings are for model-based"):
        parse_study(values)
