"""SAC as the dataset builder's online agent (`offline_sweeps.datasets.agent.OnlineAgent`), one member (P = 1).

The builder trains it online and freezes its policy when the evaluation return reaches the medium and expert
targets (datasets/builder.py); the learner itself is sac.py's, with its defaults but for the seed, the hidden
layer widths and the batch size the build asks for.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .networks import TanhGaussianPolicy
from .sac import SAC, SACConfig


class OnlineSAC:
    """An `AgentFactory` (its constructor) and the `OnlineAgent` it makes."""

    def __init__(self, *, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray, seed: int,
                 hidden: tuple[int, ...], batch_size: int):
        self.learner = SAC([SACConfig(seed=seed, hidden=hidden, batch_size=batch_size)], obs_dim, act_dim,
                           torch.as_tensor(action_low), torch.as_tensor(action_high))
        self.batch_size = batch_size

    def act(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        return act(self.learner.policy, observations, deterministic)

    def update(self, replay) -> None:
        self.learner.update(replay.sample(self.batch_size, generator=self.learner.generators))

    def frozen(self) -> FrozenPolicy:
        return FrozenPolicy(copy.deepcopy(self.learner.policy))


class FrozenPolicy:
    """A copy of the agent's policy at one moment (`BehaviourPolicy`)."""

    def __init__(self, policy: TanhGaussianPolicy):
        self.policy = policy

    def act(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        return act(self.policy, observations, deterministic)


@torch.no_grad()
def act(policy: TanhGaussianPolicy, observations: np.ndarray, deterministic: bool) -> np.ndarray:
    """Actions `[N, act_dim]` of the (P = 1) `policy` for observations `[N, obs_dim]`."""
    obs = torch.as_tensor(observations, dtype=torch.float32)[None]        # the member axis first: [1, N, obs_dim]
    actions = policy.deterministic(obs) if deterministic else policy.sample(obs)[0]
    return actions[0].numpy()
