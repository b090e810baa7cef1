"""The offline dataset builder: real Minari datasets from behaviour policies, written atomically."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from offline_sweeps import datasets as ds
from offline_sweeps.algorithms.online_sac import OnlineSAC
from offline_sweeps.datasets.builder import BuildConfig, build, mean_return
from offline_sweeps.datasets.controllers import pendulum_energy_shaping
from offline_sweeps.datasets.rollout import random_policy


def quiet(_message: str) -> None:
    pass


def test_scripted_pendulum_controller_swings_up_and_holds():
    scripted = mean_return("Pendulum-v1", pendulum_energy_shaping, episodes=10, seed=0)
    random = mean_return("Pendulum-v1", random_policy(gym.make("Pendulum-v1").action_space, 0), episodes=10, seed=0)
    assert scripted > -250 and random < -900


def test_sac_reaches_its_targets_and_every_kind_is_written(minari_root):
    config = BuildConfig("Pendulum-v1", transitions=1000, medium_return=-900.0, expert_return=-300.0,
                         sac_steps=12_000, sac_start_steps=1000, eval_every=250, sac_hidden=(64, 64), num_envs=5,
                         ref_episodes=10, seed=0)
    built = {b.dataset_id: b for b in build(config, log=quiet, make_agent=OnlineSAC)}
    ids = [f"pendulum/{kind}-v0" for kind in ds.KINDS]
    assert sorted(built) == sorted(ids) == ds.local_dataset_ids()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".")]      # no staging left behind
    data = {kind: ds.load(f"pendulum/{kind}-v0") for kind in ds.KINDS}
    refs = {(d.ref_min_score, d.ref_max_score) for d in data.values()}
    assert len(refs) == 1
    ref_min, ref_max = refs.pop()
    assert ref_min < -900 and ref_max >= -300          # the expert was frozen at an eval return >= -300
    for kind, d in data.items():
        assert d.metadata["behavior_mean_return"] == pytest.approx(d.episode_returns.mean())
        assert built[d.dataset_id].transitions == d.num_transitions
        assert d.timeouts.sum() == d.num_episodes and not d.terminals.any()
    for kind in ("random", "medium", "expert"):
        assert data[kind].num_transitions == 1000        # 5 envs x one whole 200-step episode
    score = {kind: ds.normalized_score(d, d.episode_returns).mean() for kind, d in data.items()}
    assert score["random"] < 15 < score["medium"] < score["expert"]
    # medium-expert is the union of the medium and expert data; medium-replay is the agent's replay buffer
    # (complete episodes) up to the medium point, which starts with its uniform-random steps.
    np.testing.assert_allclose(np.sort(data["medium-expert"].episode_returns),
                               np.sort(np.concatenate([data["medium"].episode_returns,
                                                       data["expert"].episode_returns])))
    replay = data["medium-replay"]
    assert 1000 <= replay.num_transitions <= 12_000
    assert replay.episode_returns[:5].mean() < -900
    assert "SAC replay buffer up to step" in replay.metadata["behavior_policy"]


def test_existing_datasets_are_kept_unless_overwrite():
    config = dict(env_id="Pendulum-v1", kinds=("random",), expert="scripted", transitions=200, num_envs=1,
                  ref_episodes=2)
    build(BuildConfig(**config), log=quiet)
    first = ds.load("pendulum/random-v0").observations.copy()
    with pytest.raises(ds.DatasetError, match="already exist.*--overwrite"):
        build(BuildConfig(**config, seed=1), log=quiet)
    build(BuildConfig(**config, seed=1, overwrite=True), log=quiet)
    assert not np.allclose(ds.load("pendulum/random-v0").observations, first)


def test_an_interrupted_write_leaves_no_dataset(minari_root, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage
    original = HDF5Storage.update_episodes

    def die_after_one_episode(self, episodes):
        original(self, list(episodes)[:1])
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(HDF5Storage, "update_episodes", die_after_one_episode)
    with pytest.raises(ds.DatasetError, match="writing pendulum/random-v0 failed.*killed mid-write"):
        build(BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", transitions=400, num_envs=2,
                          ref_episodes=2), log=quiet)
    assert ds.local_dataset_ids() == []
    assert list(minari_root.iterdir()) == []
    with pytest.raises(ds.DatasetError, match="is not in"):
        ds.load("pendulum/random-v0", download=False)


def test_sac_short_of_its_target_says_what_to_change():
    config = BuildConfig("Pendulum-v1", kinds=("medium",), expert="scripted", medium_return=0.0, sac_steps=400,
                         sac_start_steps=200, eval_every=200, sac_hidden=(16, 16), eval_episodes=2, ref_episodes=2)
    with pytest.raises(ds.DatasetError, match=r"short of the target.*raise --sac-steps or lower the target"):
        build(config, log=quiet, make_agent=OnlineSAC)
    assert ds.local_dataset_ids() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"env_id": "Pendulum-v1", "kinds": ("median",)}, "unknown dataset kind.*medium-replay"),
    ({"env_id": "Hopper-v5", "expert": "scripted"}, "no scripted controller ships for Hopper-v5"),
    ({"env_id": "MountainCarContinuous-v0"}, "no medium_return known.*--medium-return"),
    ({"env_id": "MountainCarContinuous-v0", "kinds": ("random",)}, "no expert_return known.*--expert-return"),
    ({"env_id": "Pendulum-v1", "transitions": 0}, "transitions=0 must be at least 1"),
])
def test_bad_build_configs_are_refused(kwargs, message):
    with pytest.raises(ds.DatasetError, match=message):
        BuildConfig(**kwargs)


def test_discrete_action_envs_are_refused():
    with pytest.raises(ds.DatasetError, match="continuous"):
        build(BuildConfig("CartPole-v1", kinds=("random",), expert_return=100.0), log=quiet)
