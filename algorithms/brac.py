"""Behavior Regularized Actor Critic (Wu, Tucker & Nachum, 2019, "Behavior Regularized Offline
Reinforcement Learning"), BRAC with the KL divergence, as the authors' BRAC-primal agent
(google-research/behavior_regularized_offline_rl, brac/brac_primal_agent.py):

- behaviour policy: pi_beta-hat, a squashed Gaussian per member, fitted first, alone for `behavior_pretrain_steps`
  updates, then frozen, as the authors' behaviour-cloning agent fits it (brac/bc_agent.py): maximum likelihood
  with an entropy term whose weight is tuned towards the entropy -|A|,
  L_beta = E_s~D [ w log pi_beta-hat(a_b|s) ] - E_(s,a)~D [ log pi_beta-hat(a|s) ],  a_b ~ pi_beta-hat(.|s),
  L_w = relu(w) (H(pi_beta-hat) + |A|), w starting at 1 (`behavior_entropy: true`). On near-deterministic data
  pure maximum likelihood (`behavior_entropy: false`) shrinks the fitted std to its floor, and the KL to it, at
  the same `kl_weight`, grows by orders of magnitude. As in the authors' code, dataset actions are pulled
  `CLIP_EPS` inside the bounds first: a saturated action has an infinite pre-tanh value.
- divergence: D(s) = KL(pi(.|s) || pi_beta-hat(.|s)), estimated from N samples a_j ~ pi(.|s) as
  mean_j [ log pi(a_j|s) - log pi_beta-hat(a_j|s) ] (`sample_kl`). Both policies squash the same way, so the
  tanh corrections cancel and this estimates the KL of the pre-tanh Gaussians (`gaussian_kl`, closed form).
- value penalty (eq. 3): y = r + gamma * (1 - done) * (E_a'~pi [ min_i Q'_i(s', a') - tau log pi(a'|s') ]
  - alpha * D(s'))
- policy penalty (eq. 4): L_pi = E_s E_a~pi [ tau log pi(a|s) - q_on * min_i Q_i(s, a) ] + alpha * E_s [ D(s) ]
- warm start: for the first `warm_start_updates` updates after the behaviour fit, q_on = 0: the actor is
  trained on the penalty alone (towards pi_beta-hat) while the critic learns, so it does not chase an untrained
  critic (the agent's `warm_start`, q_start in `_build_p_loss`).

alpha (`kl_weight`, per member) is the knob; `penalty="policy"` uses eq. 4 alone, `penalty="value"`
eq. 3 and eq. 4 together, as in the paper. The entropy weight tau is 0 and untrained by default, as in the
authors' agent (alpha_entropy=0, train_alpha_entropy=False): an entropy bonus would pull against the KL term
and blur what `kl_weight` means. `entropy_bonus: true` adds SAC's temperature, tuned towards a target entropy.
The expectations over pi use the same N samples for Q, entropy and divergence. Also as the authors' networks.py:
both policies map their log-std output smoothly into [-5, 0] (LOG_STD_MIN, LOG_STD_MAX and a tanh), the layers are
Keras Dense defaults (`init: glorot`), and the critic steps before the actor (`_optimize_q`, then `_optimize_p`).

`BehaviorPretraining` (the fitted behaviour policy, its pretraining phase and the warm start) is shared with
BEAR.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ConfigError
from .bc import negative_log_likelihood
from .networks import TanhGaussianPolicy, init_members, q_at_samples, squashed_gaussian_log_prob
from .optim import PackedAdam
from .optim import descend
from .sac import SAC, SACConfig, actor_loss, soft_bellman_target, temperature_loss

CLIP_EPS = 1e-3     # dataset actions are kept this fraction of the half-range inside the bounds
LOG_STD_BOUNDS = (-5.0, 0.0)   # the authors' networks.py: LOG_STD_MIN = -5, LOG_STD_MAX = 0, reached through a tanh


def sample_kl(log_prob_pi: torch.Tensor, log_prob_behavior: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi_beta) per state from samples a_j ~ pi: `[P, B, N]` log-densities of both -> `[P, B]`."""
    return (log_prob_pi - log_prob_behavior).mean(-1)


