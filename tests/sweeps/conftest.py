"""Fixtures for study tests: an embedded Ray and a tiny IQL study on the session's Pendulum data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
