"""Whole episodes from a batch of Gymnasium envs driven by one batched policy.

Each env runs until it has finished its own quota (a number of episodes, or of transitions, after
which it finishes the episode under way). Quotas per env keep the sample unbiased: stopping at "the
first K episodes to finish" over-represents short episodes.

A time limit cuts short a task that would go on (value functions bootstrap through the cut): with
`tail_steps`, an episode the limit cuts keeps running that many unscored steps past it (the envs are made with
the limit extended), so that discounted returns computed from it miss only gamma^tail_steps of the value
there. The episode itself stays exactly the one the env's own limit ends; the tail's rewards ride beside it.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
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
    tail_rewards: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))   # [tail], past the time limit
    tail_terminated: bool = False      # the tail ended in a true terminal (its returns then miss nothing)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))


class MujocoWarning(UserWarning):
    """A warning of MuJoCo's C library (a deprecated model attribute, say), as a Python warning."""


def _warn_from_mujoco(message: str) -> None:
    try:
        warnings.warn(message.strip(), MujocoWarning, stacklevel=2)
    except Exception:               # warnings made errors: nothing can raise through MuJoCo's C caller
        print(f"MuJoCo warning: {message.strip()}", file=sys.stderr)


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings through Python's `warnings` (each shown once per process by its default filter).

    MuJoCo's own handler prints every one and appends it to MUJOCO_LOG.TXT in the working folder: with
    mujoco 4, gymnasium's HalfCheetah-v5 model warns of a deprecated attribute at every `gym.make`, about 200
    times in one `dataset make` and in every trial's folder. A handler someone else installed is kept."""
    try:
        import mujoco
    except ImportError:             # no MuJoCo here: nothing to route
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_warn_from_mujoco)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make`, with Dict observations flattened the way the dataset layer flattens them."""
    route_mujoco_warnings()
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    return env


def time_limit(env_id: str) -> int | None:
    """The env's own `max_episode_steps` (None: it has none)."""
    probe = make_env(env_id)
    try:
        return probe.spec.max_episode_steps
    finally:
        probe.close()


UNLIMITED_EPISODE_CAP = 100_000    # steps an episode of an env without a registered time limit may last


def rollout(env_id: str, policy: Policy, num_envs: int, seed: int | list[int], episodes_per_env: int | None = None,
            transitions_per_env: int | None = None, tail_steps: int = 0,
            on_progress: Callable[[int], None] | None = None) -> list[Episode]:
    """Run `num_envs` envs until each has done `episodes_per_env` episodes or reached
    `transitions_per_env` transitions (finishing its last episode); return the episodes, env by env.
    Env i is seeded at its first reset with `seed + i`, or with `seed[i]` when given a list.
    An episode cut by the env's time limit goes on for `tail_steps` more steps (or to a terminal) into its
    `tail_rewards`; those steps count toward no quota and the env is busy meanwhile.
    `on_progress(k)` hears after each step how many more transitions count toward the transition quotas.
    An env without a registered time limit may end its episodes itself; one that has not after
    UNLIMITED_EPISODE_CAP steps is a DatasetError (an evaluation that would never end)."""
    if (episodes_per_env is None) == (transitions_per_env is None):
        raise ValueError("give exactly one of episodes_per_env and transitions_per_env")
    if tail_steps < 0:
        raise ValueError(f"tail_steps={tail_steps} must be at least 0")
    seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [seed + i for i in range(num_envs)]
    if len(seeds) != num_envs:
        raise ValueError(f"{len(seeds)} seeds for {num_envs} envs")
    registered = time_limit(env_id)
    limit = registered if tail_steps else None
    extended = {} if limit is None else {"max_episode_steps": limit + tail_steps}
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id, **extended) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        obs, _ = envs.reset(seed=seeds)
        current = [{"obs": [o], "act": [], "rew": [], "term": [], "trunc": []} for o in obs]
        tails: list[list[float] | None] = [None] * num_envs    # env i's tail rewards while it runs past its limit
        finished: list[list[Episode]] = [[] for _ in range(num_envs)]
        steps = np.zeros(num_envs, dtype=np.int64)
        active = np.ones(num_envs, dtype=bool)
        reported = 0
        while active.any():
            actions = np.asarray(policy(np.asarray(obs, dtype=np.float32)), dtype=envs.action_space.dtype)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            for i in np.flatnonzero(active):
                done = terminations[i] or truncations[i]
                record = current[i]
                if tails[i] is not None:
                    tails[i].append(rewards[i])
                else:
                    # At the env's own limit the episode is truncated, as without a tail, even though the
                    # extended limit lets the env go on.
                    at_limit = len(record["rew"]) + 1 == limit
                    record["obs"].append(infos["final_obs"][i] if done else next_obs[i])
                    record["act"].append(actions[i])
                    record["rew"].append(rewards[i])
                    record["term"].append(terminations[i])
                    record["trunc"].append(truncations[i] or at_limit)
                    steps[i] += 1
                    if registered is None and not done and len(record["rew"]) >= UNLIMITED_EPISODE_CAP:
                        from .loading import DatasetError
                        raise DatasetError(f"env {env_id} ran an episode {UNLIMITED_EPISODE_CAP:,} steps without "
                                           f"ending and has no time limit, so it might never end: register it "
                                           f"with max_episode_steps (gymnasium.register(..., max_episode_steps=N))")
                    if at_limit and not done:
                        tails[i] = []
                        continue
                if done:
                    finished[i].append(Episode(np.asarray(record["obs"], np.float32),
                                               np.asarray(record["act"], np.float32),
                                               np.asarray(record["rew"], np.float32),
                                               np.asarray(record["term"], bool), np.asarray(record["trunc"], bool),
                                               seed=seeds[i] if len(finished[i]) == 0 else None,
                                               tail_rewards=np.asarray(tails[i] or [], np.float32),
                                               tail_terminated=tails[i] is not None and bool(terminations[i])))
                    current[i] = {"obs": [next_obs[i]], "act": [], "rew": [], "term": [], "trunc": []}
                    tails[i] = None
                    active[i] = (len(finished[i]) < episodes_per_env if episodes_per_env is not None
                                 else steps[i] < transitions_per_env)
            obs = next_obs
            if on_progress is not None and transitions_per_env is not None:
                counted = int(np.minimum(steps, transitions_per_env).sum())
                on_progress(counted - reported)
                reported = counted
    finally:
        envs.close()
    return [episode for per_env in finished for episode in per_env]


def random_policy(action_space: gym.spaces.Box, seed: int) -> Policy:
    """Uniform actions within the bounds, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(action_space.low, action_space.high, size=(len(obs), *action_space.shape))
