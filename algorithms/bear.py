"""Bootstrapping Error Accumulation Reduction (Kumar, Fu, Tucker & Levine, 2019, "Stabilizing Off-Policy
Q-Learning via Bootstrapping Error Reduction"): support matching through an MMD constraint, as the authors' code
computes it (aviralkumar2907/BEAR algos.py; rail-berkeley/d4rl_evaluations bear/).

- MMD (Gretton et al., 2012), the biased V-statistic of n samples x ~ pi(.|s) and m samples y ~ pi_beta(.|s):
  MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), with the authors' kernels: Laplacian
  k(a, b) = exp(-||a - b||_1 / (2 sigma)), sigma = 10, or Gaussian k(a, b) = exp(-||a - b||_2^2 / (2 sigma)),
  sigma = 20. As there, the samples are the *raw pre-tanh* values u = mu(s) + sigma(s) * clip(z, -0.5, 0.5),
  z ~ N(0, I) ("to prevent gradient dying out"), and the constrained quantity is MMD = sqrt(MMD^2 + 1e-6): the
  scale eps = 0.05 refers to. The Q term is taken at the same samples, squashed.
- policy improvement (section 5): max_pi E_s E_a~pi [ min_j Q_j(s, a) ] s.t. E_s [ MMD(pi(.|s), pi_beta(.|s)) ] <= eps,
  solved by dual gradient descent on the Lagrangian
  L_pi = E_s [ -min_j E_a~pi Q_j(s, a) + alpha * (MMD(s) - eps) ],  alpha = exp(log alpha) >= 0,
  with log alpha raised while MMD > eps and clamped to [-5, 10], as in both codebases. For the first
  `warm_start_updates` updates after the behaviour fit the actor minimizes alpha * MMD alone, while the critic and
  alpha learn (d4rl_evaluations bear.py: `if self._n_train_steps_total >= 40000`, a constant there; the original
  algos.py waits 20 evaluation epochs).
- critic (algorithm 1): y = r + gamma * (1 - done) * max_k [ lambda min_j Q'_j(s', a_k)
  + (1 - lambda) max_j Q'_j(s', a_k) ],  a_k ~ pi(.|s'), k = 1..p, lambda = 0.75 (BCQ's soft clipped double-Q).
- acting (`select_action` in algos.py): draw 10 actions of pi(.|s) and take the one the first critic scores
  highest (`evaluation_actions: max_q`); `mean` acts with tanh(mu(s)).

The two author codebases differ; each setting says which it follows. From the original (aviralkumar2907/BEAR,
algos.py and its readme's "hyperparameters that generally work well"): the Laplacian kernel with sigma 10 (Gaussian:
20), 5 MMD samples (`num_samples`; main.py's default is 10, d4rl_evaluations' BEARTrainer 4), the actor's Q as each
critic's mean over those samples, then the min (d4rl_evaluations: the min at the first sample only), taken from the
critic after its step (d4rl_evaluations computes every loss before any step), acting with the best of 10
(d4rl_evaluations' README: `num_samples=100`). From d4rl_evaluations (bear/, the version the authors
recommend; examples/bear_hdf5_d4rl.py and rlkit/torch/sac/bear.py): policy lr 1e-4 and Q lr 3e-4 (the original:
Adam's default 1e-3), the 40k-update warm start, no target actor (the next actions come from pi itself; the original
keeps a Polyak-averaged one), log alpha starting at 0 (the original: randn). Both: eps 0.05, 10 target actions,
lambda 0.75, alpha's lr 1e-3, Polyak 0.005.
pi_beta-hat is both codebases' conditional VAE (BCQ's; `networks.ConditionalVAE`: 750x750 encoder and decoder, a
latent of 2|A| dimensions clipped to +-0.5 when sampled, recon + 0.5 KL at lr 3e-4 as d4rl_evaluations, 1e-3 in the
original), one step of it opening every update from the first, as in both; the MMD compares its raw decoder outputs
d3(.) (decode_multiple's second value) with the policy's raw samples.

Our own, each named: `behavior_model: gaussian` replaces the VAE by a squashed Gaussian fitted by maximum likelihood
for `behavior_pretrain_steps` before the actor-critic starts, then frozen (BRAC's `BehaviorPretraining`; this
project's default until Hopper showed its MMD floor: where the data's actions saturate its raw samples spread wide,
and no policy gets the sampled MMD against them below eps); there is no entropy term; the networks start with
PyTorch's default initialization (rlkit's fan-in and small-output inits are not reproduced); `mmd_samples:
squashed` measures the MMD on actions scaled to [-1, 1] (the Gaussian's with unclipped noise) instead.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from .base import ConfigError, Learner, LearnerConfig
from .brac import BehaviorPretraining, check_behavior_fields
from .networks import ConditionalVAE, PackedCritic, TanhGaussianPolicy, polyak_update, q_at_samples
from .optim import PackedAdam, descend
from .sac import critic_loss

KERNEL_SIGMA = {"laplacian": 10.0, "gaussian": 20.0}      # the authors' mmd_sigma for each kernel
MMD_NOISE_CLIP = 0.5                                       # the authors' clamp of the raw samples' noise
MMD_SAMPLES = ("raw", "squashed")
BEHAVIOR_MODELS = ("vae", "gaussian")
GAUSSIAN_PRETRAIN_STEPS = 10_000    # our squashed-Gaussian pi_beta-hat's fit before the actor-critic starts
EVALUATION_ACTIONS = ("max_q", "mean")
LOG_LAGRANGE_MIN, LOG_LAGRANGE_MAX = -5.0, 10.0
EVALUATION_SEED = 1_000_003       # offset of the acting generators' seeds from the members' own


def _mmd_squared(x: torch.Tensor, y: torch.Tensor, kernel: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The V-statistic of MMD^2 with `kernel` a function of the pairwise differences `[..., n, m, d]`."""
    def mean_kernel(a, b):
        return kernel(a.unsqueeze(-2) - b.unsqueeze(-3)).mean(dim=(-2, -1))
    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def mmd_laplacian(x: torch.Tensor, y: torch.Tensor, sigma: float = KERNEL_SIGMA["laplacian"]) -> torch.Tensor:
    """MMD^2 with the authors' k(a, b) = exp(-||a - b||_1 / (2 sigma)): x `[P, B, n, d]`, y `[P, B, m, d]` -> `[P, B]`."""
    return _mmd_squared(x, y, lambda diff: torch.exp(-diff.abs().sum(-1) / (2 * sigma)))


