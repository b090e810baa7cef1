"""Soft Actor-Critic (Haarnoja et al., 2018, "Soft Actor-Critic Algorithms and Applications").

The losses are pure functions of tensors, one per term of the paper:
- soft Bellman target (eq. 3 with the clipped double-Q of TD3):
  y = r + gamma * (1 - done) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),  a' ~ pi(.|s');
  with `backup_entropy: false` the entropy term is left out of the target (what CQL's and COMBO's reference
  code does: `backup_entropy=False` in young-geng/CQL and CORL, `deterministic_backup` in OfflineRL-Kit)
- critic loss (eq. 5): mean over the batch of (Q_i(s, a) - y)^2, summed over the twin critics
- actor loss (eq. 7): mean of alpha * log pi(a|s) - min_i Q_i(s, a),  a ~ pi(.|s) reparameterized
- temperature loss (eq. 18): mean of -log(alpha) * (log pi(a|s) + target_entropy)

Every tensor carries the member axis P first; a member's loss is a mean over its batch, and the
population's loss is the sum over members, so gradients never mix members.
The learner is used online by the dataset builder and is the base of the offline actor-critics.

`update_order` says which networks each loss sees, as the reference codebases differ:
- "critic_first": the critic steps, then the actor's and the temperature's losses are taken from the updated critic
  (OfflineRL-Kit's SACPolicy.learn, the BRAC authors' _optimize_q before _optimize_p; SAC's default here, as the
  dataset builder trains it);
- "simultaneous": every loss is taken from the networks as they were before any step of this update (young-geng/CQL
  ConservativeSAC.train and CORL's cql.py compute the policy, alpha and Q losses first, then step; the MOPO authors'
  softlearning runs all training ops in one session.run);
- "actor_first": the actor and temperature step first, their losses from the critic before its step, and the
  critic's loss then samples the updated policy (OfflineRL-Kit's CQLPolicy.learn, which its COMBO inherits).
"""
from __future__ import annotations

from dataclasses import dataclass

import copy
import torch

from .base import Learner, LearnerConfig
from .networks import PackedCritic, TanhGaussianPolicy, polyak_update
from .optim import PackedAdam, descend


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


UPDATE_ORDERS = ("critic_first", "simultaneous", "actor_first")


@dataclass
class SACConfig(LearnerConfig):
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float | None = 3e-4    # None: each member's actor_lr (young-geng and CORL tie alpha's to the policy's)
    polyak: float = 0.005
    init_temperature: float = 1.0
    target_entropy: float | None = None    # None: -act_dim, as in the paper
    critic_hidden: tuple[int, ...] | None = None   # the critics' layer sizes; None: `hidden`, as the policy's
    backup_entropy: bool = True            # alpha log pi(a'|s') in the TD target (the paper's soft backup)
    update_order: str = "critic_first"     # which networks each loss sees (module docstring)

    def __post_init__(self):
        super().__post_init__()
        if self.critic_hidden is not None:
            self.layer_sizes("critic_hidden")
        self.check(0.0 < self.polyak <= 1.0, "polyak", "in (0, 1]")
        for name in ("actor_lr", "critic_lr", "init_temperature"):
            self.check(getattr(self, name) > 0, name, "positive")
        self.check(self.temperature_lr is None or self.temperature_lr > 0, "temperature_lr",
                   "positive, or null for the actor's")
        self.check(self.update_order in UPDATE_ORDERS, "update_order", " or ".join(UPDATE_ORDERS))


