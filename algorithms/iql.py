"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021, "Offline Reinforcement Learning with Implicit
Q-Learning"). It never queries Q at actions outside the dataset:

- value (eq. 5):  L_V = E_(s,a)~D [ L_2^tau( Q_target(s, a) - V(s) ) ],  L_2^tau(u) = |tau - 1(u < 0)| u^2
- critic (eq. 6): L_Q = E_(s,a,s')~D [ ( r + gamma V(s') - Q(s, a) )^2 ]  for each twin critic
- actor (eq. 7):  L_pi = -E_(s,a)~D [ exp( beta (Q_target(s, a) - V(s)) ) log pi(a | s) ], weights clipped at 100

tau (`expectile`) sets how close V gets to the max over in-support actions (tau=0.5: the mean, SARSA-like;
tau -> 1: the max); beta (`inverse_temperature`) sets how greedy the extracted policy is. Both can differ
per member. The update order follows the authors' code: V, then the actor with the new V, then Q; the actor's
learning rate decays to 0 on a cosine over the run's own length, as theirs does. Also as theirs
(ikostrikov/implicit_q_learning): every layer starts orthogonal with gain sqrt(2) and zero bias (`init:
orthogonal`, common.py default_init), the policy's mean is tanh-squashed with a state-independent log-std in
[-5, 2] (learner.py: NormalTanhPolicy(..., log_std_min=-5.0, state_dependent_std=False,
tanh_squash_distribution=False)), observations are not normalized, and locomotion rewards are scaled by
1000 / (max - min episode return) (train_offline.py `normalize`): a training run's `reward_normalization` is "iql"
unless its config says otherwise.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .awac import awr_weights
from .base import DataContext, Learner, LearnerConfig
from .networks import GaussianPolicy, PackedCritic, PackedMLP, polyak_update
from .optim import PackedAdam, descend


