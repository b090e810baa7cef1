"""MOPO (Yu, Thomas, Yu, Ermon, Zou, Levine, Finn & Ma, 2020, "MOPO: Model-based Offline Policy
Optimization"): SAC on the uncertainty-penalized MDP of a learned model.

- penalized reward (eq. 4 / algorithm 2): r~(s, a) = r^(s, a) - lambda * u(s, a), with the heuristic
  u(s, a) = max_i ||Sigma_i(s, a)||_F over the model ensemble (section 4.3; dynamics.max_std_norm), in the
  env's raw reward units, as in the paper; the penalized reward is then put on the trainer's reward scale.
- rollouts of length h (1 or 5 in the paper) from dataset states, rollout batch 50k, a model buffer kept
  for 5 refreshes, minibatches of 5% real and 95% model transitions (MBPO's defaults, which MOPO keeps).
- the policy is SAC (sac.py) on those minibatches, with the authors' settings (tianheyu927/mopo, built on
  softlearning): policy, Q and temperature lr 3e-4 (examples/development/variants.py 'lr': 3e-4; mopo.py's alpha
  optimizer takes self._policy_lr), the fixed target entropy -3 of every D4RL config (examples/config/d4rl/base.py
  'target_entropy': -3), every loss from the networks before the step (`update_order: simultaneous`: one
  session.run of all training ops), Keras' glorot-uniform layers (`init: glorot`) and softlearning's log-std clamp
  [-20, 2] (GaussianPolicy SCALE_DIAG_MIN_MAX).

lambda (`penalty`, per member) is the knob: lambda = 0 is offline MBPO, which exploits the model's
errors; `eval/model_return` next to `eval/return` shows that gap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model_based import ModelBasedConfig, ModelBasedSAC


def penalized_reward(rewards: torch.Tensor, uncertainty: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """r - lambda * u: `rewards` and `uncertainty` are `[P, ...]`, `penalty` (lambda) is `[P]`."""
    return rewards - penalty.view(-1, *([1] * (rewards.dim() - 1))) * uncertainty


LOG_STD_BOUNDS = (-20.0, 2.0)     # softlearning gaussian_policy.py: SCALE_DIAG_MIN_MAX = (-20, 2)


@dataclass
class MOPOConfig(ModelBasedConfig):
    penalty: float = 1.0                 # lambda; the paper tunes it in {0.5, 1, 2, 5} per dataset
    actor_lr: float = 3e-4               # variants.py: 'lr': 3e-4 for policy and Q (OfflineRL-Kit's run_mopo.py: 1e-4)
    temperature_lr: float | None = None  # the actor's: mopo.py's alpha optimizer uses self._policy_lr
    target_entropy: float | None = -3.0  # examples/config/d4rl/base.py: 'target_entropy': -3 for every dataset
    update_order: str = "simultaneous"   # mopo.py _do_training: one session.run of the Q, policy and alpha ops
    init: str = "glorot"                 # softlearning feedforward_model: tf.keras.layers.Dense defaults

    def __post_init__(self):
        super().__post_init__()
        self.check(self.penalty >= 0, "penalty", ">= 0 (0 is offline MBPO)")


class MOPO(ModelBasedSAC):
    Config = MOPOConfig
    PACKABLE = ("seed", "penalty", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"penalty": "higher"}

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.penalty = self.knob("penalty")

    def policy_options(self) -> dict:
        return {"log_std_bounds": LOG_STD_BOUNDS}

    def rollout_reward(self, rewards: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        return penalized_reward(rewards, uncertainty, self.penalty)

    def evaluation_metrics(self, episodes: int, seed: int) -> dict:
        metrics = super().evaluation_metrics(episodes, seed)
        metrics["rollout/penalized_reward_mean"] = self.rollout_stats[1].double().cpu().numpy()
        return metrics
