"""datasets.load: flattening checked against the raw episodes, caching, and every bad-input error."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest

from offline_sweeps import datasets as ds
from offline_sweeps.datasets.loading import CACHE_NAME, flat_observation
from offline_sweeps.datasets.rollout import random_policy


def check_flattening(data: ds.OfflineDataset, episodes) -> None:
    """Every transition of the flat arrays against the episode it came from."""
    assert data.num_episodes == len(episodes)
    assert data.num_transitions == sum(len(e) for e in episodes)
    np.testing.assert_array_equal(data.episode_lengths, [len(e) for e in episodes])
    np.testing.assert_array_equal(data.episode_starts, np.cumsum([0] + [len(e) for e in episodes])[:-1])
    for start, episode in zip(data.episode_starts, episodes):
        steps = slice(start, start + len(episode))
        np.testing.assert_allclose(data.observations[steps], episode.observations[:-1])
        np.testing.assert_allclose(data.next_observations[steps], episode.observations[1:])
        np.testing.assert_allclose(data.actions[steps], episode.actions)
        np.testing.assert_allclose(data.rewards[steps], episode.rewards)
        np.testing.assert_array_equal(data.terminals[steps], episode.terminations)
        np.testing.assert_array_equal(data.timeouts[steps], episode.truncations)
    np.testing.assert_allclose(data.episode_returns, [e.ret for e in episodes], rtol=1e-6)


def test_pendulum_flattening_keeps_timeouts_apart_from_terminals(pendulum_episodes, write_episodes):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    data = ds.load("pendulum/test-v0")
    check_flattening(data, pendulum_episodes)
    # Pendulum never terminates; each episode is cut at 200 steps, and only its last step is a timeout.
    assert not data.terminals.any()
    assert data.timeouts.sum() == len(pendulum_episodes)
    assert data.timeouts[data.episode_starts + data.episode_lengths - 1].all()
    # The truncated step keeps its real next observation, not the observation after the reset.
    last = data.episode_starts[0] + data.episode_lengths[0] - 1
    np.testing.assert_allclose(data.next_observations[last], pendulum_episodes[0].observations[-1])
    assert not np.allclose(data.next_observations[last], data.observations[last + 1])
    assert data.env_id == "Pendulum-v1" and (data.obs_dim, data.act_dim) == (3, 1)
    np.testing.assert_allclose(data.obs_mean, data.observations.mean(0), rtol=1e-5)


def test_hopper_flattening_marks_terminations(write_episodes):
    space = gym.make("Hopper-v5").action_space
    episodes = ds.rollout("Hopper-v5", random_policy(space, seed=0), num_envs=4, seed=0, episodes_per_env=2)
    write_episodes("hopper/test-v0", "Hopper-v5", episodes)
    data = ds.load("hopper/test-v0")
    check_flattening(data, episodes)
    # A random hopper falls over long before the 1000-step limit: every episode ends in a termination.
    ends = data.episode_starts + data.episode_lengths - 1
    assert data.terminals[ends].all() and data.terminals.sum() == len(episodes)
    assert not data.timeouts.any()
    assert (data.obs_dim, data.act_dim) == (11, 3)


def test_normalized_score_is_d4rl_scale(pendulum_episodes, write_episodes):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes, ref_min=-1200.0, ref_max=-200.0)
    data = ds.load("pendulum/test-v0")
    np.testing.assert_allclose(ds.normalized_score(data, [-1200.0, -700.0, -200.0, -100.0]), [0, 50, 100, 110])


def test_normalized_score_without_refs_says_so(pendulum_episodes):
    data = ds.OfflineDataset("x/y-v0", *[np.zeros((1, 1))] * 9, gym.spaces.Box(-1, 1, (1,)),
                             gym.spaces.Box(-1, 1, (1,)))
    with pytest.raises(ds.DatasetError, match="no ref_min_score/ref_max_score"):
        ds.normalized_score(data, [0.0])


def test_flat_arrays_are_cached_and_refreshed_when_the_dataset_changes(pendulum_episodes, write_episodes,
                                                                       minari_root):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    first = ds.load("pendulum/test-v0")
    cache = minari_root / "pendulum/test-v0/data" / CACHE_NAME
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    second = ds.load("pendulum/test-v0")
    assert cache.stat().st_mtime_ns == stamp                       # read, not rewritten
    np.testing.assert_array_equal(first.observations, second.observations)
    # A stale cache (its fingerprint no longer matches the data files) is rebuilt, not trusted.
    with np.load(cache) as stored:
        arrays = dict(stored)
    arrays["rewards"] = arrays["rewards"] + 1.0
    arrays["fingerprint"] = np.array("stale")
    np.savez(cache, **arrays)
    np.testing.assert_array_equal(ds.load("pendulum/test-v0").rewards, first.rewards)


def test_local_dataset_by_path(pendulum_episodes, write_episodes, minari_root):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    assert ds.load(str(minari_root / "pendulum/test-v0")).num_episodes == len(pendulum_episodes)


def test_unknown_id_offline_fails_fast_and_names_the_fix(pendulum_episodes, write_episodes, monkeypatch):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for variable in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    started = time.perf_counter()
    with pytest.raises(ds.DatasetError) as error:
        ds.load("mujoco/hopper/medium-v0")
    assert time.perf_counter() - started < 2.0
    message = str(error.value)
    assert "unreachable" in message and "pendulum/test-v0" in message and "dataset make" in message
    assert "\n" not in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ds.DatasetError, match="HF_HUB_OFFLINE"):
        ds.load("mujoco/hopper/medium-v0")
    with pytest.raises(ds.DatasetError, match="downloading is turned off"):
        ds.load("mujoco/hopper/medium-v0", download=False)


def test_truncated_file_is_reported_as_corrupt(pendulum_episodes, write_episodes, minari_root):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    data_file = minari_root / "pendulum/test-v0/data/main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    with pytest.raises(ds.DatasetError, match="corrupt or truncated"):
        ds.load("pendulum/test-v0")


def test_empty_and_incomplete_datasets_are_refused(pendulum_episodes, write_episodes, minari_root):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    metadata_file = minari_root / "pendulum/test-v0/data/metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata_file.write_text(json.dumps({**metadata, "total_episodes": 0}))
    with pytest.raises(ds.DatasetError, match="has no episodes"):
        ds.load("pendulum/test-v0")
    metadata_file.unlink()
    with pytest.raises(ds.DatasetError, match="incomplete"):
        ds.load("pendulum/test-v0")
    assert "pendulum/test-v0" not in ds.local_dataset_ids()


def test_env_whose_spaces_do_not_fit_is_refused(pendulum_episodes, write_episodes):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    data = ds.load("pendulum/test-v0")
    ds.check_env_compatible(data, gym.make("Pendulum-v1"))
    with pytest.raises(ds.DatasetError, match=r"observations of size 11 \(dataset: 3\).*Pendulum-v1"):
        ds.check_env_compatible(data, gym.make("Hopper-v5"))
    with pytest.raises(ds.DatasetError, match="action bounds"):
        ds.check_env_compatible(data, gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), np.float32(-1), np.float32(1)))


def test_dict_observations_flatten_like_gymnasium():
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (4,)), "desired_goal": gym.spaces.Box(-1, 1, (2,)),
                             "achieved_goal": gym.spaces.Box(-1, 1, (2,))})
    samples = [space.sample() for _ in range(5)]
    batched = {key: np.stack([s[key] for s in samples]) for key in space.spaces}
    expected = np.stack([gym.spaces.flatten(space, s) for s in samples])
    np.testing.assert_allclose(flat_observation(space, batched), expected)


# --- data checked at the door ---------------------------------------------------------------------------------------
def corrupt(minari_root, dataset_id: str, episode: int, field: str, step: int, value: float) -> None:
    """Overwrite one value of one episode in the dataset's HDF5 file, as a damaged or hand-edited file would hold."""
    import h5py
    with h5py.File(minari_root / dataset_id / "data" / "main_data.hdf5", "r+") as handle:
        data = handle[f"episode_{episode}"][field]
        values = data[...]
        values[step] = value
        data[...] = values


