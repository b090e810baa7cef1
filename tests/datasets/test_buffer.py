"""TransitionBuffer: what it samples is the dataset's transitions, member by member."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_sweeps import datasets as ds


@pytest.fixture
def pendulum_data(pendulum_episodes, write_episodes):
    write_episodes("pendulum/test-v0", "Pendulum-v1", pendulum_episodes)
    return ds.load("pendulum/test-v0")


def test_sampled_rows_are_the_datasets_transitions(pendulum_data):
    buffer = ds.TransitionBuffer.from_dataset(pendulum_data)
    assert buffer.size == pendulum_data.num_transitions
    generator = torch.Generator().manual_seed(0)
    indices = buffer.sample_indices(32, members=4, generator=generator)
    batch = buffer.gather(indices)
    assert batch.observations.shape == (4, 32, 3) and batch.actions.shape == (4, 32, 1)
    assert batch.rewards.shape == batch.terminals.shape == batch.timeouts.shape == (4, 32)
    i = indices.numpy()
    np.testing.assert_allclose(batch.observations.numpy(), pendulum_data.observations[i])
    np.testing.assert_allclose(batch.next_observations.numpy(), pendulum_data.next_observations[i])
    np.testing.assert_allclose(batch.actions.numpy(), pendulum_data.actions[i])
    np.testing.assert_allclose(batch.rewards.numpy(), pendulum_data.rewards[i])
    np.testing.assert_array_equal(batch.timeouts.numpy(), pendulum_data.timeouts[i].astype(np.float32))
    np.testing.assert_array_equal(batch.terminals.numpy(), pendulum_data.terminals[i].astype(np.float32))
    # Members draw independent minibatches.
    assert not torch.equal(indices[0], indices[1])


def test_member_k_of_a_packed_sample_equals_a_solo_sample_with_its_seed(pendulum_data):
    buffer = ds.TransitionBuffer.from_dataset(pendulum_data)
    seeds = [3, 14, 15, 92]
    packed = buffer.sample(64, members=4, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for k, seed in enumerate(seeds):
        solo = buffer.sample(64, members=1, generator=[torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(packed.observations[k], solo.observations[0])
        torch.testing.assert_close(packed.rewards[k], solo.rewards[0])


def test_mixing_takes_the_asked_share_from_each_buffer():
    real, model = ds.TransitionBuffer(100, 2, 1), ds.TransitionBuffer(100, 2, 1)
    zeros = np.zeros((100, 2))
    real.add(zeros, np.zeros((100, 1)), np.ones(100), zeros, np.zeros(100), np.zeros(100))
    model.add(zeros, np.zeros((100, 1)), -np.ones(100), zeros, np.zeros(100), np.zeros(100))
    for ratio, expected in ((0.05, 13), (0.5, 128), (1.0, 256), (0.0, 0)):
        batch = real.sample_mixed(model, ratio, 256, members=3)
        assert batch.rewards.shape == (3, 256)
        assert (batch.rewards == 1).sum(dim=1).tolist() == [expected] * 3
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        real.sample_mixed(model, 1.5, 256)


def test_ring_buffer_overwrites_the_oldest():
    buffer = ds.TransitionBuffer(5, 1, 1)
    for start in (0, 3, 6):
        values = np.arange(start, start + 3, dtype=np.float32)
        buffer.add(values[:, None], values[:, None], values, values[:, None], np.zeros(3), np.zeros(3))
    assert buffer.size == 5
    kept = buffer.gather(torch.arange(5)).rewards.tolist()
    assert sorted(kept) == [4, 5, 6, 7, 8]
    state = buffer.state_dict()
    restored = ds.TransitionBuffer(5, 1, 1)
    restored.load_state_dict(state)
    assert restored.gather(torch.arange(5)).rewards.tolist() == kept
    with pytest.raises(ValueError, match="columns"):
        buffer.add(np.zeros((2, 3)), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 3)), np.zeros(2), np.zeros(2))


def test_observation_normalization_and_reward_scaling(pendulum_data):
    scale = ds.iql_reward_scale(pendulum_data.episode_returns)
    spread = pendulum_data.episode_returns.max() - pendulum_data.episode_returns.min()
    assert scale == pytest.approx(1000.0 / spread)
    buffer = ds.TransitionBuffer.from_dataset(pendulum_data, normalize_observations=True, reward_scale=scale,
                                              reward_bias=-1.0)
    everything = buffer.gather(torch.arange(buffer.size))
    np.testing.assert_allclose(everything.observations.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(everything.observations.std(0).numpy(), 1.0, atol=2e-3)
    np.testing.assert_allclose(everything.rewards.numpy(), pendulum_data.rewards * scale - 1.0, rtol=1e-5)
    raw = torch.as_tensor(pendulum_data.next_observations[:4])
    torch.testing.assert_close(buffer.normalize(raw), everything.next_observations[:4])
    with pytest.raises(ValueError, match="same return"):
        ds.iql_reward_scale(np.array([5.0, 5.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_cuda(pendulum_data):
    buffer = ds.TransitionBuffer.from_dataset(pendulum_data, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch = buffer.sample(256, members=8, generator=generator)
    assert batch.observations.is_cuda and batch.observations.shape == (8, 256, 3)
    i = buffer.sample_indices(16, 2, torch.Generator(device="cuda").manual_seed(1))
    np.testing.assert_allclose(buffer.gather(i).rewards.cpu().numpy(), pendulum_data.rewards[i.cpu().numpy()])
