"""Shared fixtures: every test gets its own Minari root and one torch thread; Pendulum datasets are built
once per session by the real builder and loaded by folder path."""
from __future__ import annotations

import os

import pytest
import torch

from offline_sweeps.algorithms.host_memory import keep_freed_memory
from offline_sweeps.algorithms.online_sac import OnlineSAC
from offline_sweeps.datasets import BuildConfig, build

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)
keep_freed_memory()      # as every CPU training process does (TrainRun)


# The suite runs on two pytest-xdist workers (pyproject.toml), one torch thread each. Tests that start an
# embedded Ray, or launch.py commands that do, share one worker so two Ray instances never compete for the
# two cores; everything else (the learning checks, reports on synthetic folders, validation) spreads over both.
RAY_MODULES = tuple(f"tests/sweeps/{name}.py" for name in ("test_cluster_job", "test_faults", "test_model_sweep",
                                                           "test_optuna", "test_disk_full", "test_report_real",
                                                           "test_sigterm", "test_sweep_e2e")) + (
    "tests/algorithms/test_trainer.py::test_tune_", "tests/test_launch.py::test_bench_tune")


def pytest_collection_modifyitems(config, items):
    """The Ray group runs as one unit on one worker, so it goes first (with the long learning checks next),
    and the other worker works through the rest meanwhile: handed out last, the group left one worker idle for
    minutes at the end. Within each, the tests that do not need the session's Pendulum datasets come first, so
    one worker builds them while the other trains on data of its own (both waited on the build before)."""
    for item in items:
        if item.nodeid.startswith(RAY_MODULES):
            item.add_marker(pytest.mark.xdist_group("ray"))
    items.sort(key=lambda item: (not item.nodeid.startswith(RAY_MODULES), item.get_closest_marker("slow") is None,
                                 "pendulum_datasets" in getattr(item, "fixturenames", ())))


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Each test signs and checks study folders with its own resume key, never the user's (~/.config): the
    installation's config dir (where the key lives) is this folder in the test's own."""
    folder = tmp_path / "config"
    monkeypatch.setenv("OFFLINE_SWEEPS_CONFIG_DIR", str(folder))
    return folder


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


@pytest.fixture(scope="session")
def pendulum_datasets(tmp_path_factory):
    """{"medium": path, "expert": path}: 10,000 transitions each. Medium comes from a small SAC frozen at an
    eval return of -900 (its own data return about -900, normalized about 30); expert from the scripted
    energy-shaping controller (a narrow, deterministic dataset). Built once per run: the first xdist worker to
    ask builds them (about 30 s) under a file lock in the folder the workers share, the other reads them."""
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):      # each worker's base folder sits in the run's shared one
        shared = shared.parent
    root = shared / "pendulum-datasets"
    paths = {kind: root / "pendulum" / f"{kind}-v0" for kind in ("medium", "expert")}
    with FileLock(str(shared / "pendulum-datasets.lock")):
        if not all(path.is_dir() for path in paths.values()):
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MINARI_DATASETS_PATH", str(root))
                build(BuildConfig("Pendulum-v1", kinds=("medium", "expert"), transitions=10_000, medium_return=-900.0,
                                  expert="scripted", sac_steps=10_000, sac_start_steps=1000, eval_every=250,
                                  sac_hidden=(64, 64), ref_episodes=10, seed=0),
                      log=lambda _: None, make_agent=OnlineSAC)
    return {kind: str(path) for kind, path in paths.items()}
