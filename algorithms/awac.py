"""Advantage-Weighted Actor-Critic (Nair, Gupta, Dalal & Levine, 2020, "AWAC: Accelerating Online
Reinforcement Learning with Offline Datasets"), the implicit KL constraint:

- the constrained policy improvement has the closed form pi*(a|s) ~ pi_beta(a|s) exp(A(s, a) / lambda) (eq. 8),
  projected onto the policy class by weighted max-likelihood on the dataset's actions (eq. 9):
  L_pi = -E_(s,a)~D [ exp(A(s, a) / lambda) log pi(a | s) ],  A(s, a) = Q(s, a) - E_a'~pi Q(s, a')
- the critic is evaluated for pi by TD: L_Q = E [ (r + gamma Q'(s', a'~pi(s')) - Q(s, a))^2 ]

lambda (`awac_lambda`, per member) is the strength of the implicit constraint: small lambda -> greedy in A,
large lambda -> behaviour cloning. The exponentiated advantages are clipped at `max_weight`, as in the
reference implementations. The rest is CORL's awac.py: the critic steps before the actor, the policy is a
Gaussian with an unbounded mean (`tanh_mean: false`: "mean = self._mlp(state)") and a state-independent log-std
clamped to [-20, 2], its samples clipped to the action bounds, acting with the mean; observations are normalized.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .base import Learner, LearnerConfig
from .networks import GaussianPolicy, PackedCritic, polyak_update
from .optim import PackedAdam, descend


def awr_weights(advantage: torch.Tensor, inverse_temperature: torch.Tensor, max_weight: float) -> torch.Tensor:
    """exp(beta * A), clipped at `max_weight`; `advantage` `[P, B]`, `inverse_temperature` `[P]`.

    AWAC's exp(A / lambda) is beta = 1 / lambda; IQL's exp(beta A) uses its beta directly.
    """
    return torch.exp(inverse_temperature[:, None] * advantage).clamp(max=max_weight)


def td_critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`q` `[P, E, B]` against `target` `[P, B]`; the sum over members and critics of the batch MSE."""
    return (q - target[:, None]).pow(2).mean(-1).sum()


def weighted_log_likelihood_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return -(weights * log_prob).mean(-1).sum()


LOG_STD_BOUNDS = (-20.0, 2.0)     # CORL awac.py Actor: min_log_std=-20.0, max_log_std=2.0


@dataclass
class AWACConfig(LearnerConfig):
    hidden: tuple[int, ...] = (256, 256, 256)   # CORL awac.py: 3 hidden layers of 256, actor and critics
    awac_lambda: float = 1.0 / 3.0              # CORL hopper/medium_v2.yaml
    tanh_mean: bool = False                     # CORL Actor: an unbounded mean; true: tanh-squashed, as IQL's
    max_weight: float = 100.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    polyak: float = 0.005

    def __post_init__(self):
        super().__post_init__()
        self.check(self.awac_lambda > 0, "awac_lambda", "positive (large values approach behaviour cloning)")
        self.check(self.max_weight > 0, "max_weight", "positive")
        self.check(0.0 < self.polyak <= 1.0, "polyak", "in (0, 1]")
        for name in ("actor_lr", "critic_lr"):
            self.check(getattr(self, name) > 0, name, "positive")


class AWAC(Learner):
    Config = AWACConfig
    PACKABLE = ("seed", "awac_lambda", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"awac_lambda": "higher"}     # a flatter advantage weighting: closer to BC
    NORMALIZE_OBSERVATIONS = True                    # CORL awac.py: normalize_states, always

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        cfg, P = self.config, self.members
        self.critic = PackedCritic(P, obs_dim, act_dim, cfg.hidden, init=cfg.init)
        self.policy = GaussianPolicy(P, obs_dim, act_dim, cfg.hidden, self.action_low, self.action_high, init=cfg.init,
                                     log_std_bounds=LOG_STD_BOUNDS, tanh_mean=cfg.tanh_mean)
        self.finish_init()
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.beta = 1.0 / self.knob("awac_lambda")
        self.critic_optimizer = PackedAdam(self.critic.parameters(), lr=self.knob("critic_lr"))
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.knob("actor_lr"))

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(observations, actions).min(dim=1).values

    def policy_sample(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(observations, self.normal(*observations.shape[1:-1], self.act_dim))

    def update(self, batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            next_actions = self.policy_sample(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_actions).min(dim=1).values
            target = batch.rewards + cfg.gamma * (1.0 - batch.terminals) * next_q
        q = self.critic(batch.observations, batch.actions)
        loss_q = td_critic_loss(q, target)
        descend(self.critic_optimizer, loss_q)

        with torch.no_grad():
            q_data = self.critic(batch.observations, batch.actions).min(dim=1).values
            v = self.critic(batch.observations, self.policy_sample(batch.observations)).min(dim=1).values
            weights = awr_weights(q_data - v, self.beta, cfg.max_weight)
        loss_pi = weighted_log_likelihood_loss(self.policy.log_prob(batch.observations, batch.actions), weights)
        descend(self.actor_optimizer, loss_pi)
        polyak_update(self.critic_target, self.critic, cfg.polyak)

        q = q.detach()
        return {"train/q_data_mean": q.mean(dim=(1, 2)),
                "train/critic_loss": (q - target[:, None]).pow(2).mean(dim=(1, 2)),
                "train/advantage_mean": (q_data - v).mean(-1), "train/actor_weight_mean": weights.mean(-1)}
