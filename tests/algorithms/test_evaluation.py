"""evaluate_population's Q-vs-Monte-Carlo diagnostic: despite the time limit, eval/mc_return_mean is within 1%
of the policy's discounted value computed independently (a run far past the limit), on a constant-reward env,
Pendulum and HalfCheetah; the scored episode (eval/return, eval/length) stays exactly the env's own."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.evaluation import evaluate_population
from offline_sweeps.algorithms.trainer import TrainConfig
from offline_sweeps.datasets import rollout

GAMMA = 0.99
REWARD = -5.0


class ConstantRewardEnv(gym.Env):
    """Reward REWARD on every step, never terminates; the observation is the step count."""
    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, truncate_at: int | None = None, terminate_at: int | None = None):
        self.truncate_at = truncate_at     # truncates itself, as an env without a registered limit may
        self.terminate_at = terminate_at   # a true terminal
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), REWARD, self.t == self.terminate_at, self.t == self.truncate_at, {}


gym.register("ConstantReward-v0", entry_point=ConstantRewardEnv, max_episode_steps=200)
gym.register("ConstantRewardSelfTruncating-v0", entry_point=ConstantRewardEnv, max_episode_steps=None,
             kwargs={"truncate_at": 200})
gym.register("ConstantRewardEndless-v0", entry_point=ConstantRewardEnv, max_episode_steps=None)
gym.register("ConstantRewardTerminating-v0", entry_point=ConstantRewardEnv, max_episode_steps=200,
             kwargs={"terminate_at": 50})


class FixedPolicies:
    """The learner interface evaluate_population uses, around one fixed policy per member and a zero critic."""
    has_critic = True
    device = torch.device("cpu")

    def __init__(self, policies, obs_dim: int, act_dim: int):
        self.policies, self.obs_dim, self.act_dim = policies, obs_dim, act_dim
        self.members = len(policies)
        self.diverged = torch.zeros(self.members, dtype=torch.bool)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """[P, E, obs_dim] -> [P, E, act_dim]"""
        return torch.stack([torch.as_tensor(policy(o.numpy()), dtype=torch.float32)
                            for policy, o in zip(self.policies, obs)])

    def q_value(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[P, N, obs_dim], [P, N, act_dim] -> [P, N]"""
        return torch.zeros(obs.shape[:2])


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    discounts = gamma ** np.arange(len(rewards))
    return np.cumsum((rewards * discounts)[::-1])[::-1] / discounts


def reference_value(env_id: str, policy, seeds: list[int], gamma: float, extra: int = 2000) -> tuple[float, float]:
    """(mean discounted return-to-go over the scored steps, mean scored return) of `policy` run alone from each
    seed for the time limit plus `extra` steps (gamma^2000 ~ 2e-9: the value's tail is all there)."""
    limit = gym.spec(env_id).max_episode_steps
    values, returns = [], []
    for seed in seeds:
        env = gym.make(env_id, max_episode_steps=limit + extra)
        obs, _ = env.reset(seed=seed)
        rewards, terminated = [], False
        while not terminated and len(rewards) < limit + extra:
            # Cast as the rollout casts: HalfCheetah is chaotic, a float64 action soon leads elsewhere.
            action = np.asarray(policy(obs[None].astype(np.float32))[0], env.action_space.dtype)
            obs, reward, terminated, _, _ = env.step(action)
            rewards.append(reward)
        scored = min(limit, len(rewards))
        values.append(returns_to_go(np.array(rewards, np.float64), gamma)[:scored])
        returns.append(sum(rewards[:scored]))
    return float(np.concatenate(values).mean()), float(np.mean(returns))


def damping(obs: np.ndarray) -> np.ndarray:
    """Pendulum: a torque against the angular velocity; the pendulum settles hanging down (r -> -pi^2)."""
    return np.clip(-0.5 * obs[:, 2:3], -2.0, 2.0)


def linear_policy(seed: int, obs_dim: int, act_dim: int):
    weights = np.random.default_rng(seed).normal(0.0, 0.3, (obs_dim, act_dim))
    return lambda obs: np.tanh(obs @ weights)