def mmd_gaussian(x: torch.Tensor, y: torch.Tensor, sigma: float = KERNEL_SIGMA["gaussian"]) -> torch.Tensor:
    """MMD^2 with the authors' k(a, b) = exp(-||a - b||_2^2 / (2 sigma)) (sigma, not sigma^2):
    x `[P, B, n, d]`, y `[P, B, m, d]` -> `[P, B]`."""
    return _mmd_squared(x, y, lambda diff: torch.exp(-diff.pow(2).sum(-1) / (2 * sigma)))


def clipped_raw_samples(mu: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor,
                        clip: float | None = MMD_NOISE_CLIP) -> torch.Tensor:
    """Pre-tanh samples u = mu + sigma * clip(z, -clip, clip) `[P, B, n, d]` of a squashed Gaussian whose `mu`,
    `log_std` are `[P, B, d]`, from standard normal `noise` `[P, B, n, d]`; `clip=None` leaves z as it is."""
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    return mu.unsqueeze(-2) + log_std.exp().unsqueeze(-2) * noise


def soft_clipped_double_q(q: torch.Tensor, min_weight: float) -> torch.Tensor:
    """lambda * min_j Q_j + (1 - lambda) * max_j Q_j over the critic axis 1 of `q` `[P, E, ...]`."""
    return min_weight * q.min(dim=1).values + (1 - min_weight) * q.max(dim=1).values


def constrained_actor_loss(q_pi: torch.Tensor, mmd: torch.Tensor, lagrange_multiplier: torch.Tensor) -> torch.Tensor:
    """The Lagrangian's policy part: `q_pi` (min over critics, averaged over pi's samples) and `mmd` `[P, B]`,
    the multiplier `[P]` held fixed; the sum over members of the batch mean of -Q + alpha * MMD."""
    return (-q_pi + lagrange_multiplier[:, None] * mmd).mean(-1).sum()


