"""Evaluate a population: E episodes per member, all P x E envs stepped together, deterministic policies.

Besides the return, it measures what the lecture plots next to it: the learned Q at the (s, a) the
policy visited against the discounted Monte-Carlo return that followed, so overestimation is visible.
Steps closer than the effective horizon 1 / (1 - gamma) to a time-limit truncation are left out of that
comparison: their Monte-Carlo return misses the reward after the cut, which Q rightly includes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..datasets.rollout import rollout


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_(t+k) for every step of one episode."""
    returns = np.empty(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


@torch.no_grad()
def evaluate_population(learner, env_id: str, episodes: int, seed: int, gamma: float,
                        normalize=None, reward_scale: float = 1.0, reward_bias: float = 0.0) -> dict[str, np.ndarray]:
    """Per-member `[P]` arrays: eval/return, eval/return_std, eval/length, and for learners with a critic
    eval/q_mean, eval/mc_return_mean and eval/q_overestimation (Q minus the Monte-Carlo return, on the
    reward scale the critic was trained on). Diverged members are not run (their entries are NaN)."""
    P, device = learner.members, learner.device
    alive = ~learner.diverged.cpu().numpy()
    prepare = normalize or (lambda obs: obs)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = prepare(torch.as_tensor(obs, device=device).view(P, episodes, -1))
        actions = learner.act(obs_t).reshape(P * episodes, -1)
        return torch.nan_to_num(actions).cpu().numpy()

    # Every member meets the same start states (seed, seed + 1, ...), wherever it sits in the population,
    # so a member scores the same packed or alone, and members are compared on common random numbers.
    runs = rollout(env_id, policy, P * episodes, [seed + e for _ in range(P) for e in range(episodes)],
                   episodes_per_env=1)
    returns = np.array([e.ret for e in runs]).reshape(P, episodes)
    lengths = np.array([len(e) for e in runs]).reshape(P, episodes)
    metrics = {"eval/return": returns.mean(1), "eval/return_std": returns.std(1), "eval/length": lengths.mean(1)}

    horizon = int(round(1.0 / (1.0 - gamma)))
    observations, actions, mc_returns, owners = [], [], [], []
    for index, episode in enumerate(runs):
        keep = len(episode) - (horizon if episode.truncations[-1] else 0)
        if keep <= 0:
            continue
        scaled = episode.rewards.astype(np.float64) * reward_scale + reward_bias
        observations.append(episode.observations[:keep])
        actions.append(episode.actions[:keep])
        mc_returns.append(discounted_returns_to_go(scaled, gamma)[:keep])
        owners.append(np.full(keep, index // episodes))
    if learner.has_critic and observations:
        owner = np.concatenate(owners)
        counts = np.bincount(owner, minlength=P)
        width = int(counts.max())
        obs_pad = np.zeros((P, width, learner.obs_dim), np.float32)
        act_pad = np.zeros((P, width, learner.act_dim), np.float32)
        mc_pad = np.zeros((P, width))
        mask = np.zeros((P, width), bool)
        obs_all, act_all, mc_all = np.concatenate(observations), np.concatenate(actions), np.concatenate(mc_returns)
        for p in range(P):
            rows = owner == p
            obs_pad[p, :counts[p]], act_pad[p, :counts[p]] = obs_all[rows], act_all[rows]
            mc_pad[p, :counts[p]], mask[p, :counts[p]] = mc_all[rows], True
        q = learner.q_value(prepare(torch.as_tensor(obs_pad, device=device)), torch.as_tensor(act_pad, device=device))
        q = q.double().cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            q_mean = (q * mask).sum(1) / counts
            mc_mean = (mc_pad * mask).sum(1) / counts
        metrics.update({"eval/q_mean": q_mean, "eval/mc_return_mean": mc_mean, "eval/q_overestimation": q_mean - mc_mean})
    for key, value in metrics.items():
        metrics[key] = np.where(alive, value, np.nan)
    return metrics
