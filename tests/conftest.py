"""Shared fixtures: every test gets its own Minari root, one torch thread, and no network waits."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    """An empty MINARI_DATASETS_PATH per test, so tests never see the user's datasets or each other's."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def pendulum_episodes():
    """Six random-policy Pendulum-v1 episodes (each truncated at 200 steps) from three envs."""
    import gymnasium as gym
    from offline_sweeps.datasets import rollout
    from offline_sweeps.datasets.rollout import random_policy
    space = gym.make("Pendulum-v1").action_space
    return rollout("Pendulum-v1", random_policy(space, seed=1), num_envs=3, seed=5, episodes_per_env=2)


def write(dataset_id, env_id, episodes, ref_min=-1000.0, ref_max=-100.0, **metadata):
    from offline_sweeps.datasets.builder import write_dataset
    write_dataset(dataset_id, env_id, episodes, ref_min, ref_max, {"behavior_policy": "test", **metadata})


@pytest.fixture
def write_episodes():
    return write


def assert_close(a, b, **kwargs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kwargs)
