"""Conservative Q-Learning (Kumar, Zhou, Tucker & Levine, 2020, "Conservative Q-Learning for Offline
Reinforcement Learning"), CQL(H) on top of SAC:

- regularizer (eq. 4): alpha * E_s~D [ log sum_a exp Q(s, a) - E_a~D Q(s, a) ], added to each critic's
  TD loss: pushes Q down on actions the policy (and anything else) would pick, up on the dataset's.
- the log-sum-exp is estimated by importance sampling (appendix F): N uniform actions (density 1/|A|),
  N actions from pi(.|s) and N from pi(.|s') (densities pi), all scored at s:
  log sum_a exp Q(s, a) ~= logsumexp_j [ Q(s, a_j) - log mu(a_j) ] over the 3N samples.
- TD target: SAC's, without the entropy term (`backup_entropy: false`, as in the reference code).
- Lagrange variant (eq. 5): alpha' >= 0 is learned so that the gap (logsumexp - Q at data) tracks
  `target_action_gap`.

The rest follows young-geng/CQL (SimpleSAC/conservative_sac.py, model.py), which CORL's cql.py ports: every loss
is computed before any network steps (`update_order: simultaneous`); the temperature learns at the policy's
learning rate (`temperature_lr: null`: "self.alpha_optimizer = optimizer_class(self.log_alpha.parameters(),
lr=self.config.policy_lr)"); the policy's log-std is log_std_multiplier * f(s) + log_std_offset with both scalars
learned from 1 and -1 (`log_std_offset: -1`), clamped to [-20, 2] (ReparameterizedTanhGaussian); the output layers
start Xavier-uniform with gain 0.01 and zero bias (`init: small_output`, FullyConnectedNetwork).

alpha (`conservative_weight`, per member) is the knob; alpha = 0 is naive offline SAC, the lecture's
failure case (registered on its own as `sac`, which skips the regularizer's cost; here it is always
computed, so that a member's random draws do not depend on its neighbours' alphas).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import CheckedConfig
from .networks import SAMPLED_Q_PRECISIONS, q_at_samples, sampled_q_dtype
from .optim import PackedAdam, descend
from .sac import SAC, SACConfig, critic_loss


def cql_regularizer(q_sampled: torch.Tensor, q_data: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per member and critic, `[P, E]`: mean over the batch of T * logsumexp_j(Q(s, a_j) / T) - Q(s, a).

    `q_sampled` is `[P, E, B, M]` (already importance-corrected), `q_data` `[P, E, B]`.
    """
    return (temperature * torch.logsumexp(q_sampled / temperature, dim=-1) - q_data).mean(-1)