@pytest.mark.parametrize("field, flat_field, step, index", [("rewards", "rewards", 3, 203),
                                                           ("observations", "observations", 5, 205),
                                                           ("actions", "actions", 0, 200)])
def test_a_non_finite_value_is_refused_with_its_first_index(pendulum_episodes, write_episodes, minari_root, field,
                                                            flat_field, step, index):
    write_episodes("pendulum/bad-v0", "Pendulum-v1", pendulum_episodes)
    corrupt(minari_root, "pendulum/bad-v0", 1, field, step, np.nan if field == "rewards" else np.inf)
    with pytest.raises(ds.DatasetError, match=rf"{flat_field}\[{index}\] is not finite.*clean the data"):
        ds.load("pendulum/bad-v0")


def set_metadata(minari_root, dataset_id: str, **values) -> None:
    path = minari_root / dataset_id / "data" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata.update(values)
    path.write_text(json.dumps(metadata))


@pytest.mark.parametrize("refs, message", [({"ref_min_score": -100.0, "ref_max_score": -100.0}, "must be greater"),
                                           ({"ref_min_score": -50.0, "ref_max_score": -100.0}, "must be greater"),
                                           ({"ref_max_score": "high"}, "ref_max_score='high' is not a finite number"),
                                           ({"ref_min_score": None}, "has ref_max_score but no ref_min_score")])
