"""One study per folder (issue 15, item 1): a sweep into a used folder is refused before Ray starts, or
cleared with --overwrite; a lock stops a second driver; report and export read only the folder's own
experiment. No Ray, no training."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_sweeps.algorithms.trainer import flatten_members
from offline_sweeps.sweeps import run
from offline_sweeps.sweeps.report import export_best, load_results
from offline_sweeps.sweeps.study import STUDY_FILE, StudyError, parse_study


def study_of(storage: Path, name: str = "study", **values):
    return parse_study({"name": name, "algorithm": "iql", "datasets": ["pendulum/medium-v0"], "seeds": [0, 1],
                        "pack": ["seed"], "search": {"expectile": {"grid": [0.6, 0.9]}}, "storage": str(storage),
                        "train": {"eval_every": 10, "total_updates": 30}, "wandb": {"enabled": False}, **values})


def write_trials(folder: Path, study, ids: list[str], returns: dict[str, float]) -> None:
    """Trial folders as Tune leaves them (`<id>_<point>/params.json, result.json`), one per study trial."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STUDY_FILE).write_text(yaml.safe_dump(study.source))
    for trial_id, trial in zip(ids, study.trials()):
        rows = []
        for i in range(1, 4):
            values = np.full(len(trial["members"]), returns[trial_id])
            rows.append({**flatten_members({"eval/normalized_return": values, "eval/return": 10 * values - 1000,
                                            "diverged": np.zeros_like(values)}),
                         "updates": 10 * i, "training_iteration": i, "members_diverged": 0, "done": i == 3})
        trial_dir = folder / f"{trial_id}_iql,n"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"trial": trial}))
        (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def experiment_state(folder: Path, ids: list[str], stamp: str) -> None:
    """Tune's experiment state, as far as the report reads it: a trial's JSON state holds its trial_id
    (the cloudpickled parts are hex text in `CLOUDPICKLE_FALLBACK` entries)."""
    trial_data = [[json.dumps({"trial_id": i, "config": {"_type": "CLOUDPICKLE_FALLBACK", "value": "80049500"}}),
                   "{}"] for i in ids]
    (folder / f"experiment_state-{stamp}.json").write_text(json.dumps({"trial_data": trial_data}))


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the sweep gets as far as starting Ray."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(run, "init_ray", refuse)


def test_a_sweep_into_a_used_folder_stops_before_ray_with_one_line_offering_resume_name_and_overwrite(
        tmp_path, no_ray):
    study = study_of(tmp_path)
    folder = tmp_path / "study"
    write_trials(folder, study, ["aaaa0001", "aaaa0002"], {"aaaa0001": 1.0, "aaaa0002": 2.0})
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(StudyError) as refused:
        run.run_study(study, log=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message and f"launch.py resume {folder}" in message
    assert "name=" in message and "--overwrite" in message
    assert sorted(p.name for p in folder.iterdir() if p.name != run.LOCK_FILE) == before   # nothing touched


def test_a_folder_holding_only_the_study_yaml_of_a_sweep_that_never_started_is_reused(tmp_path, monkeypatch):
    study = study_of(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / STUDY_FILE).write_text("name: study\n")
    monkeypatch.setattr(run, "_run_claimed", lambda *args: "ran")
    assert run.run_study(study, log=lambda _: None) == "ran"


def test_overwrite_clears_the_old_trials_but_keeps_a_dynamics_cache_inside_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    cache = folder / "dynamics-cache"
    study = study_of(tmp_path, algorithm="mopo", search={"penalty": {"grid": [0.0, 1.0]}},
                     train={"eval_every": 10, "total_updates": 30, "model_dir": str(cache)})
    (cache / "abc").mkdir(parents=True)
    (cache / "abc" / "model.pt").write_bytes(b"weights")
    (folder / "old_trial").mkdir()
    (folder / "old_trial" / "result.json").write_text("{}\n")
    (folder / "experiment_state-old.json").write_text("{}")
    seen = {}
    monkeypatch.setattr(run, "_run_claimed", lambda *args: seen.setdefault(
        "left", sorted(p.name for p in folder.iterdir())))
    run.run_study(study, log=lambda _: None, overwrite=True)
    assert seen["left"] == sorted([run.LOCK_FILE, STUDY_FILE, "dynamics-cache"])
    assert (cache / "abc" / "model.pt").read_bytes() == b"weights"


def test_the_lock_stops_a_second_driver_on_the_same_folder_with_one_line(tmp_path, no_ray):
    folder = tmp_path / "study"
    with run.folder_lock(folder):
        with pytest.raises(StudyError) as refused:
            run.run_study(study_of(tmp_path), log=lambda _: None)
        assert "in use by another sweep" in str(refused.value) and "\n" not in str(refused.value)
        (folder / STUDY_FILE).write_text(yaml.safe_dump(study_of(tmp_path).source))
        (folder / "tuner.pkl").write_bytes(b"")          # what Tuner.can_restore looks for
        with pytest.raises(StudyError, match="in use by another sweep"):
            run.resume_study(folder)
    with run.folder_lock(folder):        # released: the next driver gets it
        pass


def test_report_and_export_use_only_the_trials_of_the_folders_own_experiment(tmp_path):
    """A foreign experiment's trials in the folder (an earlier run, another driver) are not pooled: the
    newest experiment state names the folder's own."""
    study = study_of(tmp_path)
    folder = tmp_path / "study"
    write_trials(folder, study, ["old00001", "old00002"], {"old00001": 99.0, "old00002": -99.0})
    write_trials(folder, study, ["new00001", "new00002"], {"new00001": 1.0, "new00002": 2.0})
    experiment_state(folder, ["old00001", "old00002"], "2026-01-01_00-00-00")
    experiment_state(folder, ["new00001", "new00002"], "2026-12-01_00-00-00")
    frame = load_results(folder)
    assert sorted({name.split("_")[0] for name in frame["trial"]}) == ["new00001", "new00002"]
    assert math.isclose(frame["eval/normalized_return"].max(), 2.0)
    best = yaml.safe_load(export_best(folder)[0].read_text())
    assert best["algo"]["expectile"] == 0.9          # new00002's setting; old00001's 99 is not this study's
