"""Whole episodes from a batch of Gymnasium envs driven by one batched policy.

Each env runs until it has finished its own quota (a number of episodes, or of transitions, after
which it finishes the episode under way). Quotas per env keep the sample unbiased: stopping at "the
first K episodes to finish" over-represents short episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

Policy = Callable[[np.ndarray], np.ndarray]   # [E, obs_dim] observations -> [E, act_dim] actions


@dataclass
class Episode:
    observations: np.ndarray     # [T + 1, obs_dim], the last one after the final step
    actions: np.ndarray          # [T, act_dim]
    rewards: np.ndarray          # [T]
    terminations: np.ndarray     # [T] bool
    truncations: np.ndarray      # [T] bool
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make`, with Dict observations flattened the way the dataset layer flattens them."""
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    return env


def rollout(env_id: str, policy: Policy, num_envs: int, seed: int | list[int], episodes_per_env: int | None = None,
            transitions_per_env: int | None = None) -> list[Episode]:
    """Run `num_envs` envs until each has done `episodes_per_env` episodes or reached
    `transitions_per_env` transitions (finishing its last episode); return the episodes, env by env.
    Env i is seeded at its first reset with `seed + i`, or with `seed[i]` when given a list."""
    if (episodes_per_env is None) == (transitions_per_env is None):
        raise ValueError("give exactly one of episodes_per_env and transitions_per_env")
    seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(num_envs)]
    if len(seeds) != num_envs:
        raise ValueError(f"{len(seeds)} seeds for {num_envs} envs")
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        obs, _ = envs.reset(seed=seeds)
        current = [{"obs": [o], "act": [], "rew": [], "term": [], "trunc": []} for o in obs]
        finished: list[list[Episode]] = [[] for _ in range(num_envs)]
        steps = np.zeros(num_envs, dtype=np.int64)
        active = np.ones(num_envs, dtype=bool)
        while active.any():
            actions = np.asarray(policy(np.asarray(obs, dtype=np.float32)), dtype=envs.action_space.dtype)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            for i in np.flatnonzero(active):
                done = terminations[i] or truncations[i]
                record = current[i]
                record["obs"].append(infos["final_obs"][i] if done else next_obs[i])
                record["act"].append(actions[i])
                record["rew"].append(rewards[i])
                record["term"].append(terminations[i])
                record["trunc"].append(truncations[i])
                steps[i] += 1
                if done:
                    finished[i].append(Episode(np.asarray(record["obs"], np.float32),
                                               np.asarray(record["act"], np.float32),
                                               np.asarray(record["rew"], np.float32),
                                               np.asarray(record["term"], bool), np.asarray(record["trunc"], bool),
                                               seed=seeds[i] if len(finished[i]) == 0 else None))
                    current[i] = {"obs": [next_obs[i]], "act": [], "rew": [], "term": [], "trunc": []}
                    active[i] = (len(finished[i]) < episodes_per_env if episodes_per_env is not None
                                 else steps[i] < transitions_per_env)
            obs = next_obs
    finally:
        envs.close()
    return [episode for per_env in finished for episode in per_env]


def random_policy(action_space: gym.spaces.Box, seed: int) -> Policy:
    """Uniform actions within the bounds, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(action_space.low, action_space.high, size=(len(obs), *action_space.shape))
