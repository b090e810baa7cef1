"""Behaviour cloning (Pomerleau, 1991), the baseline every offline RL paper reports, as CORL's
`any_percent_bc.py` runs it: a deterministic policy a = scale * tanh(f(s)) + bias regressed on the dataset's
actions, L = E_(s,a)~D [ ||pi(s) - a||^2 ] (`loss: mse`, lr 3e-4), on normalized observations. `loss: nll` is
maximum likelihood under a Gaussian with a learned state-independent std instead, L = -E_(s,a)~D [ log pi(a | s) ].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Learner, LearnerConfig
from .networks import GaussianPolicy
from .optim import PackedAdam, descend


def negative_log_likelihood(log_prob: torch.Tensor) -> torch.Tensor:
    """`[P, B]` log-probabilities -> the sum over members of the batch mean of -log pi(a|s)."""
    return -log_prob.mean(-1).sum()


def action_mse(actions: torch.Tensor, dataset_actions: torch.Tensor) -> torch.Tensor:
    """`[P, B, act]` each -> `[P]`: each member's mean squared error over its batch and the action dimensions
    (CORL's F.mse_loss)."""
    return (actions - dataset_actions).pow(2).mean(dim=(1, 2))


LOSSES = ("mse", "nll")


@dataclass
class BCConfig(LearnerConfig):
    actor_lr: float = 3e-4              # CORL any_percent_bc
    loss: str = "mse"                   # "mse" (CORL) or "nll" (Gaussian max-likelihood)

    def __post_init__(self):
        super().__post_init__()
        self.check(self.actor_lr > 0, "actor_lr", "positive")
        self.check(self.loss in LOSSES, "loss", " or ".join(LOSSES))


class BC(Learner):
    Config = BCConfig
    PACKABLE = ("seed", "actor_lr")
    NORMALIZE_OBSERVATIONS = True       # CORL any_percent_bc.py: normalize: bool = True

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.policy = GaussianPolicy(self.members, obs_dim, act_dim, self.config.hidden, self.action_low,
                                     self.action_high, init=self.config.init)
        self.finish_init()
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.knob("actor_lr"))

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def update(self, batch) -> dict[str, torch.Tensor]:
        if self.config.loss == "mse":
            per_member = action_mse(self.policy.deterministic(batch.observations), batch.actions)
            loss = per_member.sum()
            per_member = per_member.detach()
            metrics = {"train/actor_loss": per_member, "train/action_mse": per_member}
        else:
            log_prob = self.policy.log_prob(batch.observations, batch.actions)
            loss = negative_log_likelihood(log_prob)
            metrics = {"train/actor_loss": -log_prob.detach().mean(-1)}
        descend(self.actor_optimizer, loss)
        if self.config.loss == "nll":
            with torch.no_grad():
                metrics["train/action_mse"] = action_mse(self.policy.deterministic(batch.observations), batch.actions)
        return metrics
