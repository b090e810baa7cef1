"""Soft Actor-Critic (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and Applications").

The losses are pure functions of tensors, one per term of the paper:
- soft Bellman target (eq. 3 with the clipped double-Q of TD3):
  y = r + gamma * (1 - done) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),  a' ~ pi(.|s')
- critic loss (eq. 5): mean over the batch of (Q_i(s, a) - y)^2, summed over the twin critics
- actor loss (eq. 7): mean of alpha * log pi(a|s) - min_i Q_i(s, a),  a ~ pi(.|s) reparameterized
- temperature loss (eq. 18): mean of -log(alpha) * (log pi(a|s) + target_entropy)

Every tensor carries the member axis P first; a member's loss is a mean over its batch, and the
population's loss is the sum over members, so gradients never mix members.
The learner is used online by the dataset builder and is the base of the offline actor-critics.
"""
from __future__ import annotations

from dataclasses import dataclass

import copy
import torch

from .networks import PackedCritic, TanhGaussianPolicy, polyak_update


def soft_bellman_target(rewards: torch.Tensor, terminals: torch.Tensor, next_q: torch.Tensor,
                        next_log_prob: torch.Tensor, alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """`[P, B]` target; `next_q` is already the min over critics, `alpha` is `[P]`."""
    return rewards + gamma * (1.0 - terminals) * (next_q - alpha[:, None] * next_log_prob)


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared TD error: `q` is `[P, E, B]`, `target` `[P, B]`; sum over members and critics."""
    return (q - target[:, None]).pow(2).mean(-1).sum()


def actor_loss(q_pi: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """`q_pi` (min over critics) and `log_prob` are `[P, B]`; `alpha` is `[P]`."""
    return (alpha[:, None] * log_prob - q_pi).mean(-1).sum()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Drives the policy's entropy towards `target_entropy`; `log_alpha` is `[P]`."""
    return (-log_alpha[:, None] * (log_prob.detach() + target_entropy)).mean(-1).sum()


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    gamma: float = 0.99
    polyak: float = 0.005
    batch_size: int = 256
    init_temperature: float = 1.0
    target_entropy: float | None = None    # None: -act_dim, as in the paper

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma={self.gamma} must lie in [0, 1)")
        if not 0.0 < self.polyak <= 1.0:
            raise ValueError(f"polyak={self.polyak} must lie in (0, 1]")
        if self.batch_size < 1 or min(self.actor_lr, self.critic_lr, self.temperature_lr) <= 0:
            raise ValueError("batch_size and learning rates must be positive")
        if self.init_temperature <= 0:
            raise ValueError(f"init_temperature={self.init_temperature} must be positive")


class SAC(torch.nn.Module):
    """P independent SAC learners packed into one module; `update` takes a `[P, B, ...]` batch."""

    def __init__(self, config: SACConfig, obs_dim: int, act_dim: int, members: int = 1,
                 action_low=-1.0, action_high=1.0):
        super().__init__()
        self.config = config
        self.policy = TanhGaussianPolicy(members, obs_dim, act_dim, config.hidden, action_low, action_high)
        self.critic = PackedCritic(members, obs_dim, act_dim, config.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.full((members,), float(config.init_temperature)).log())
        self.target_entropy = -float(act_dim) if config.target_entropy is None else config.target_entropy
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.temperature_optimizer = torch.optim.Adam([self.log_alpha], lr=config.temperature_lr)

    def update(self, batch) -> dict[str, torch.Tensor]:
        """One gradient step on critics, actor and temperature; returns per-member `[P]` metrics."""
        cfg = self.config
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_prob = self.policy.sample(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_actions).min(dim=1).values
            target = soft_bellman_target(batch.rewards, batch.terminals, next_q, next_log_prob, alpha, cfg.gamma)
        q = self.critic(batch.observations, batch.actions)
        loss_q = critic_loss(q, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_optimizer.step()

        actions, log_prob = self.policy.sample(batch.observations)
        self.critic.requires_grad_(False)
        q_pi = self.critic(batch.observations, actions).min(dim=1).values
        self.critic.requires_grad_(True)
        loss_pi = actor_loss(q_pi, log_prob, alpha)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.actor_optimizer.step()

        loss_alpha = temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        self.temperature_optimizer.zero_grad(set_to_none=True)
        loss_alpha.backward()
        self.temperature_optimizer.step()

        polyak_update(self.critic_target, self.critic, cfg.polyak)
        return {"train/q_data_mean": q.detach().mean(dim=(1, 2)),
                "train/critic_loss": (q.detach() - target[:, None]).pow(2).mean(dim=(1, 2)),
                "train/entropy": -log_prob.detach().mean(-1),
                "train/temperature": alpha}
