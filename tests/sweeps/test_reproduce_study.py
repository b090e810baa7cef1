"""Issue 23 item 2: sweeps/reproduce_mujoco.yaml trains every registry algorithm at its reference settings on the
three MuJoCo medium sets with a published score beside each, and the GPU command reaches every part."""
from __future__ import annotations

from pathlib import Path

import pytest

from offline_sweeps.algorithms import ALGORITHMS
from offline_sweeps.sweeps.reference import published_columns
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import load_study, parse_study

STUDY = Path(__file__).resolve().parents[2] / "sweeps" / "reproduce_mujoco.yaml"
DATASETS = {"hopper/medium-v0", "halfcheetah/medium-v0", "walker2d/medium-v0"}
GPU = ["train.total_updates=1000000", "train.eval_every=10000", "resources.gpu=0.25"]


def test_every_algorithm_runs_on_the_three_medium_sets_with_its_seeds_packed():
    study = load_study(STUDY)
    assert {part.algorithm for part in study.parts} == set(ALGORITHMS)
    trials = study.trials()
    assert {(t["algorithm"], t["dataset"]) for t in trials} == {(a, d) for a in ALGORITHMS for d in DATASETS}
    assert all(len(t["members"]) == 3 and t["total_updates"] == 2000 for t in trials)


def test_every_setting_has_a_published_score_with_its_source():
    study = load_study(STUDY)
    for trial in study.trials():
        row = {"algorithm": trial["algorithm"], "dataset": trial["dataset"], **trial["study"]["point"]}
        published = published_columns(study.reference, row, trial["total_updates"])
        assert published, f"no reference for {row}"
        assert published["published_source"] and published["published_dataset"].startswith(trial["dataset"].split("/")[0])


def test_the_gpu_command_reaches_every_part_and_the_phases_keep_their_share():
    cpu, gpu = load_study(STUDY), load_study(STUDY, GPU)
    assert {t["total_updates"] for t in gpu.trials()} == {1_000_000} and gpu.resources["gpu"] == 0.25
    phases = {p.algorithm: p.train["algo"] for p in gpu.parts if p.algorithm in ("brac", "bear")}
    assert phases == {"brac": {"behavior_pretrain_steps": 300_000, "warm_start_updates": 20_000},
                      "bear": {"warm_start_updates": 40_000, "kernel_sigma": 20.0}}
    assert next(p for p in cpu.parts if p.algorithm == "brac").train["algo"]["behavior_pretrain_steps"] == 600


def test_the_times_resolver_scales_a_budget_and_refuses_what_is_not_a_number(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: t\nalgorithm: brac\ndatasets: [d]\nwandb: {enabled: false}\n"
                    "train: {total_updates: 1000, eval_every: 100, algo: {behavior_pretrain_steps: "
                    "'${times:${train.total_updates},0.25}', warm_start_updates: 0}}\n")
    assert load_study(path).parts[0].train["algo"]["behavior_pretrain_steps"] == 250
    path.write_text(path.read_text().replace("0.25}", "lots}"))
    with pytest.raises(StudyError, match="must be non-negative numbers"):
        load_study(path)
    with pytest.raises(StudyError):
        parse_study({"name": "t", "algorithm": "bc", "datasets": ["d"], "reference": [{"algorithm": "bc"}]})


def test_one_env_of_it_runs_with_a_datasets_override():
    study = load_study(STUDY, ["datasets=[hopper/medium-v0]"])
    assert len(study.trials()) == len(ALGORITHMS) and len(study.reference) == 3 * len(ALGORITHMS)


def test_a_missing_set_is_built_from_the_env_its_name_stands_for(minari_root):
    from offline_sweeps.sweeps.plan import dataset_status
    study = load_study(STUDY)
    assert {d: study.build_env(d) for d in DATASETS} == {"hopper/medium-v0": "Hopper-v5",
                                                          "halfcheetah/medium-v0": "HalfCheetah-v5",
                                                          "walker2d/medium-v0": "Walker2d-v5"}
    assert dataset_status(study)["walker2d/medium-v0"] == "missing: built first from Walker2d-v5 (200,000 transitions)"
    assert parse_study({"name": "t", "algorithm": "bc", "datasets": ["ant/medium-v0"], "build": {}}).build_env(
        "ant/medium-v0") is None
    assert parse_study({"name": "t", "algorithm": "bc", "datasets": ["x/medium-v0"], "build": {"env": "Ant-v5"}}).build_env(
        "x/medium-v0") == "Ant-v5"


def test_a_name_that_stands_for_no_preset_needs_build_env(minari_root):
    from offline_sweeps.sweeps.inputs import ensure_datasets
    study = parse_study({"name": "t", "algorithm": "bc", "datasets": ["ant/medium-v0"], "build": {"transitions": 10}})
    with pytest.raises(StudyError, match=r"build.env: name the Gymnasium env to build ant/\.\.\. from"):
        ensure_datasets(study, log=lambda _: None)