def lagrange_loss(log_lagrange: torch.Tensor, mmd: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Dual ascent on alpha = exp(log alpha) `[P]`: minimizing -alpha * (E_s MMD - eps) raises alpha while
    the constraint is violated; `mmd` `[P, B]` is held fixed, `threshold` is eps `[P]`."""
    return -(log_lagrange.exp() * (mmd.mean(-1) - threshold)).sum()


@dataclass
class BEARConfig(LearnerConfig):
    mmd_threshold: float = 0.05          # eps (both codebases: 0.05)
    kernel: str = "laplacian"            # "laplacian" or "gaussian" (BEAR readme: both "generally work well")
    kernel_sigma: float | None = None    # None: the BEAR readme's 10 for the Laplacian kernel, 20 for the Gaussian
    mmd_samples: str = "raw"             # "raw": pre-tanh, noise clipped to +-0.5 (both codebases); "squashed"
    num_samples: int = 5                 # n = m samples of pi and pi_beta-hat per state (BEAR readme: num_samples_match=5)
    num_target_samples: int = 10         # p actions of pi(.|s') the target maximizes over (both)
    min_q_weight: float = 0.75           # lambda of the soft clipped double-Q target (both)
    evaluation_actions: str = "max_q"    # "max_q": the best-Q of `num_evaluation_samples` draws (both); "mean"
    num_evaluation_samples: int = 10     # algos.py select_action (d4rl_evaluations README: 100)
    actor_lr: float = 1e-4               # d4rl_evaluations bear_hdf5_d4rl.py --policy_lr 1e-4
    critic_lr: float = 3e-4              # d4rl_evaluations --qf_lr 3e-4
    lagrange_lr: float = 1e-3            # both: the multiplier's Adam at 1e-3
    polyak: float = 0.005                # both: soft_target_tau / tau 5e-3
    warm_start_updates: int = 40_000     # MMD-only actor first (d4rl_evaluations bear.py: _n_train_steps_total >= 40000)
    behavior_model: str = "vae"          # "vae": BCQ's conditional VAE, trained at every update (both codebases);
                                         # "gaussian": ours, a squashed Gaussian fitted first by max-likelihood, then frozen
    behavior_hidden: tuple[int, ...] = (750, 750)    # the VAE's encoder and decoder (both codebases)
    behavior_lr: float = 3e-4            # the VAE's Adam (d4rl_evaluations bear.py: lr=3e-4; the original: 1e-3)
    behavior_pretrain_steps: int | None = None       # None: 0 for the VAE (both codebases train it alongside from the
                                                     # first update), 10,000 for the Gaussian
    behavior_entropy: bool = False       # pure max-likelihood (both codebases fit a VAE by its ELBO, no entropy term)

    def __post_init__(self):
        if self.behavior_pretrain_steps is None:
            self.behavior_pretrain_steps = 0 if self.behavior_model == "vae" else GAUSSIAN_PRETRAIN_STEPS
        super().__post_init__()
        self.check(self.behavior_model in BEHAVIOR_MODELS, "behavior_model", " or ".join(BEHAVIOR_MODELS))
        self.check(all(h >= 1 for h in self.behavior_hidden), "behavior_hidden", "positive layer widths")
        self.check(not (self.behavior_entropy and self.behavior_model == "vae"), "behavior_entropy",
                   "false with behavior_model: vae (the entropy term is the Gaussian's)")
        self.check(self.mmd_threshold > 0, "mmd_threshold", "positive (0.05 in the paper)")
        self.check(self.kernel in KERNEL_SIGMA, "kernel", "'laplacian' or 'gaussian'")
        self.check(self.kernel_sigma is None or self.kernel_sigma > 0, "kernel_sigma", "positive, or None")
        self.check(self.mmd_samples in MMD_SAMPLES, "mmd_samples", " or ".join(MMD_SAMPLES))
        self.check(self.evaluation_actions in EVALUATION_ACTIONS, "evaluation_actions", " or ".join(EVALUATION_ACTIONS))
        self.check(self.num_evaluation_samples >= 1, "num_evaluation_samples", "at least 1")
        self.check(self.num_samples >= 1, "num_samples", "at least 1 (5 to 10 in the paper)")
        self.check(self.num_target_samples >= 1, "num_target_samples", "at least 1")
        self.check(0.0 <= self.min_q_weight <= 1.0, "min_q_weight", "in [0, 1]")
        self.check(0.0 < self.polyak <= 1.0, "polyak", "in (0, 1]")
        for name in ("actor_lr", "critic_lr", "lagrange_lr"):
            self.check(getattr(self, name) > 0, name, "positive")
        check_behavior_fields(self)


class BEAR(BehaviorPretraining, Learner):
    Config = BEARConfig
    PACKABLE = ("seed", "mmd_threshold", "actor_lr", "critic_lr")
    CONSTRAINT_KNOBS = {"mmd_threshold": "lower"}    # the MMD allowed from the behaviour policy

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        cfg, P = self.config, self.members
        self.policy = TanhGaussianPolicy(P, obs_dim, act_dim, cfg.hidden, self.action_low, self.action_high,
                                         init=cfg.init)
        self.critic = PackedCritic(P, obs_dim, act_dim, cfg.hidden, init=cfg.init)
        self.log_lagrange = torch.nn.Parameter(torch.zeros(P))
        self.finish_init()
        self.add_behavior_policy(ConditionalVAE(P, obs_dim, act_dim, cfg.behavior_hidden, self.action_low,
                                                self.action_high, init=cfg.init)
                                 if cfg.behavior_model == "vae" else None)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.threshold = self.knob("mmd_threshold")
        self.mmd = mmd_laplacian if cfg.kernel == "laplacian" else mmd_gaussian
        self.sigma = KERNEL_SIGMA[cfg.kernel] if cfg.kernel_sigma is None else cfg.kernel_sigma
        self.actor_optimizer = PackedAdam(self.policy.parameters(), lr=self.knob("actor_lr"))
        self.critic_optimizer = PackedAdam(self.critic.parameters(), lr=self.knob("critic_lr"))
        self.lagrange_optimizer = PackedAdam([self.log_lagrange], lr=cfg.lagrange_lr)
        # Acting draws from generators of its own, so that evaluating (how often, how long) never shifts the
        # training noise; seeded apart from the members' training generators.
        self.evaluation_generators = [torch.Generator(device=self.device).manual_seed(int(c.seed) + EVALUATION_SEED)
                                      for c in self.configs]

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """`[P, N, obs]` -> `[P, N, act]`: with `evaluation_actions: max_q` the action, of
        `num_evaluation_samples` drawn from pi(.|s), that the first critic scores highest (the authors'
        `select_action`); with `mean`, tanh(mu(s))."""
        cfg = self.config
        if cfg.evaluation_actions == "mean":
            return self.policy.deterministic(observations)
        N, M = observations.shape[1], cfg.num_evaluation_samples
        noise = self.normal(N, M, self.act_dim, generators=self.evaluation_generators)
        candidates = self.policy.sample(observations, noise)[0]                           # [P, N, M, act]
        q_first = q_at_samples(self.critic, observations, candidates)[:, 0]               # [P, N, M]
        best = q_first.argmax(dim=-1)[..., None, None].expand(-1, -1, 1, self.act_dim)
        return candidates.gather(2, best).squeeze(2)

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic(observations, actions).min(dim=1).values

    def sample_actions(self, policy: TanhGaussianPolicy, observations: torch.Tensor, n: int) -> torch.Tensor:
        """n actions per state `[P, B, n, act]` from `policy`, noise from the members' generators."""
        return policy.sample(observations, self.normal(observations.shape[1], n, self.act_dim))[0]

    def constraint_samples(self, policy: TanhGaussianPolicy, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_samples` actions per state of `policy` `[P, B, n, act]`, and the values the MMD compares: the raw
        pre-tanh samples (noise clipped to +-0.5), or with `mmd_samples: squashed` the actions scaled to [-1, 1]."""
        noise = self.normal(observations.shape[1], self.config.num_samples, self.act_dim)
        mu, log_std = policy.distribution(observations)
        raw = self.config.mmd_samples == "raw"
        u = clipped_raw_samples(mu, log_std, noise, MMD_NOISE_CLIP if raw else None)
        return policy.squash(u), (u if raw else torch.tanh(u))

    def behavior_samples(self, observations: torch.Tensor) -> torch.Tensor:
        """The values of pi_beta-hat that the MMD compares `[P, B, n, act]`, as `constraint_samples` gives the
        policy's: the VAE's raw decoder outputs for latents clipped to +-0.5 (both codebases' decode_multiple), or
        the Gaussian's raw samples; with `mmd_samples: squashed`, their tanh."""
        cfg = self.config
        if cfg.behavior_model == "gaussian":
            return self.constraint_samples(self.behavior, observations)[1]
        u = self.behavior.sample_raw(observations, self.normal(observations.shape[1], cfg.num_samples,
                                                               self.behavior.latent_dim))
        return u if cfg.mmd_samples == "raw" else torch.tanh(u)

    def fit_behavior(self, batch) -> dict[str, torch.Tensor]:
        """One step of pi_beta-hat: the VAE's recon + 0.5 KL (both codebases), or the Gaussian's max-likelihood."""
        if self.config.behavior_model == "gaussian":
            return super().fit_behavior(batch)
        noise = self.normal(batch.observations.shape[1], self.behavior.latent_dim)
        loss = self.behavior.loss(batch.observations, batch.actions, noise)
        descend(self.behavior_optimizer, loss.sum())
        return {"train/behavior_vae_loss": loss.detach()}

    def behavior_metrics(self, batch) -> dict[str, torch.Tensor]:
        # The VAE trains on in regularized_update, which reports its loss; it has no likelihood to report.
        return super().behavior_metrics(batch) if self.config.behavior_model == "gaussian" else {}

    def td_target(self, batch) -> torch.Tensor:
        cfg = self.config
        with torch.no_grad():
            next_actions = self.sample_actions(self.policy, batch.next_observations, cfg.num_target_samples)
            next_q = q_at_samples(self.critic_target, batch.next_observations, next_actions)
            next_value = soft_clipped_double_q(next_q, cfg.min_q_weight).max(dim=-1).values
            return batch.rewards + cfg.gamma * (1.0 - batch.terminals) * next_value

    def regularized_update(self, batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        # As both codebases: the VAE's step opens every update; the Gaussian stays as its pretraining left it.
        behavior_metrics = self.fit_behavior(batch) if cfg.behavior_model == "vae" else {}
        target = self.td_target(batch)
        q = self.critic(batch.observations, batch.actions)
        loss_q = critic_loss(q, target)
        descend(self.critic_optimizer, loss_q)

        actions, samples = self.constraint_samples(self.policy, batch.observations)
        with torch.no_grad():
            behavior_samples = self.behavior_samples(batch.observations)
        mmd = (self.mmd(samples, behavior_samples, self.sigma) + 1e-6).sqrt()
        self.critic_gradients(False)
        # As the authors: each critic's Q averaged over pi's samples, then the min over critics.
        q_pi = q_at_samples(self.critic, batch.observations, actions).mean(-1).min(dim=1).values
        self.critic_gradients(True)
        multiplier = self.log_lagrange.detach().exp()
        q_on = 0.0 if self.warming_up else 1.0
        loss_pi = constrained_actor_loss(q_on * q_pi, mmd, multiplier)
        descend(self.actor_optimizer, loss_pi)

        mmd = mmd.detach()
        loss_lagrange = lagrange_loss(self.log_lagrange, mmd, self.threshold)
        descend(self.lagrange_optimizer, loss_lagrange)
        with torch.no_grad():
            self.log_lagrange.clamp_(LOG_LAGRANGE_MIN, LOG_LAGRANGE_MAX)

        polyak_update(self.critic_target, self.critic, cfg.polyak)
        q, q_pi = q.detach(), q_pi.detach()
        return {**behavior_metrics, "train/q_data_mean": q.mean(dim=(1, 2)),
                "train/critic_loss": (q - target[:, None]).pow(2).mean(dim=(1, 2)),
                "train/actor_loss": (-q_on * q_pi + multiplier[:, None] * mmd).mean(-1),
                "train/mmd": mmd.mean(-1), "train/lagrange_multiplier": self.log_lagrange.detach().exp()}

    def checkpoint(self) -> dict:
        return {**super().checkpoint(), "evaluation_generators": [g.get_state() for g in self.evaluation_generators]}

    def restore(self, state: dict) -> None:
        written = "vae" if any(k.startswith("behavior.encoder.") for k in state["model"]) else "gaussian"
        if written != self.config.behavior_model:
            raise ConfigError(f"this checkpoint's pi_beta-hat is the {written} behaviour model and this run's the "
                              f"{self.config.behavior_model}: resume it with the algorithm config's "
                              f"behavior_model: {written}")
        super().restore(state)
        for generator, rng_state in zip(self.evaluation_generators, state["evaluation_generators"]):
            generator.set_state(rng_state.cpu())