@pytest.mark.parametrize("env_id, policies, obs_dim, act_dim", [
    ("Pendulum-v1", [damping, lambda obs: 0.5 * damping(obs)], 3, 1),
    ("HalfCheetah-v5", [linear_policy(0, 17, 6), linear_policy(1, 17, 6)], 17, 6),
])
def test_mc_return_is_within_one_percent_of_the_true_value(env_id, policies, obs_dim, act_dim):
    metrics = evaluate_population(FixedPolicies(policies, obs_dim, act_dim), env_id, episodes=2, seed=3, gamma=GAMMA)
    for member, policy in enumerate(policies):
        value, scored_return = reference_value(env_id, policy, [3, 4], GAMMA)
        assert metrics["eval/mc_return_mean"][member] == pytest.approx(value, rel=0.01), (member, value)
        assert metrics["eval/return"][member] == pytest.approx(scored_return, rel=1e-5)
        assert metrics["eval/length"][member] == gym.spec(env_id).max_episode_steps
        assert metrics["eval/q_overestimation"][member] == pytest.approx(-metrics["eval/mc_return_mean"][member])


def test_mc_return_on_a_constant_reward_is_the_geometric_sum_up_to_the_tail():
    learner = FixedPolicies([lambda obs: np.zeros((len(obs), 1))], 1, 1)
    metrics = evaluate_population(learner, "ConstantReward-v0", episodes=2, seed=0, gamma=GAMMA, mc_tail_steps=300)
    to_go = 200 - np.arange(200) + 300      # steps from each scored step to the end of its tail
    exact = REWARD * (1 - GAMMA ** to_go).mean() / (1 - GAMMA)
    assert metrics["eval/mc_return_mean"][0] == pytest.approx(exact, rel=1e-9)
    assert metrics["eval/return"][0] == REWARD * 200 and metrics["eval/length"][0] == 200
    assert metrics["eval/return_std"][0] == 0.0
    default = evaluate_population(learner, "ConstantReward-v0", episodes=2, seed=0, gamma=GAMMA)
    assert default["eval/mc_return_mean"][0] == pytest.approx(REWARD / (1 - GAMMA), rel=0.01)


def test_without_a_tail_only_steps_with_a_long_enough_future_are_compared():
    """An env that cuts itself short (no registered limit to extend) leaves no tail: the steps closer than
    mc_tail_steps to the cut are left out; mc_tail_steps=0 keeps them all and reads the truncated sum."""
    learner = FixedPolicies([lambda obs: np.zeros((len(obs), 1))], 1, 1)
    kept = evaluate_population(learner, "ConstantRewardSelfTruncating-v0", episodes=1, seed=0, gamma=GAMMA,
                               mc_tail_steps=150)
    exact = REWARD * (1 - GAMMA ** (200 - np.arange(50))).mean() / (1 - GAMMA)
    assert kept["eval/mc_return_mean"][0] == pytest.approx(exact, rel=1e-9)
    assert kept["eval/length"][0] == 200
    cut = evaluate_population(learner, "ConstantReward-v0", episodes=1, seed=0, gamma=GAMMA, mc_tail_steps=0)
    exact = REWARD * (1 - GAMMA ** (200 - np.arange(200))).mean() / (1 - GAMMA)
    assert cut["eval/mc_return_mean"][0] == pytest.approx(exact, rel=1e-9)


def test_a_tail_leaves_the_scored_episode_unchanged():
    learner = FixedPolicies([damping], 3, 1)
    with_tail = evaluate_population(learner, "Pendulum-v1", episodes=3, seed=7, gamma=GAMMA)
    without = evaluate_population(learner, "Pendulum-v1", episodes=3, seed=7, gamma=GAMMA, mc_tail_steps=0)
    for key in ("eval/return", "eval/return_std", "eval/length"):
        np.testing.assert_array_equal(with_tail[key], without[key])


def test_a_true_terminal_needs_no_tail():
    """An episode that terminates before its limit is whole: no tail is run, every step's return is exact."""
    episodes = rollout("ConstantRewardTerminating-v0", lambda obs: np.zeros((len(obs), 1)), 2, 0, episodes_per_env=1,
                       tail_steps=500)
    assert [len(e) for e in episodes] == [50, 50] and all(len(e.tail_rewards) == 0 for e in episodes)
    learner = FixedPolicies([lambda obs: np.zeros((len(obs), 1))], 1, 1)
    metrics = evaluate_population(learner, "ConstantRewardTerminating-v0", episodes=2, seed=0, gamma=GAMMA)
    exact = REWARD * (1 - GAMMA ** (50 - np.arange(50))).mean() / (1 - GAMMA)
    assert metrics["eval/mc_return_mean"][0] == pytest.approx(exact, rel=1e-9)
    assert metrics["eval/length"][0] == 50


