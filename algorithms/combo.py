"""COMBO (Yu, Kumar, Rafailov, Rajeswaran, Levine & Finn, 2021, "COMBO: Conservative Offline Model-Based
Policy Optimization"): CQL's conservative critic with the push-down taken on model rollouts.

- critic (eq. 2): beta * ( E_{s ~ rollouts, a ~ mu(.|s)} [Q(s, a)] - E_{(s, a) ~ D} [Q(s, a)] )
  + 1/2 E_{(s, a, s') ~ d_f} [ (Q(s, a) - B^pi Q(s, a))^2 ], with d_f = f * D + (1 - f) * rollouts
  (`real_ratio` f = 0.5). As in the authors' code (built on CQL's), the first expectation is CQL(H)'s
  importance-sampled log-sum-exp over N uniform, N pi(.|s) and N pi(.|s') actions, taken at the *model*
  states of the minibatch (the paper's rho = d_f^mu on model states); the second is Q at the *dataset* (s, a) of
  the minibatch: `combo_regularizer`. `push_down_states: mixed` takes the log-sum-exp at every state of the
  minibatch, real and model, as OfflineRL-Kit's re-implementation does (`rho_s="mix"`).
- TD target: SAC's without the entropy term (`backup_entropy: false`: the authors' deterministic backup).
- the policy is SAC's (sac.py), and rollouts are MBPO's (model_based.py) with the unpenalized model reward. As
  OfflineRL-Kit (run_combo.py, policy/model_free/cql.py, which its COMBOPolicy extends): actor and temperature lr
  1e-4, critic 3e-4; the actor and temperature step first, from the critic before its step, and the critic's loss
  then samples the updated policy (`update_order: actor_first`, CQLPolicy.learn).

beta (`conservative_weight`, per member) is the knob; the paper uses beta in {0.5, 1, 5}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..datasets.buffer import mixed_rows
from .cql import SampledActionsConfig, sampled_actions
from .model_based import ModelBasedConfig, ModelBasedSAC
from .networks import q_at_samples, sampled_q_dtype
from .sac import critic_loss

PUSH_DOWN_STATES = ("model", "mixed")


def combo_regularizer(q_model_sampled: torch.Tensor, q_data: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per member and critic, `[P, E]`: mean over the push-down states of T * logsumexp_j(Q(s, a_j) / T), minus the
    mean of Q over dataset (s, a). `q_model_sampled` is `[P, E, B_down, M]` (already importance-corrected) and
    `q_data` `[P, E, B_real]`; minimizing it pushes Q down on model data and up on real data."""
    return (temperature * torch.logsumexp(q_model_sampled / temperature, dim=-1)).mean(-1) - q_data.mean(-1)


@dataclass
class COMBOConfig(SampledActionsConfig, ModelBasedConfig):
    hidden: tuple[int, ...] = (256, 256, 256)   # OfflineRL-Kit run_combo.py hidden-dims
    actor_lr: float = 1e-4                      # run_combo.py: actor-lr 1e-4, critic-lr 3e-4, alpha-lr 1e-4
    temperature_lr: float | None = 1e-4
    update_order: str = "actor_first"           # CQLPolicy.learn: "update actor" first, then alpha, then the critics
    real_ratio: float = 0.5
    conservative_weight: float = 1.0     # beta
    push_down_states: str = "model"      # "model": the paper's; "mixed": real and model states (OfflineRL-Kit)
    backup_entropy: bool = False         # the authors' deterministic backup

    def __post_init__(self):
        super().__post_init__()
        self.check(0.0 < self.real_ratio < 1.0, "real_ratio", "in (0, 1): COMBO needs real and model data in each batch")
        self.check(self.conservative_weight >= 0, "conservative_weight", ">= 0")
        self.check(self.push_down_states in PUSH_DOWN_STATES, "push_down_states", " or ".join(PUSH_DOWN_STATES))
        batch_real = mixed_rows(self.real_ratio, self.batch_size)
        self.check(0 < batch_real < self.batch_size, "real_ratio",
                   f"such that real_ratio * batch_size (={self.batch_size}) rounds to between 1 and batch_size - 1")


class COMBO(ModelBasedSAC):
    Config = COMBOConfig
    PACKABLE = ("seed", "conservative_weight", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"conservative_weight": "higher"}

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.beta = self.knob("conservative_weight")
        self.sampled_q_dtype = sampled_q_dtype(self.config.sampled_q_precision, self.device)

    def critic_objective(self, batch, target):
        cfg, real = self.config, self.real_rows
        first = real if cfg.push_down_states == "model" else 0      # the rows whose states Q is pushed down at
        states, next_states = batch.observations[:, first:], batch.next_observations[:, first:]
        sampled, log_density = sampled_actions(self, states, next_states, cfg.num_sampled_actions)
        q_sampled = q_at_samples(self.critic, states, sampled, self.sampled_q_dtype)
        q_data = self.critic(batch.observations, batch.actions)                          # [P, E, B]
        gap = combo_regularizer(q_sampled - log_density[:, None], q_data[..., :real], cfg.cql_temperature)
        loss = critic_loss(q_data, target) + (self.beta[:, None] * gap).sum()
        return loss, q_data, {"train/combo_gap": gap.detach().mean(-1)}
