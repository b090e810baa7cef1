"""Behaviour cloning: maximum likelihood of the dataset's actions under a Gaussian policy,
L = -E_(s,a)~D [ log pi(a | s) ] (the baseline every offline RL paper reports; Pomerleau, 1991).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Learner, LearnerConfig
from .networks import GaussianPolicy
from .optim import PackedAdam


def negative_log_likelihood(log_prob: torch.Tensor) -> torch.Tensor:
    """`[P, B]` log-probabilities -> the sum over members of the batch mean of -log pi(a|s)."""
    return -log_prob.mean(-1).sum()


@dataclass
class BCConfig(LearnerConfig):
    actor_lr: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        self.check(self.actor_lr > 0, "actor_lr", "positive")


class BC(Learner):
    Config = BCConfig
    PACKABLE = ("seed", "actor_lr")

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.policy = GaussianPolicy(self.members, obs_dim, act_dim, self.config.hidden, self.action_low,
                                     self.action_high)
        self.finish_init()
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.knob("actor_lr"))

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def update(self, batch) -> dict[str, torch.Tensor]:
        log_prob = self.policy.log_prob(batch.observations, batch.actions)
        loss = negative_log_likelihood(log_prob)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        with torch.no_grad():
            mse = (self.policy.deterministic(batch.observations) - batch.actions).pow(2).mean(dim=(1, 2))
        return {"train/actor_loss": -log_prob.detach().mean(-1), "train/action_mse": mse}