def test_a_truncated_episode_carries_its_tail_beside_it():
    episodes = rollout("ConstantReward-v0", lambda obs: np.zeros((len(obs), 1)), 1, 0, episodes_per_env=2,
                       tail_steps=30)
    for episode in episodes:
        assert len(episode) == 200 and episode.truncations[-1] and not episode.truncations[:-1].any()
        assert len(episode.tail_rewards) == 30 and not episode.tail_terminated
        assert episode.observations[-1][0] == 200      # the observation at the cut, not one from the tail


def test_mc_tail_steps_is_validated():
    assert TrainConfig(algorithm="iql", dataset="unused").mc_tail_steps is None
    assert TrainConfig(algorithm="iql", dataset="unused", mc_tail_steps=0).mc_tail_steps == 0
    with pytest.raises(ConfigError, match="mc_tail_steps"):
        TrainConfig(algorithm="iql", dataset="unused", mc_tail_steps=-1)
    with pytest.raises(ConfigError, match="mc_tail_steps"):
        TrainConfig(algorithm="iql", dataset="unused", mc_tail_steps=True)


def test_more_episodes_extend_the_returns_but_not_the_q_diagnostic():
    """The last evaluation's extra episodes: every episode's return is kept, the extra ones start at seed + episodes
    (the same episodes a longer evaluation runs), and the Q diagnostic stays on the usual episodes."""
    learner = FixedPolicies([damping, lambda obs: 0.5 * damping(obs)], 3, 1)
    usual = evaluate_population(learner, "Pendulum-v1", episodes=2, seed=7, gamma=GAMMA)
    final = evaluate_population(learner, "Pendulum-v1", episodes=2, seed=7, gamma=GAMMA, more_episodes=3)
    longer = evaluate_population(learner, "Pendulum-v1", episodes=5, seed=7, gamma=GAMMA, mc_tail_steps=0)
    assert usual["eval/episode_returns"].shape == (2, 2) and final["eval/episode_returns"].shape == (2, 5)
    np.testing.assert_array_equal(final["eval/episode_returns"], longer["eval/episode_returns"])
    np.testing.assert_array_equal(final["eval/episode_returns"][:, :2], usual["eval/episode_returns"])
    assert final["eval/return"] == pytest.approx(final["eval/episode_returns"].mean(1))
    assert np.ptp(final["eval/episode_returns"][0]) > 0          # different start states, different returns
    for key in ("eval/q_mean", "eval/mc_return_mean", "eval/q_overestimation"):
        np.testing.assert_array_equal(final[key], usual[key])
    learner.diverged[1] = True
    dead = evaluate_population(learner, "Pendulum-v1", episodes=2, seed=7, gamma=GAMMA, more_episodes=3)
    assert np.isnan(dead["eval/episode_returns"][1]).all()
    np.testing.assert_array_equal(dead["eval/episode_returns"][0], final["eval/episode_returns"][0])


def test_an_env_without_a_time_limit_whose_episode_never_ends_is_one_line_not_a_hang(monkeypatch):
    """Issue 25 (a hang): an env registered without max_episode_steps that never ends an episode used to keep an
    evaluation stepping forever; past UNLIMITED_EPISODE_CAP steps it is a DatasetError naming the fix. One that
    cuts itself short (ConstantRewardSelfTruncating) is still evaluated, above."""
    from offline_sweeps.datasets import DatasetError
    import importlib
    monkeypatch.setattr(importlib.import_module("offline_sweeps.datasets.rollout"), "UNLIMITED_EPISODE_CAP", 500)
    learner = FixedPolicies([lambda obs: np.zeros((len(obs), 1))], 1, 1)
    with pytest.raises(DatasetError, match="ConstantRewardEndless-v0 ran an episode 500 steps without ending .* "
                                           "max_episode_steps") as refused:
        evaluate_population(learner, "ConstantRewardEndless-v0", episodes=1, seed=0, gamma=GAMMA)
    assert "\n" not in str(refused.value)
    assert evaluate_population(learner, "ConstantRewardSelfTruncating-v0", episodes=1, seed=0,
                               gamma=GAMMA)["eval/length"][0] == 200