def expectile_loss(diff: torch.Tensor, expectile: torch.Tensor) -> torch.Tensor:
    """L_2^tau elementwise: |tau - 1(diff < 0)| * diff^2; `expectile` broadcasts against `diff`."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def value_loss(q_target: torch.Tensor, value: torch.Tensor, expectile: torch.Tensor) -> torch.Tensor:
    """`q_target`, `value` `[P, B]`, `expectile` `[P]` -> sum over members of the batch mean."""
    return expectile_loss(q_target - value, expectile[:, None]).mean(-1).sum()


def critic_loss(q: torch.Tensor, rewards: torch.Tensor, terminals: torch.Tensor, next_value: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """`q` `[P, E, B]` against r + gamma (1 - done) V(s'), summed over members and critics."""
    target = rewards + gamma * (1.0 - terminals) * next_value
    return (q - target[:, None]).pow(2).mean(-1).sum()


def actor_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantage-weighted log-likelihood of the dataset's actions; `[P, B]` each."""
    return -(weights * log_prob).mean(-1).sum()


@dataclass
class IQLConfig(LearnerConfig):
    init: str = "orthogonal"             # common.py: default_init = nn.initializers.orthogonal(sqrt(2)), every Dense
    expectile: float = 0.7               # tau
    inverse_temperature: float = 3.0     # beta
    max_weight: float = 100.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    polyak: float = 0.005
    actor_lr_decay_steps: int | None = None  # cosine decay of the actor's lr over this many updates; None: over
                                             # the run's total_updates (the authors' max_steps); 0: constant

    def __post_init__(self):
        super().__post_init__()
        self.check(0.0 < self.expectile < 1.0, "expectile", "in (0, 1), e.g. 0.7 (0.9 for AntMaze)")
        self.check(self.inverse_temperature >= 0, "inverse_temperature", ">= 0 (0 gives behaviour cloning)")
        self.check(self.max_weight > 0, "max_weight", "positive")
        self.check(0.0 < self.polyak <= 1.0, "polyak", "in (0, 1]")
        self.check(self.actor_lr_decay_steps is None or self.actor_lr_decay_steps >= 0, "actor_lr_decay_steps",
                   ">= 0, or None for the run's total_updates")
        for name in ("actor_lr", "critic_lr", "value_lr"):
            self.check(getattr(self, name) > 0, name, "positive")


class IQL(Learner):
    Config = IQLConfig
    PACKABLE = ("seed", "expectile", "inverse_temperature", "actor_lr", "critic_lr", "value_lr")
    CONSTRAINT_KNOBS = {"expectile": "lower", "inverse_temperature": "lower"}    # tau -> 1: max; beta -> inf: greedy
    REWARD_NORMALIZATION = "iql"         # train_offline.py: normalize(dataset) for halfcheetah, walker2d and hopper
    COUNTS_UPDATES = True

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        cfg, P = self.config, self.members
        self.critic = PackedCritic(P, obs_dim, act_dim, cfg.hidden, init=cfg.init)
        self.value = PackedMLP(P, obs_dim, 1, cfg.hidden, init=cfg.init)
        self.policy = GaussianPolicy(P, obs_dim, act_dim, cfg.hidden, self.action_low, self.action_high, init=cfg.init)
        self.finish_init()
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.expectile, self.beta = self.knob("expectile"), self.knob("inverse_temperature")
        self.actor_lr = self.knob("actor_lr").cpu()      # the schedule runs on the host, as PackedAdam keeps lr
        self.actor_lr_on_device = self.knob("actor_lr")  # ... and on the device in a compiled update
        self.critic_optimizer = PackedAdam(self.critic.parameters(), lr=self.knob("critic_lr"))
        self.value_optimizer = PackedAdam(self.value.parameters(), lr=self.knob("value_lr"))
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.actor_lr.clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device="cpu"))   # read by the host
        # None until `attach_data` tells the run's length; a learner used without a trainer keeps its lr constant.
        self.actor_lr_horizon = cfg.actor_lr_decay_steps

    def attach_data(self, context: DataContext) -> None:
        if self.actor_lr_horizon is None:
            self.actor_lr_horizon = context.total_updates

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.policy.deterministic(observations)

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(observations, actions).min(dim=1).values

    def update(self, batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad():
            q_target = self.critic_target(batch.observations, batch.actions).min(dim=1).values
        value = self.value(batch.observations).squeeze(-1)
        loss_v = value_loss(q_target, value, self.expectile)
        descend(self.value_optimizer, loss_v)

        with torch.no_grad():
            advantage = q_target - self.value(batch.observations).squeeze(-1)
            weights = awr_weights(advantage, self.beta, cfg.max_weight)
        loss_pi = actor_loss(self.policy.log_prob(batch.observations, batch.actions), weights)
        self._decay_actor_lr()
        descend(self.actor_optimizer, loss_pi)

        with torch.no_grad():
            next_value = self.value(batch.next_observations).squeeze(-1)
        q = self.critic(batch.observations, batch.actions)
        loss_q = critic_loss(q, batch.rewards, batch.terminals, next_value, cfg.gamma)
        descend(self.critic_optimizer, loss_q)
        polyak_update(self.critic_target, self.critic, cfg.polyak)

        self.count_update()
        q, value = q.detach(), value.detach()
        return {"train/q_data_mean": q.mean(dim=(1, 2)), "train/v_mean": value.mean(-1),
                "train/value_loss": expectile_loss(q_target - value, self.expectile[:, None]).mean(-1),
                "train/critic_loss": (q - (batch.rewards + cfg.gamma * (1 - batch.terminals) * next_value)[:, None])
                .pow(2).mean(dim=(1, 2)),
                "train/actor_weight_mean": weights.mean(-1)}

    def _decay_actor_lr(self) -> None:
        """The authors' cosine schedule: lr_t = lr * (1 + cos(pi t / T)) / 2, then constant at 0; T is the run's
        length unless `actor_lr_decay_steps` sets it (ikostrikov/implicit_q_learning: cosine_decay_schedule over
        max_steps). A compiled update computes it on the device, from its own update count."""
        steps = self.actor_lr_horizon
        if steps and self.streams is not None:
            progress = self.graph_updates.clamp(max=steps).float() / steps
            self.actor_optimizer.set_lr(self.actor_lr_on_device * 0.5 * (1 + torch.cos(math.pi * progress)))
        elif steps:
            progress = min(int(self.updates), steps) / steps
            self.actor_optimizer.param_groups[0]["lr"] = self.actor_lr * 0.5 * (1 + math.cos(math.pi * progress))
