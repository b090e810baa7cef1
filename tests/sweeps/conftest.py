"""Fixtures for study tests: an embedded Ray, a tiny IQL study on the session's Pendulum data, and a signed
study folder as a finished sweep leaves it (the input the received-folder tests tamper with)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_sweeps.algorithms.trainer import flatten_members
from offline_sweeps.sweeps import folder as study_folder
from offline_sweeps.sweeps.study import STUDY_FILE
from offline_sweeps.sweeps.study_yaml import parse_study

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="module")
def local_ray():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def tiny_study():
    """A study factory: IQL with 16x16 nets, expectile in {0.6, 0.9} x seeds {0, 1}, a few updates per trial."""
    def make(name: str, dataset: str, storage: Path, pack: list[str] = (), **overrides):
        values = {
            "name": name, "algorithm": "iql", "datasets": [dataset], "seeds": [0, 1], "pack": list(pack),
            "search": {"expectile": {"grid": [0.6, 0.9]}},
            "train": {"eval_every": 20, "eval_episodes": 2, "total_updates": 40, "reward_scale": 0.1,
                      "algo": {"hidden": [16, 16], "batch_size": 32}},
            "resources": {"cpu": 1}, "storage": str(storage), "wandb": {"enabled": False}}
        for key, value in overrides.items():       # train and wandb settings merge; anything else replaces
            values[key] = {**values[key], **value} if key in ("train", "wandb") else value
        return values, parse_study(values)
    return make


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a command gets as far as starting Ray."""
    from offline_sweeps.sweeps import run

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(run, "init_ray", refuse)


@pytest.fixture
def study_of():
    """A study factory, `study_of(storage, name="study", **values)`: IQL expectile {0.6, 0.9} x seeds {0, 1}
    packed, 30 updates, W&B off; `values` replace top-level keys."""
    def make(storage: Path, name: str = "study", **values):
        return parse_study({"name": name, "algorithm": "iql", "datasets": ["pendulum/medium-v0"], "seeds": [0, 1],
                            "pack": ["seed"], "search": {"expectile": {"grid": [0.6, 0.9]}}, "storage": str(storage),
                            "train": {"eval_every": 10, "total_updates": 30}, "wandb": {"enabled": False}, **values})
    return make


@pytest.fixture
def study_folder_at(study_of):
    """`study_folder_at(root, name="study")`: a study folder as a finished sweep leaves it (its Tune state
    stubbed): study.yaml, tuner.pkl, two trials with params.json, result.json and a checkpoint folder holding
    state.pt; signed by this installation (the test's resume key)."""
    def make(root: Path, name: str = "study") -> Path:
        study = study_of(root, name)
        folder = root / name
        folder.mkdir()
        (folder / STUDY_FILE).write_text(yaml.safe_dump(study.source))
        (folder / "tuner.pkl").write_bytes(pickle.dumps({"stub": True}))
        for index, trial in enumerate(study.trials()):
            trial_dir = folder / f"abcd000{index}_iql,expectile={trial['members'][0]['expectile']}"
            (trial_dir / "checkpoint_000002").mkdir(parents=True)
            (trial_dir / "checkpoint_000002" / "state.pt").write_bytes(b"weights")
            (trial_dir / "params.json").write_text(json.dumps({"trial": trial}))
            metrics = {"eval/normalized_return": np.full(2, 1.0 + index), "eval/return": np.full(2, -900.0),
                       "diverged": np.zeros(2)}
            rows = [{**flatten_members(metrics), "updates": 10 * i, "training_iteration": i, "done": i == 3}
                    for i in range(1, 4)]
            (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
        study_folder.sign_folder(folder)
        return folder
    return make