class SAC(Learner):
    """P independent SAC learners; `update` takes a `[P, B, ...]` batch."""
    Config = SACConfig
    PACKABLE = ("seed", "actor_lr", "critic_lr")

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        cfg, P = self.config, self.members
        self.policy = TanhGaussianPolicy(P, obs_dim, act_dim, cfg.hidden, self.action_low, self.action_high,
                                         init=cfg.init, **self.policy_options())
        self.critic = PackedCritic(P, obs_dim, act_dim, cfg.critic_hidden or cfg.hidden, init=cfg.init)
        self.log_alpha = torch.nn.Parameter(torch.full((P,), float(cfg.init_temperature)).log())
        self.finish_init()
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.knob("actor_lr"))
        self.critic_optimizer = PackedAdam(self.critic.parameters(), lr=self.knob("critic_lr"))
        temperature_lr = self.knob("actor_lr") if cfg.temperature_lr is None else cfg.temperature_lr
        self.temperature_optimizer = PackedAdam([self.log_alpha], lr=temperature_lr)

    def policy_options(self) -> dict:
        """TanhGaussianPolicy's log-std settings for this algorithm's reference; SAC's own by default."""
        return {}

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(observations, actions).min(dim=1).values

    def sample_actions(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pi(.|s) samples `[P, B, act]` with log-probabilities, noise from the members' generators."""
        return self.policy.sample(observations, self.normal(*observations.shape[1:-1], self.act_dim))

    def backup_temperature(self, temperature: torch.Tensor) -> torch.Tensor:
        """The entropy weight `[P]` the TD target uses: the temperature, or 0 without `backup_entropy`."""
        return temperature if self.config.backup_entropy else torch.zeros_like(temperature)

    def td_target(self, batch) -> torch.Tensor:
        alpha = self.backup_temperature(self.log_alpha.detach().exp())
        with torch.no_grad():
            next_actions, next_log_prob = self.sample_actions(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_actions).min(dim=1).values
            return soft_bellman_target(batch.rewards, batch.terminals, next_q, next_log_prob, alpha,
                                       self.config.gamma)

    def critic_objective(self, batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The critic's loss, its Q at the data `[P, E, B]`, and extra metrics; CQL adds its regularizer."""
        q = self.critic(batch.observations, batch.actions)
        return critic_loss(q, target), q, {}

    def q_metrics(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member `[P]` figures of the critics' Q `[P, E, B]` at the minibatch's (s, a)."""
        return {"train/q_data_mean": q.mean(dim=(1, 2))}

    def critic_terms(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The critic's loss from the networks as they are now, with its TD target `[P, B]`, its Q at the data
        `[P, E, B]` and its extra metrics."""
        target = self.td_target(batch)
        loss, q, extra = self.critic_objective(batch, target)
        return loss, target, q, extra

    def actor_terms(self, batch) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """The actor's loss and the temperature's (None where it is not trained) from the networks as they are now,
        and their per-member metrics."""
        alpha = self.log_alpha.detach().exp()
        actions, log_prob = self.sample_actions(batch.observations)
        self.critic_gradients(False)
        q_pi = self.critic(batch.observations, actions).min(dim=1).values
        self.critic_gradients(True)
        return (actor_loss(q_pi, log_prob, alpha), temperature_loss(self.log_alpha, log_prob, self.target_entropy),
                {"train/actor_loss": (alpha[:, None] * log_prob - q_pi).detach().mean(-1),
                 "train/entropy": -log_prob.detach().mean(-1), "train/temperature": alpha})

    def update(self, batch) -> dict[str, torch.Tensor]:
        """One gradient step on critics, actor and temperature in `update_order`; returns per-member `[P]` metrics."""
        order = self.config.update_order
        if order == "critic_first":
            critic = self.critic_terms(batch)
            descend(self.critic_optimizer, critic[0])
        loss_pi, loss_temperature, metrics = self.actor_terms(batch)
        if order == "simultaneous":
            critic = self.critic_terms(batch)
        descend(self.actor_optimizer, loss_pi)
        if loss_temperature is not None:
            descend(self.temperature_optimizer, loss_temperature)
        if order == "actor_first":
            critic = self.critic_terms(batch)
        if order != "critic_first":
            descend(self.critic_optimizer, critic[0])
        polyak_update(self.critic_target, self.critic, self.config.polyak)
        _, target, q, extra = critic
        q = q.detach()
        return {**self.q_metrics(q), "train/critic_loss": (q - target[:, None]).pow(2).mean(dim=(1, 2)),
                **metrics, **extra}