def sampled_actions(learner: SAC, observations: torch.Tensor, next_observations: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-sum-exp's 3N actions per state (appendix F), `[P, B, 3N, act]`: N uniform in the action box, N from
    pi(.|s) and N from pi(.|s'), drawn in that order from each member's generator; and their log-densities
    `[P, B, 3N]` (uniform: -log |A|), which the caller subtracts from Q to importance-correct it."""
    P, B = observations.shape[:2]
    low, high = learner.action_low, learner.action_high
    with torch.no_grad():
        uniform = low + learner.uniform(B, n, learner.act_dim) * (high - low)
        pi_s, log_pi_s = learner.policy.sample(observations, learner.normal(B, n, learner.act_dim))
        pi_next, log_pi_next = learner.policy.sample(next_observations, learner.normal(B, n, learner.act_dim))
    uniform_log_density = -torch.log(high - low).sum()
    return (torch.cat([uniform, pi_s, pi_next], dim=2),
            torch.cat([uniform_log_density.expand(P, B, n), log_pi_s, log_pi_next], dim=2))


@dataclass
class SampledActionsConfig(CheckedConfig):
    """The sampled log-sum-exp's settings, shared by CQL and COMBO (listed before a config's base class)."""
    num_sampled_actions: int = 10        # N of each kind: uniform, pi(.|s), pi(.|s')
    cql_temperature: float = 1.0
    sampled_q_precision: str = "auto"    # hidden matmuls of the 3N sampled actions: auto, bfloat16 or float32

    def __post_init__(self):
        super().__post_init__()
        self.check(self.num_sampled_actions >= 1, "num_sampled_actions", "at least 1")
        self.check(self.cql_temperature > 0, "cql_temperature", "positive")
        self.check(self.sampled_q_precision in SAMPLED_Q_PRECISIONS, "sampled_q_precision", " or ".join(SAMPLED_Q_PRECISIONS))


LOG_STD_BOUNDS = (-20.0, 2.0)            # young-geng/CQL ReparameterizedTanhGaussian(log_std_min=-20.0, log_std_max=2.0)


@dataclass
class CQLConfig(SampledActionsConfig, SACConfig):
    conservative_weight: float = 5.0     # alpha (young-geng/CQL cql_min_q_weight)
    actor_lr: float = 3e-5               # CORL's hopper/medium config (young-geng's plain default: 3e-4)
    temperature_lr: float | None = None  # the actor's: young-geng and CORL give alpha's optimizer lr=policy_lr
    backup_entropy: bool = False         # young-geng/CQL and CORL: backup_entropy=False
    update_order: str = "simultaneous"   # young-geng and CORL: all losses first, then the alpha, policy, Q steps
    init: str = "small_output"           # young-geng FullyConnectedNetwork: xavier_uniform_(last_fc.weight, gain=1e-2)
    log_std_offset: float | None = -1.0  # young-geng policy_log_std_offset (multiplier 1), both learned; None: f(s)
    lagrange: bool = False
    target_action_gap: float = 1.0       # with lagrange: the gap alpha' aims at (young-geng cql_target_action_gap)
    lagrange_init: float = 1.0           # log alpha' at the start (young-geng and CORL: Scalar(1.0))
    lagrange_lr: float = 3e-4            # young-geng: qf_lr

    def __post_init__(self):
        super().__post_init__()
        self.check(self.conservative_weight >= 0, "conservative_weight", ">= 0 (0 is naive offline SAC)")
        self.check(self.lagrange_lr > 0, "lagrange_lr", "positive")


class CQL(SAC):
    Config = CQLConfig
    PACKABLE = ("seed", "conservative_weight", "target_action_gap", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"conservative_weight": "higher", "target_action_gap": "lower"}  # smaller gap: larger alpha'

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.alpha = self.knob("conservative_weight")
        self.target_gap = self.knob("target_action_gap")
        if self.config.lagrange:
            self.log_alpha_prime = torch.nn.Parameter(torch.full((self.members,), float(self.config.lagrange_init),
                                                                 device=self.device))
            self.lagrange_optimizer = PackedAdam([self.log_alpha_prime], lr=self.config.lagrange_lr)
        self.sampled_q_dtype = sampled_q_dtype(self.config.sampled_q_precision, self.device)

    def policy_options(self) -> dict:
        return {"log_std_bounds": LOG_STD_BOUNDS, "log_std_offset": self.config.log_std_offset}

    def critic_objective(self, batch, target):
        sampled, log_density = sampled_actions(self, batch.observations, batch.next_observations,
                                               self.config.num_sampled_actions)
        if self.sampled_q_dtype is not None:
            # The 3N sampled actions are 97% of the critic's work: their hidden layers run in bfloat16, while
            # the output layer and the TD term on the data actions stay float32.
            q_sampled = q_at_samples(self.critic, batch.observations, sampled, self.sampled_q_dtype)
            q_data = self.critic(batch.observations, batch.actions)
        else:
            # Every sampled action and the data action of both critics in one batched call.
            q_all = q_at_samples(self.critic, batch.observations, torch.cat([sampled, batch.actions.unsqueeze(2)], dim=2))
            q_sampled, q_data = q_all[..., :-1], q_all[..., -1]
        q_sampled = q_sampled - log_density[:, None]
        gap = cql_regularizer(q_sampled, q_data, self.config.cql_temperature)           # [P, E]
        weight = self.alpha
        metrics = {"train/cql_gap": gap.detach().mean(-1)}
        if self.config.lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            lagrange_loss = -(alpha_prime * self.alpha * (gap.detach().mean(-1) - self.target_gap)).sum()
            descend(self.lagrange_optimizer, lagrange_loss)
            weight = alpha_prime.detach() * self.alpha
            metrics["train/alpha_prime"] = alpha_prime.detach()
            gap = gap - self.target_gap[:, None]
        loss = critic_loss(q_data, target) + (weight[:, None] * gap).sum()
        return loss, q_data, metrics
