"""Evaluate a population: E episodes per member, all P x E envs stepped together, deterministic policies.

Besides the return, it measures what the lecture plots next to it: the learned Q at the (s, a) the
policy visited against the discounted Monte-Carlo return that followed, so overestimation is visible.
A time-limit truncation is not the end of the task (Q bootstraps through it), so the Monte-Carlo return of
a step near the cut must still see the reward after it. Each episode the limit cuts therefore runs on for
`mc_tail_steps` unscored steps (default ceil(5 / (1 - gamma)): 500 at gamma 0.99), whose rewards feed only
the Monte-Carlo returns; then every scored step is compared, and the return misses at most
gamma^mc_tail_steps <= e^-5 (0.7%) of the value at the cut. A bootstrap from the learned Q would hide the
very error being measured. eval/return and eval/length are the episode up to the env's own limit.

The run's last evaluation keeps every episode's return (`eval/episode_returns`), the arms of the bandit protocol of
Unifloral (Jackson et al. 2025; sweeps/selection.py), and runs `more_episodes` beyond the usual ones for it. Those
run without the Monte-Carlo tail: the Q diagnostic stays on the usual episodes, as at every other evaluation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..datasets.rollout import Episode, rollout


def default_mc_tail_steps(gamma: float) -> int:
    """ceil(5 / (1 - gamma)): gamma^steps <= e^-5, since log(gamma) <= -(1 - gamma)."""
    return math.ceil(5.0 / (1.0 - gamma))


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_(t+k) along the last axis: `[..., T]` rewards -> `[..., T]` returns. Episodes of
    different lengths stack when padded with zero rewards after their end."""
    returns = np.empty(rewards.shape, dtype=np.float64)
    running = np.zeros(rewards.shape[:-1], dtype=np.float64)
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        returns[..., t] = running
    return returns


def compared_steps(episode: Episode, tail_steps: int) -> int:
    """How many leading steps of `episode` have a Monte-Carlo return that misses at most gamma^tail_steps of
    their value: all when the run (episode and tail) ended in a true terminal or the tail is whole, else those
    with at least `tail_steps` recorded steps after them (an env that cuts itself short leaves no tail)."""
    if episode.terminations[-1] or episode.tail_terminated:
        return len(episode)
    return max(0, min(len(episode), len(episode) + len(episode.tail_rewards) - tail_steps))


def q_versus_monte_carlo(learner, runs: list[Episode], prepare, gamma: float, tail_steps: int,
                         reward_scale: float, reward_bias: float) -> dict[str, np.ndarray]:
    """Per-member `[P]` eval/q_mean, eval/mc_return_mean and their difference eval/q_overestimation, over the
    compared steps of the member's episodes (`runs` holds E episodes per member, member by member), on the
    reward scale the critic was trained on."""
    P, device = learner.members, learner.device
    episodes = len(runs) // P
    kept = np.array([compared_steps(e, tail_steps) for e in runs])
    whole = [np.concatenate([e.rewards, e.tail_rewards]).astype(np.float64) * reward_scale + reward_bias for e in runs]
    padded = np.zeros((len(runs), max(map(len, whole))))                            # [P * E, T + tail]
    for row, rewards in zip(padded, whole):
        row[:len(rewards)] = rewards
    mc_returns = discounted_returns_to_go(padded, gamma)

    counts = kept.reshape(P, episodes).sum(1)
    width = max(int(counts.max()), 1)
    obs_pad = np.zeros((P, width, learner.obs_dim), np.float32)
    act_pad = np.zeros((P, width, learner.act_dim), np.float32)
    mc_pad = np.zeros((P, width))
    mask = np.zeros((P, width), bool)
    filled = np.zeros(P, dtype=np.int64)
    for index, (episode, keep) in enumerate(zip(runs, kept)):
        p, at = index // episodes, filled[index // episodes]
        obs_pad[p, at:at + keep] = episode.observations[:keep]
        act_pad[p, at:at + keep] = episode.actions[:keep]
        mc_pad[p, at:at + keep] = mc_returns[index, :keep]
        mask[p, at:at + keep] = True
        filled[p] += keep
    q = learner.q_value(prepare(torch.as_tensor(obs_pad, device=device)), torch.as_tensor(act_pad, device=device))
    q = q.double().cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        q_mean = (q * mask).sum(1) / counts
        mc_mean = (mc_pad * mask).sum(1) / counts
    return {"eval/q_mean": q_mean, "eval/mc_return_mean": mc_mean, "eval/q_overestimation": q_mean - mc_mean}


@torch.no_grad()
def evaluate_population(learner, env_id: str, episodes: int, seed: int, gamma: float,
                        normalize=None, reward_scale: float = 1.0, reward_bias: float = 0.0,
                        mc_tail_steps: int | None = None, more_episodes: int = 0) -> dict[str, np.ndarray]:
    """Per-member `[P]` arrays: eval/return, eval/return_std, eval/length, and for learners with a critic
    eval/q_mean, eval/mc_return_mean and eval/q_overestimation (Q minus the Monte-Carlo return, on the
    reward scale the critic was trained on; `mc_tail_steps` None: `default_mc_tail_steps(gamma)`); and
    eval/episode_returns `[P, episodes + more_episodes]`, each episode's return. The `more_episodes` (start
    states seed + episodes, ...) count in the returns and lengths, not in the Q diagnostic, and run no tail.
    Diverged members are not run (their entries are NaN)."""
    P, device = learner.members, learner.device
    alive = ~learner.diverged.cpu().numpy()
    prepare = normalize or (lambda obs: obs)
    tail_steps = default_mc_tail_steps(gamma) if mc_tail_steps is None else mc_tail_steps

    def run(first: int, count: int, tail: int) -> list[Episode]:
        def policy(obs: np.ndarray) -> np.ndarray:
            obs_t = prepare(torch.as_tensor(obs, device=device).view(P, count, -1))
            actions = learner.act(obs_t).reshape(P * count, -1)
            return torch.nan_to_num(actions).cpu().numpy()
        # Every member meets the same start states (seed, seed + 1, ...), wherever it sits in the population,
        # so a member scores the same packed or alone, and members are compared on common random numbers.
        return rollout(env_id, policy, P * count, [seed + first + e for _ in range(P) for e in range(count)],
                       episodes_per_env=1, tail_steps=tail)

    # Without a critic there is nothing to compare, so no tail to pay for.
    runs = run(0, episodes, tail_steps if learner.has_critic else 0)
    parts = [runs, run(episodes, more_episodes, 0)] if more_episodes else [runs]     # each member by member
    returns = np.concatenate([np.array([e.ret for e in part]).reshape(P, -1) for part in parts], axis=1)
    lengths = np.concatenate([np.array([len(e) for e in part]).reshape(P, -1) for part in parts], axis=1)
    metrics = {"eval/return": returns.mean(1), "eval/return_std": returns.std(1), "eval/length": lengths.mean(1),
               "eval/episode_returns": returns}
    if learner.has_critic:
        metrics.update(q_versus_monte_carlo(learner, runs, prepare, gamma, tail_steps, reward_scale, reward_bias))
    for key, value in metrics.items():
        metrics[key] = np.where(alive.reshape(-1, *[1] * (np.ndim(value) - 1)), value, np.nan)
    return metrics