def gaussian_kl(mu1: torch.Tensor, log_std1: torch.Tensor, mu2: torch.Tensor, log_std2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)) of diagonal Gaussians, summed over the last axis:
    log(sigma2 / sigma1) + (sigma1^2 + (mu1 - mu2)^2) / (2 sigma2^2) - 1/2 per dimension."""
    variance1, variance2 = (2 * log_std1).exp(), (2 * log_std2).exp()
    return (log_std2 - log_std1 + (variance1 + (mu1 - mu2).pow(2)) / (2 * variance2) - 0.5).sum(-1)


def policy_penalty_actor_loss(q_pi: torch.Tensor, log_prob: torch.Tensor, kl: torch.Tensor,
                              temperature: torch.Tensor, kl_weight: torch.Tensor, q_on: float = 1.0) -> torch.Tensor:
    """Eq. 4 with SAC's entropy term: `q_pi`, `log_prob` (averaged over pi's samples) and `kl` are `[P, B]`,
    `temperature` and `kl_weight` `[P]`; the sum over members of the batch mean. `q_on` = 0 drops the Q term
    (the warm start)."""
    return actor_loss(q_on * q_pi, log_prob, temperature) + (kl_weight[:, None] * kl).mean(-1).sum()


def behavior_entropy_loss(log_prob_sampled: torch.Tensor, log_prob_data: torch.Tensor,
                          entropy_weight: torch.Tensor) -> torch.Tensor:
    """The authors' behaviour-cloning loss (bc_agent.py `_build_p_loss`): the batch mean of w log pi(a_b|s) at a
    reparameterized sample a_b ~ pi(.|s) minus log pi(a|s) at the dataset's action, summed over members;
    `log_prob_*` are `[P, B]`, `entropy_weight` w is `[P]` (already rectified)."""
    return (entropy_weight[:, None] * log_prob_sampled - log_prob_data).mean(-1).sum()


def entropy_weight_loss(weight: torch.Tensor, entropy: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """The authors' `_build_ae_loss`, relu(w) (H - target), summed over the members' `[P]` weights and entropy
    estimates, with the gradient of their `relu_v2`: the step that raises w always passes, the one that lowers it only
    while w > 0, so w stays near zero at worst and comes back when the entropy falls below the target."""
    gap = (entropy - target_entropy).detach()
    routed = torch.where((weight > 0) | (gap <= 0), weight, weight.detach())
    return ((weight.detach().clamp(min=0) + routed - routed.detach()) * gap).sum()


def clip_inside(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor, eps: float = CLIP_EPS) -> torch.Tensor:
    """`actions` clamped to [low + m, high - m], m = eps * (high - low) / 2."""
    margin = eps * (high - low) / 2
    return torch.maximum(torch.minimum(actions, high - margin), low + margin)


def check_behavior_fields(config) -> None:
    """Validation of the fields every config of a `BehaviorPretraining` learner declares."""
    config.check(config.behavior_pretrain_steps >= 0, "behavior_pretrain_steps", ">= 0")
    config.check(config.behavior_lr > 0, "behavior_lr", "positive")
    config.check(config.warm_start_updates >= 0, "warm_start_updates", ">= 0")


class BehaviorPretraining:
    """Mixin for a Learner whose config has `behavior_lr`, `behavior_pretrain_steps`, `behavior_entropy` and
    `warm_start_updates`: a fitted behaviour policy pi_beta-hat (`self.behavior`), the only thing trained during the
    first `behavior_pretrain_steps` updates and afterwards frozen (unless `regularized_update` steps it too, as BEAR
    does its VAE), when `regularized_update` trains the rest; during
    its first `warm_start_updates` updates `warming_up` is true and the actor ignores Q. With `behavior_entropy` the
    fit has the BRAC authors' entropy term (`behavior_entropy_loss`), its weight tuned at `behavior_lr` towards the
    entropy -|A| (bc_agent.py: target_entropy None -> -action dims; run_bc.sh's one optimizer serves both).

    Call `add_behavior_policy(model or None, **policy_options)` after `finish_init()`. The update counter is a buffer, so
    checkpoints restore the phase.
    """

    def add_behavior_policy(self, model: torch.nn.Module | None = None, **policy_options) -> None:
        """pi_beta-hat: `model` (BEAR's VAE), or by default a squashed Gaussian with `policy_options`."""
        self.behavior = model if model is not None else TanhGaussianPolicy(
            self.members, self.obs_dim, self.act_dim, self.config.hidden, self.action_low, self.action_high,
            init=self.config.init, **policy_options)
        self.behavior.to(self.device)
        init_members(self.behavior, self.generators)
        self.behavior_optimizer = PackedAdam(self.behavior.parameters(), lr=self.config.behavior_lr)
        if self.config.behavior_entropy:
            # The authors' alpha_entropy variable, tf.Variable(1.0), rectified where it is used.
            self.behavior_entropy_weight = torch.nn.Parameter(torch.ones(self.members, device=self.device))
            self.behavior_entropy_optimizer = PackedAdam([self.behavior_entropy_weight], lr=self.config.behavior_lr)
        # On the CPU, where the host reads it every update (on a GPU that read would wait for the device).
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device="cpu"))

    @classmethod
    def check_run_length(cls, config, total_updates: int) -> None:
        phases = config.behavior_pretrain_steps + config.warm_start_updates
        if phases >= total_updates:
            raise ConfigError(f"behavior_pretrain_steps ({config.behavior_pretrain_steps}) + warm_start_updates "
                              f"({config.warm_start_updates}) leave no update of the full objective in total_updates "
                              f"({total_updates}): lower them (the algorithm config's behavior_pretrain_steps and "
                              f"warm_start_updates) or raise total_updates")

    COUNTS_UPDATES = True

    def phase(self) -> tuple[bool, bool]:
        """(pretraining, warming up), from the host's update counter (a CPU tensor: reading it waits for nothing)."""
        cfg, updates = self.config, int(self.updates)
        return updates < cfg.behavior_pretrain_steps, updates < cfg.behavior_pretrain_steps + cfg.warm_start_updates

    @property
    def pretraining(self) -> bool:
        return self.current_phase()[0]

    @property
    def warming_up(self) -> bool:
        return self.current_phase()[1]

    def behavior_log_prob(self, batch) -> torch.Tensor:
        """log pi_beta-hat(a|s) `[P, B]` of the dataset's actions, pulled just inside the bounds."""
        actions = clip_inside(batch.actions, self.action_low, self.action_high)
        return self.behavior.log_prob(batch.observations, actions)

    def behavior_sample_log_prob(self, observations: torch.Tensor) -> torch.Tensor:
        """log pi_beta-hat(a_b|s) `[P, B]` at one reparameterized sample a_b per state."""
        return self.behavior.sample(observations, self.normal(observations.shape[1], self.act_dim))[1]

    def fit_behavior(self, batch) -> dict[str, torch.Tensor]:
        """One step of the behaviour fit; with `behavior_entropy` then one of its entropy weight, from a fresh sample
        of the updated policy (the authors' `_optimize_p`, then `_optimize_ae`)."""
        log_prob = self.behavior_log_prob(batch)
        metrics = {"train/behavior_nll": -log_prob.detach().mean(-1)}
        if not self.config.behavior_entropy:
            descend(self.behavior_optimizer, negative_log_likelihood(log_prob))
            return metrics
        weight = self.behavior_entropy_weight.detach().clamp(min=0)
        descend(self.behavior_optimizer,
                behavior_entropy_loss(self.behavior_sample_log_prob(batch.observations), log_prob, weight))
        with torch.no_grad():
            entropy = -self.behavior_sample_log_prob(batch.observations).mean(-1)
        descend(self.behavior_entropy_optimizer,
                entropy_weight_loss(self.behavior_entropy_weight, entropy, -float(self.act_dim)))
        return {**metrics, "train/behavior_entropy": entropy, "train/behavior_entropy_weight": weight}

    def update(self, batch) -> dict[str, torch.Tensor]:
        """A max-likelihood step on pi_beta-hat while pretraining (its metrics only), else `regularized_update`."""
        if self.pretraining:
            metrics = self.fit_behavior(batch)
        else:
            metrics = {**self.regularized_update(batch), **self.behavior_metrics(batch)}
        self.count_update()
        return metrics

    def behavior_metrics(self, batch) -> dict[str, torch.Tensor]:
        """What the frozen pi_beta-hat is reported with after pretraining: its negative log-likelihood of the batch."""
        with torch.no_grad():
            return {"train/behavior_nll": -self.behavior_log_prob(batch).mean(-1)}

    def regularized_update(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@dataclass
class BRACConfig(SACConfig):
    # Defaults from the authors' brac_primal_agent.py, bc_agent.py, networks.py and their run scripts (run_primal.sh,
    # run_bc.sh).
    hidden: tuple[int, ...] = (200, 200)   # policy and behaviour nets (run_primal.sh model_params)
    init: str = "glorot"                   # networks.py: tf.keras.layers.Dense defaults
    critic_hidden: tuple[int, ...] | None = (300, 300)
    actor_lr: float = 3e-4                 # run_primal.sh: policy lr 3e-4, Q lr 1e-3
    critic_lr: float = 1e-3
    temperature_lr: float = 1e-3           # with entropy_bonus; the agent's alpha optimizer
    kl_weight: float = 0.1                 # alpha (run_primal.sh ALPHA=0.1)
    penalty: str = "value"                 # "policy": eq. 4 only; "value": eq. 3 and eq. 4 (value_penalty=True)
    num_kl_samples: int = 4                # N samples of pi per state for the KL estimate (n_div_samples)
    entropy_bonus: bool = False            # the authors' agent: entropy weight 0, untrained; true: SAC's tuned one
    warm_start_updates: int = 20_000       # actor on the penalty alone first (the authors' warm_start)
    behavior_lr: float = 5e-4              # run_bc.sh: 300k updates at lr 5e-4
    behavior_pretrain_steps: int = 300_000
    behavior_entropy: bool = True          # bc_agent.py: entropy term, weight tuned (train_alpha_entropy=True) to -|A|

    def __post_init__(self):
        super().__post_init__()
        self.check(self.kl_weight >= 0, "kl_weight", ">= 0 (0 is naive offline SAC)")
        self.check(self.penalty in ("policy", "value"), "penalty", "'policy' or 'value'")
        self.check(self.num_kl_samples >= 1, "num_kl_samples", "at least 1")
        check_behavior_fields(self)


class BRAC(BehaviorPretraining, SAC):
    Config = BRACConfig
    PACKABLE = ("seed", "kl_weight", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"kl_weight": "higher"}

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        self.add_behavior_policy(**self.policy_options())
        self.kl_weight = self.knob("kl_weight")

    def policy_options(self) -> dict:
        return {"log_std_bounds": LOG_STD_BOUNDS, "log_std_squash": True}

    def policy_samples(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """N = `num_kl_samples` actions per state from pi `[P, B, N, act]`, their log pi `[P, B, N]`, and the
        sampled KL(pi || pi_beta-hat) `[P, B]`.

        log pi_beta-hat is taken at each sample's own pre-tanh value, so saturated samples need no atanh.
        """
        noise = self.normal(*observations.shape[1:-1], self.config.num_kl_samples, self.act_dim)
        mu, log_std = (x.unsqueeze(-2) for x in self.policy.distribution(observations))
        mu_b, log_std_b = (x.unsqueeze(-2) for x in self.behavior.distribution(observations))
        u = mu + log_std.exp() * noise
        log_prob = squashed_gaussian_log_prob(u, mu, log_std, self.policy.action_scale)
        log_prob_behavior = squashed_gaussian_log_prob(u, mu_b, log_std_b, self.behavior.action_scale)
        return self.policy.squash(u), log_prob, sample_kl(log_prob, log_prob_behavior)

    def temperature(self) -> torch.Tensor:
        """The entropy weight tau `[P]`: SAC's tuned temperature with `entropy_bonus`, else 0."""
        temperature = self.log_alpha.detach().exp()
        return temperature if self.config.entropy_bonus else torch.zeros_like(temperature)

    def td_target(self, batch) -> torch.Tensor:
        temperature = self.backup_temperature(self.temperature())
        with torch.no_grad():
            next_actions, next_log_prob, next_kl = self.policy_samples(batch.next_observations)
            next_q = q_at_samples(self.critic_target, batch.next_observations, next_actions).min(dim=1).values
            next_value = next_q.mean(-1)
            if self.config.penalty == "value":
                next_value = next_value - self.kl_weight[:, None] * next_kl
            return soft_bellman_target(batch.rewards, batch.terminals, next_value, next_log_prob.mean(-1),
                                       temperature, self.config.gamma)

    def actor_terms(self, batch) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Eq. 4's loss (Q off during the warm start) and, with `entropy_bonus`, the temperature's, from the networks
        as they are now."""
        temperature = self.temperature()
        q_on = 0.0 if self.warming_up else 1.0
        actions, log_prob, kl = self.policy_samples(batch.observations)
        self.critic_gradients(False)
        q_pi = q_at_samples(self.critic, batch.observations, actions).min(dim=1).values.mean(-1)
        self.critic_gradients(True)
        log_prob = log_prob.mean(-1)
        loss_pi = policy_penalty_actor_loss(q_pi, log_prob, kl, temperature, self.kl_weight, q_on)
        loss_temperature = (temperature_loss(self.log_alpha, log_prob, self.target_entropy)
                            if self.config.entropy_bonus else None)
        log_prob, kl = log_prob.detach(), kl.detach()
        return loss_pi, loss_temperature, {
            "train/actor_loss": (temperature[:, None] * log_prob - q_on * q_pi.detach()
                                 + self.kl_weight[:, None] * kl).mean(-1),
            "train/entropy": -log_prob.mean(-1), "train/temperature": temperature, "train/kl": kl.mean(-1)}

    def regularized_update(self, batch) -> dict[str, torch.Tensor]:
        return SAC.update(self, batch)