def test_bad_reference_scores_are_refused(pendulum_episodes, write_episodes, minari_root, refs, message):
    write_episodes("pendulum/refs-v0", "Pendulum-v1", pendulum_episodes)
    set_metadata(minari_root, "pendulum/refs-v0", **refs)
    with pytest.raises(ds.DatasetError, match=message):
        ds.load("pendulum/refs-v0")


def test_dataset_list_reports_a_bad_dataset_and_goes_on(pendulum_episodes, write_episodes, minari_root, capsys):
    import argparse
    import importlib.util
    from pathlib import Path
    write_episodes("pendulum/a-v0", "Pendulum-v1", pendulum_episodes)
    write_episodes("pendulum/b-v0", "Pendulum-v1", pendulum_episodes)
    set_metadata(minari_root, "pendulum/a-v0", ref_min_score="low")
    spec = importlib.util.spec_from_file_location("launch", Path(__file__).resolve().parents[2] / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    launch.dataset_list(argparse.Namespace())
    out = capsys.readouterr().out
    assert "pendulum/a-v0" in out and "unusable" in out and "not a finite number" in out
    assert [line for line in out.splitlines() if "pendulum/b-v0" in line and "refs [-1000.0, -100.0]" in line]


@pytest.mark.parametrize("breaks, message", [
    (lambda e: e.rewards.__setitem__(0, np.nan), "episode 1 has NaN or infinite rewards"),
    (lambda e: e.actions.__setitem__(0, 5.0), "actions outside Pendulum-v1's bounds"),
])
def test_write_dataset_refuses_what_does_not_fit_or_is_not_finite(pendulum_episodes, write_episodes, minari_root,
                                                                   breaks, message):
    breaks(pendulum_episodes[1])
    with pytest.raises(ds.DatasetError, match=message):
        write_episodes("pendulum/refused-v0", "Pendulum-v1", pendulum_episodes)
    assert not (minari_root / "pendulum" / "refused-v0").exists()
    with pytest.raises(ds.DatasetError, match=r"episode 0 has observations of shape \(201, 3\); HalfCheetah-v5 needs"):
        write_episodes("pendulum/refused-v0", "HalfCheetah-v5", pendulum_episodes)


UNSTABLE_ENVS = """
import mujoco, numpy as np
from offline_sweeps.datasets.rollout import make_env
for _ in range(3):                       # each a fresh model and MjData: MuJoCo warns for each
    env = make_env("HalfCheetah-v5")
    model = env.unwrapped.model
    data = mujoco.MjData(model)
    data.qpos[0] = np.nan
    mujoco.mj_step(model, data)
    env.close()
"""


def test_mujoco_warnings_are_python_warnings_shown_once_and_leave_no_log_file(tmp_path):
    """MuJoCo's own handler prints each warning every time and appends it to MUJOCO_LOG.TXT in the working
    folder (a trial's, the user's); make_env routes them through `warnings`, once per process and message."""
    done = subprocess.run([sys.executable, "-c", UNSTABLE_ENVS], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert said.count("Nan, Inf or huge value in QPOS") == 1 and "MujocoWarning" in said
    assert said.count("settotalmass") <= 1
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
