"""The learned dynamics model MOPO and COMBO share: an ensemble of probabilistic networks, trained once
per (dataset, config) and cached.

The model is that of PETS (Chua et al., 2018, "Deep Reinforcement Learning in a Handful of Trials using
Probabilistic Dynamics Models") as MBPO (Janner et al., 2019, "When to Trust Your Model") and MOPO
(Yu et al., 2020, "MOPO: Model-based Offline Policy Optimization", section 4.3) train it:

- E Gaussian MLPs (4 x 200, SiLU/swish) f_i(s, a) = N(mu_i, diag(sigma_i^2)) of the target
  y = (s' - s, r), all E packed into one PackedMLP (weights `[E, in, out]`). Inputs and targets are
  normalized with the mean and std of the training split.
- log sigma^2 is soft-bounded between learnable bounds (PETS appendix A.1):
  logvar = max - softplus(max - raw);  logvar = min + softplus(logvar - min).
- loss: the Gaussian negative log-likelihood per member (mean over the minibatch and output dimensions)
  `gaussian_nll`, summed over members, + 0.01 * sum(max_logvar - min_logvar) (keeps the bounds tight),
  + MBPO's per-layer L2 weight decay. Each member trains on its own bootstrap of the training split.
- a held-out split (min(1000, 20%) of the transitions) stops training MBPO's way: after `patience`
  epochs in which no member improved its held-out MSE by more than 1%, each member goes back to its best
  epoch's weights. The `elites` members with the lowest held-out MSE (normalized targets, mean over
  dimensions) are the elites; rollouts use only them.

Uncertainty (MOPO eq. 4 and section 4.3): `max_std_norm` u(s, a) = max_i ||sigma_i(s, a)||_2 over all E members,
as MOPO's code (and OfflineRL-Kit's) takes it, while only the elites generate the data (`uncertainty_models:
elites` takes it over the elites alone), and the
alternative `disagreement` = max_i ||mu_i - mean_j mu_j||_2.

Termination: the env's known rule where one is registered (`TERMINATION_FNS`: Pendulum and HalfCheetah
never terminate; Hopper and Walker2d use Gymnasium's health checks, as MBPO's static functions do).
For any other env: when its dataset holds no terminal transition, rollouts never terminate (the data show
no termination to model); otherwise `termination_fn` raises an error that says to register a rule with
`register_termination`.

Bounds: `observation_bounds` says where model states may go (the env's observation space by default, or the
data's range with a margin); `sample_step` and `rollout` clamp next states into them when given.

`load_or_train` caches the trained model under a content hash of (the transition arrays, the
DynamicsConfig with its seed, FORMAT_VERSION): a directory with `model.pt` (state dict, loaded with
`weights_only=True`) and `report.json`, written under a temporary name and renamed when complete, under a
file lock so that trials asking at once train it once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium.envs.registration import parse_env_id

from ..datasets.progress import Progress
from .base import CheckedConfig
from .networks import PackedLinear, PackedMLP, init_members
from .optim import descend

FORMAT_VERSION = 1
MBPO_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)   # MBPO's per-layer L2 weights for 4 x 200
PREDICT_ROWS = 1 << 16                                       # rows per forward pass when predicting


class DynamicsError(ValueError):
    """The dynamics model cannot serve this dataset or env as asked; the message names the fix."""


# --- configuration ------------------------------------------------------------------------------------
@dataclasses.dataclass
class DynamicsConfig(CheckedConfig):
    ensemble: int = 7
    elites: int = 5
    hidden: tuple[int, ...] = (200, 200, 200, 200)
    lr: float = 1e-3
    weight_decay: float | tuple[float, ...] | None = None   # None: MBPO's per-layer values (see layer_decays)
    logvar_bound_weight: float = 0.01
    batch_size: int = 256
    holdout_fraction: float = 0.2
    max_holdout: int = 1000
    patience: int = 5                 # epochs without a >`min_improvement` gain in any member before stopping
    min_improvement: float = 0.01
    max_epochs: int = 1000
    seed: int = 0
    compile: bool = False             # each training step one torch.compile(fullgraph=True) graph (train.compile)

    def __post_init__(self):
        self.layer_sizes("hidden")
        if isinstance(self.weight_decay, (list, tuple)):
            self.weight_decay = tuple(float(w) for w in self.weight_decay)
        self.check(self.ensemble >= 1, "ensemble", "at least 1")
        self.check(1 <= self.elites <= self.ensemble, "elites", f"between 1 and ensemble={self.ensemble}")
        self.seed_in_range("seed")
        self.check(self.lr > 0, "lr", "positive")
        decays = self.weight_decay
        self.check(decays is None or (isinstance(decays, tuple) and len(decays) == len(self.hidden) + 1
                                      and min(decays) >= 0) or (isinstance(decays, float) and decays >= 0),
                   "weight_decay", f"null (MBPO's), a value >= 0, or {len(self.hidden) + 1} values >= 0 (one per layer)")
        self.check(self.logvar_bound_weight >= 0, "logvar_bound_weight", ">= 0")
        self.check(self.batch_size >= 1, "batch_size", "at least 1")
        self.check(0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "in (0, 1)")
        self.check(self.max_holdout >= 1, "max_holdout", "at least 1")
        self.check(self.patience >= 1, "patience", "at least 1")
        self.check(self.min_improvement >= 0, "min_improvement", ">= 0")
        self.check(self.max_epochs >= 1, "max_epochs", "at least 1")

    def layer_decays(self) -> list[float]:
        """L2 weight per layer. None gives MBPO's five values, stretched (linearly interpolated) over other depths."""
        layers = len(self.hidden) + 1
        if self.weight_decay is None:
            return np.interp(np.linspace(0, 1, layers), np.linspace(0, 1, len(MBPO_WEIGHT_DECAY)),
                             MBPO_WEIGHT_DECAY).tolist()
        if isinstance(self.weight_decay, tuple):
            return list(self.weight_decay)
        return [float(self.weight_decay)] * layers


# --- losses and uncertainty (pure functions) ------------------------------------------------------------
def soft_bound_logvar(raw: torch.Tensor, max_logvar: torch.Tensor, min_logvar: torch.Tensor) -> torch.Tensor:
    """PETS' soft clamp of a predicted log-variance between learnable bounds (smooth, so the bounds learn)."""
    logvar = max_logvar - F.softplus(max_logvar - raw)
    return min_logvar + F.softplus(logvar - min_logvar)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log N(target; mean, exp(logvar)) per member: `[E, B, D]` each -> `[E]`, the mean over B and D."""
    return 0.5 * ((target - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).mean(dim=(1, 2))


def logvar_bound_penalty(max_logvar: torch.Tensor, min_logvar: torch.Tensor) -> torch.Tensor:
    """sum(max_logvar) - sum(min_logvar): pulls the learnable bounds together, as PETS/MBPO add with weight 0.01."""
    return max_logvar.sum() - min_logvar.sum()


def max_std_norm(std: torch.Tensor) -> torch.Tensor:
    """MOPO's u(s, a) = max_i ||sigma_i(s, a)||_2: `std` is `[K, ..., D]` (K members) -> `[...]`."""
    return torch.linalg.vector_norm(std, dim=-1).amax(dim=0)


def disagreement(means: torch.Tensor) -> torch.Tensor:
    """Ensemble discrepancy max_i ||mu_i - mean_j mu_j||_2: `means` is `[K, ..., D]` -> `[...]`."""
    return torch.linalg.vector_norm(means - means.mean(dim=0, keepdim=True), dim=-1).amax(dim=0)


UNCERTAINTY_MODELS = ("all", "elites")
UNCERTAINTIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "max_std": lambda means, stds: max_std_norm(stds), "disagreement": lambda means, stds: disagreement(means)}


# --- termination ------------------------------------------------------------------------------------------
TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def never_terminates(obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


def hopper_terminates(obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Gymnasium Hopper: healthy while every state entry but the height lies in (-100, 100), height > 0.7
    and |torso angle| < 0.2 (obs[0] is the height, obs[1] the angle). MBPO's static function writes the
    first test as `abs(x < 100)`, a slip; the env's rule is the absolute value."""
    healthy = (torch.isfinite(next_obs).all(-1) & (next_obs[..., 1:].abs() < 100).all(-1)
               & (next_obs[..., 0] > 0.7) & (next_obs[..., 1].abs() < 0.2))
    return ~healthy


def walker2d_terminates(obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Gymnasium Walker2d: healthy while 0.8 < height < 2.0 and -1 < torso angle < 1."""
    height, angle = next_obs[..., 0], next_obs[..., 1]
    return ~((height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0))


TERMINATION_FNS: dict[str, TerminationFn] = {"Pendulum": never_terminates, "HalfCheetah": never_terminates,
                                             "Hopper": hopper_terminates, "Walker2d": walker2d_terminates}


def env_name(env_id: str | None) -> str | None:
    """`Hopper` for `Hopper-v5` (and `ns/Hopper-v5`): termination rules are registered by this name."""
    return None if env_id is None else parse_env_id(env_id)[1]


def register_termination(name: str, fn: TerminationFn) -> None:
    """Register the termination rule `fn(obs, actions, next_obs) -> bool [...]` (raw observations) of env `name`."""
    TERMINATION_FNS[name] = fn


def termination_fn(env_id: str | None, dataset=None) -> TerminationFn:
    """The registered rule of `env_id`; for an unregistered env, `never_terminates` when `dataset` holds no
    terminal transition, else a DynamicsError naming the fix."""
    name = env_name(env_id)
    if name in TERMINATION_FNS:
        return TERMINATION_FNS[name]
    if dataset is not None and not np.asarray(dataset.terminals).any():
        return never_terminates
    raise DynamicsError(f"no termination rule for env {env_id!r} (its dataset has terminal transitions); register "
                        f"one with offline_sweeps.algorithms.dynamics.register_termination({name!r}, fn)")


# --- where model states may go -----------------------------------------------------------------------------
class ObservationBounds(NamedTuple):
    """Raw observation bounds `[obs]` each (entries may be infinite); model steps clamp next states into them."""
    low: torch.Tensor
    high: torch.Tensor


CLIP_MODES = ("env", "data", "none")


def observation_bounds(dataset, mode: str = "env", margin: float = 0.1, device: torch.device | str = "cpu"
                       ) -> ObservationBounds | None:
    """Where model rollouts may put the state, like the termination rules a piece of known env structure.

    "env": the env's observation space (a Box) as the dataset records it; Pendulum's is cos, sin in [-1, 1] and
    angular velocity in [-8, 8] (the env clips the velocity; an unclamped model lets it run away in states no
    transition covers). Infinite entries (MuJoCo's) leave that dimension free, so None when all are.
    "data": the range of the dataset's observations and next observations, widened by `margin` times its width
    on each side, and inside the env's bounds. "none": None (no clamping)."""
    if mode not in CLIP_MODES:
        raise DynamicsError(f"observation clipping {mode!r}: choose one of {', '.join(CLIP_MODES)}")
    if mode == "none":
        return None
    obs_dim = np.asarray(dataset.observations).shape[1]
    space = getattr(dataset, "observation_space", None)
    if isinstance(space, gym.spaces.Box) and space.shape == (obs_dim,):
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    else:
        low, high = np.full(obs_dim, -np.inf), np.full(obs_dim, np.inf)
    if mode == "data":
        seen = np.concatenate([dataset.observations, dataset.next_observations]).astype(np.float64)
        width = seen.max(0) - seen.min(0)
        low, high = np.maximum(low, seen.min(0) - margin * width), np.minimum(high, seen.max(0) + margin * width)
    elif not (np.isfinite(low).any() or np.isfinite(high).any()):
        return None
    return ObservationBounds(torch.as_tensor(low, dtype=torch.float32, device=device),
                             torch.as_tensor(high, dtype=torch.float32, device=device))


# --- the ensemble ---------------------------------------------------------------------------------------
class DynamicsEnsemble(nn.Module):
    """E Gaussian MLPs predicting (s' - s, r) from (s, a), in raw (unnormalized) units at the interface.

    `report` holds the training report (see `train_ensemble`); `termination` the env's termination rule.
    """

    def __init__(self, config: DynamicsConfig, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.config, self.obs_dim, self.act_dim = config, obs_dim, act_dim
        E, out = config.ensemble, obs_dim + 1
        self.net = PackedMLP(E, obs_dim + act_dim, 2 * out, config.hidden, nn.SiLU)
        self.max_logvar = nn.Parameter(torch.full((E, 1, out), 0.5))
        self.min_logvar = nn.Parameter(torch.full((E, 1, out), -10.0))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("target_mean", torch.zeros(out))
        self.register_buffer("target_std", torch.ones(out))
        self.register_buffer("elites", torch.arange(config.elites))
        self.report: dict[str, Any] = {}
        self.termination: TerminationFn = never_terminates
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.max_logvar.device

    def normalized_forward(self, inputs: torch.Tensor, members: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized `[K, B, in]` inputs -> normalized mean and bounded log-variance `[K, B, out]` of members
        `members` (K of them; all E when None)."""
        x = inputs
        for layer in self.net.layers:
            if isinstance(layer, PackedLinear):
                weight, bias = (layer.weight, layer.bias) if members is None else (layer.weight[members], layer.bias[members])
                x = torch.baddbmm(bias, x, weight)
            else:
                x = layer(x)
        mean, raw = x.chunk(2, dim=-1)
        max_logvar = self.max_logvar if members is None else self.max_logvar[members]
        min_logvar = self.min_logvar if members is None else self.min_logvar[members]
        return mean, soft_bound_logvar(raw, max_logvar, min_logvar)

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, actions: torch.Tensor, members: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of (s' - s, r) in raw units, `[K, *S, obs_dim + 1]`, for `obs` `[*S, obs_dim]` and
        `actions` `[*S, act_dim]`; K = the elites by default (`members` picks others)."""
        members = self.elites if members is None else members
        shape = obs.shape[:-1]
        inputs = (torch.cat([obs, actions], -1).reshape(-1, self.obs_dim + self.act_dim) - self.input_mean) / self.input_std
        means, stds = [], []
        for chunk in inputs.split(PREDICT_ROWS):
            mean, logvar = self.normalized_forward(chunk.expand(len(members), *chunk.shape), members)
            means.append(mean * self.target_std + self.target_mean)
            stds.append(torch.exp(0.5 * logvar) * self.target_std)
        out = self.obs_dim + 1
        return torch.cat(means, 1).view(len(members), *shape, out), torch.cat(stds, 1).view(len(members), *shape, out)

    @torch.no_grad()
    def sample_step(self, obs: torch.Tensor, actions: torch.Tensor, generators: Sequence[torch.Generator],
                    uncertainty: str = "max_std", bounds: ObservationBounds | None = None,
                    uncertainty_models: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One model step for `[P, N, obs]` / `[P, N, act]` (row p drawing from `generators[p]`): each sample
        takes a random elite and samples its Gaussian, as MOPO does. Returns next observations `[P, N, obs]`
        (clamped to `bounds` when given, see `observation_bounds`), rewards, the uncertainty
        (`UNCERTAINTIES[uncertainty]` over `uncertainty_models`: "all" members, as MOPO's code, or the "elites";
        MOPO's u by default) and termination flags, each `[P, N]`."""
        P, N, _ = obs.shape
        every = uncertainty_models == "all"
        mean, std = self.predict(obs, actions, torch.arange(self.config.ensemble, device=obs.device) if every else None)
        out = mean.shape[-1]
        elites = self.elites if every else torch.arange(len(self.elites), device=obs.device)   # their rows in mean
        choice = elites[torch.stack([torch.randint(len(elites), (N,), generator=g, device=obs.device)
                                     for g in generators])]
        noise = torch.stack([torch.randn((N, out), generator=g, device=obs.device) for g in generators])
        pick = choice[None, :, :, None].expand(1, P, N, out)
        sample = mean.gather(0, pick)[0] + std.gather(0, pick)[0] * noise
        next_obs = obs + sample[..., :self.obs_dim]
        if bounds is not None:
            next_obs = torch.maximum(torch.minimum(next_obs, bounds.high), bounds.low)
        return (next_obs, sample[..., -1], UNCERTAINTIES[uncertainty](mean, std),
                self.termination(obs, actions, next_obs))


class Rollout(NamedTuple):
    """h model steps from N start states for each of P policies: `[h, P, N, ...]`. `valid` marks steps
    taken before the sample's trajectory terminated (later entries are padding)."""
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    uncertainty: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def rollout(ensemble: DynamicsEnsemble, policy: Callable[[torch.Tensor], torch.Tensor], start_obs: torch.Tensor,
            horizon: int, generators: Sequence[torch.Generator], uncertainty: str = "max_std",
            bounds: ObservationBounds | None = None, uncertainty_models: str = "all") -> Rollout:
    """Branched rollouts (MBPO/MOPO): `policy` maps raw `[P, N, obs]` to `[P, N, act]`; `start_obs` is raw
    `[P, N, obs]`; model states are clamped to `bounds` when given. A trajectory stops at its first terminal
    step; all P x N run as one batch."""
    obs = start_obs
    alive = torch.ones(obs.shape[:-1], dtype=torch.bool, device=obs.device)
    steps: list[tuple[torch.Tensor, ...]] = []
    for _ in range(horizon):
        actions = policy(obs)
        next_obs, rewards, u, terminals = ensemble.sample_step(obs, actions, generators, uncertainty, bounds,
                                                               uncertainty_models)
        steps.append((obs, actions, rewards, next_obs, terminals, u, alive))
        alive = alive & ~terminals
        obs = next_obs
    return Rollout(*(torch.stack(parts) for parts in zip(*steps)))


# --- training ---------------------------------------------------------------------------------------------
def _transition_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (s, a) and targets (s' - s, r) of every transition, float32."""
    inputs = np.concatenate([dataset.observations, dataset.actions], 1).astype(np.float32)
    targets = np.concatenate([dataset.next_observations - dataset.observations, dataset.rewards[:, None]],
                             1).astype(np.float32)
    return inputs, targets


def split_holdout(n: int, config: DynamicsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out row indices: min(max_holdout, holdout_fraction * n) rows held out, drawn by `seed`."""
    holdout = min(config.max_holdout, int(config.holdout_fraction * n))
    if holdout < 1 or n - holdout < 1:
        raise DynamicsError(f"{n} transitions are too few to train a dynamics model with a held-out split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(config.seed)))
    return order[holdout:], order[:holdout]


def _standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    std = x.std(0)
    return x.mean(0), torch.where(std < 1e-12, torch.ones_like(std), std)


def train_ensemble(dataset, config: DynamicsConfig, device: torch.device | str = "cpu") -> DynamicsEnsemble:
    """Fit the ensemble on `dataset` (an OfflineDataset, or anything with its transition arrays).

    The returned ensemble's `report`: holdout_mse and holdout_nll per member (normalized targets, mean over
    dimensions), holdout_mse_per_dim (raw units, averaged over the elites; delta-observation dimensions then
    the reward), elites, elite_holdout_mse, elite_holdout_nll, epochs, seconds, train/holdout_transitions.
    """
    started = time.perf_counter()
    device = torch.device(device)
    inputs, targets = (torch.as_tensor(a) for a in _transition_arrays(dataset))
    n = inputs.shape[0]
    train_rows, holdout_rows = split_holdout(n, config)
    holdout = len(holdout_rows)
    generator = torch.Generator().manual_seed(int(config.seed) + 1)      # CPU: the same draws on any device

    ensemble = DynamicsEnsemble(config, dataset.observations.shape[1], dataset.actions.shape[1])
    init_members(ensemble, [generator])
    input_mean, input_std = _standardize(inputs[train_rows])
    target_mean, target_std = _standardize(targets[train_rows])
    ensemble.input_mean.copy_(input_mean)
    ensemble.input_std.copy_(input_std)
    ensemble.target_mean.copy_(target_mean)
    ensemble.target_std.copy_(target_std)
    ensemble.to(device)
    x = ((inputs - input_mean) / input_std).to(device)
    y = ((targets - target_mean) / target_std).to(device)
    x_train, y_train = x[train_rows.to(device)], y[train_rows.to(device)]
    x_hold, y_hold = x[holdout_rows.to(device)], y[holdout_rows.to(device)]

    E, n_train = config.ensemble, n - holdout
    bootstrap = torch.randint(n_train, (E, n_train), generator=generator)     # each member's own resample
    weights = [layer.weight for layer in ensemble.net.layers if isinstance(layer, PackedLinear)]
    decays = config.layer_decays()
    if config.compile:
        # One graph per minibatch shape (the full one and the epoch's remainder): PackedAdam's captured step, as a
        # compiled learner update takes it, since torch's Adam does not trace whole into a graph.
        from .compiled import configure_compiler
        from .optim import PackedAdam
        optimizer = PackedAdam(ensemble.parameters(), lr=config.lr)
        optimizer.capture()
        configure_compiler()
    else:
        optimizer = torch.optim.Adam(ensemble.parameters(), lr=config.lr)

    def fit_step(rows: torch.Tensor) -> None:
        """One gradient step of every member on its rows `[E, B]` of the training split."""
        mean, logvar = ensemble.normalized_forward(x_train[rows])
        loss = (gaussian_nll(mean, logvar, y_train[rows]).sum()
                + config.logvar_bound_weight * logvar_bound_penalty(ensemble.max_logvar, ensemble.min_logvar)
                + sum(d * 0.5 * w.pow(2).sum() for d, w in zip(decays, weights)))
        descend(optimizer, loss)
    step = torch.compile(fit_step, fullgraph=True, dynamic=False) if config.compile else fit_step
    compile_seconds, traced = 0.0, set()       # the first call of each minibatch shape: its trace, code and one step

    def holdout_losses() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, logvar = ensemble.normalized_forward(x_hold.expand(E, *x_hold.shape))
            target = y_hold.expand(E, *y_hold.shape)
            return (mean - target).pow(2).mean(dim=(1, 2)), gaussian_nll(mean, logvar, target)

    best_mse = torch.full((E,), float("inf"), device=device)
    best_state = {name: p.detach().clone() for name, p in ensemble.named_parameters()}
    epochs, stale = 0, 0
    # The ETA is against max_epochs ("at most"): the early stop usually ends the training well before.
    with Progress(f"  dynamics ensemble ({E} x {'x'.join(map(str, config.hidden))}; stops early after "
                  f"{config.patience} epochs without a {config.min_improvement:.0%} gain)", config.max_epochs,
                  unit="epochs", upper_bound=True) as progress:
        while epochs < config.max_epochs and stale < config.patience:
            shuffled = bootstrap.gather(1, torch.rand(E, n_train, generator=generator).argsort(1)).to(device)
            for rows in shuffled.split(config.batch_size, dim=1):
                if config.compile and rows.shape not in traced:
                    traced.add(rows.shape)
                    started_step = time.perf_counter()
                    step(rows)
                    compile_seconds += time.perf_counter() - started_step
                else:
                    step(rows)
            epochs += 1
            mse, _ = holdout_losses()
            improved = (best_mse - mse) / best_mse > config.min_improvement
            improved |= torch.isinf(best_mse) & torch.isfinite(mse)
            if improved.any():
                with torch.no_grad():
                    for name, p in ensemble.named_parameters():
                        best_state[name][improved] = p.detach()[improved]
                best_mse = torch.where(improved, mse, best_mse)
                stale = 0
            else:
                stale += 1
            progress.update(1, holdout_mse=f"{mse.mean().item():.4g}", no_gain=f"{stale}/{config.patience}")
        progress.close("early stop" if stale >= config.patience else "max epochs")
    with torch.no_grad():
        for name, p in ensemble.named_parameters():
            p.copy_(best_state[name])
    mse, nll = holdout_losses()
    elites = mse.argsort()[:config.elites].sort().values
    ensemble.elites.copy_(elites)
    with torch.no_grad():
        mean, _ = ensemble.normalized_forward(x_hold.expand(len(elites), *x_hold.shape), elites)
        raw_error = (mean - y_hold) * target_std.to(device)
        per_dim = raw_error.pow(2).mean(1).mean(0)
    ensemble.report = {
        "holdout_mse": mse.tolist(), "holdout_nll": nll.tolist(), "elites": elites.tolist(),
        "elite_holdout_mse": float(mse[elites].mean()), "elite_holdout_nll": float(nll[elites].mean()),
        "holdout_mse_per_dim": per_dim.tolist(), "epochs": epochs, "seconds": time.perf_counter() - started,
        "train_transitions": n_train, "holdout_transitions": holdout, "cached": False,
        "compile_seconds": compile_seconds}
    return ensemble


# --- the cache ----------------------------------------------------------------------------------------------
def dataset_fingerprint(dataset) -> str:
    """sha256 over the transition arrays the model learns from (dtype, shape and bytes of each)."""
    digest = hashlib.sha256()
    for name in ("observations", "actions", "rewards", "next_observations", "terminals"):
        array = np.ascontiguousarray(getattr(dataset, name))
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def cache_key(dataset, config: DynamicsConfig) -> str:
    """The cache entry's name: a hash of the data, every DynamicsConfig field (the seed too) and FORMAT_VERSION."""
    fields = dataclasses.asdict(config)
    if not fields["compile"]:         # the eager default keeps the keys entries had before the field existed
        del fields["compile"]
    content = json.dumps({"format": FORMAT_VERSION, "data": dataset_fingerprint(dataset), "config": fields},
                         sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def default_model_dir() -> Path:
    """$OFFLINE_SWEEPS_MODEL_DIR, else ~/.cache/offline_sweeps/models. On a cluster, point it at storage
    every node reaches, so each (dataset, config) is trained once for the whole sweep."""
    return Path(os.environ.get("OFFLINE_SWEEPS_MODEL_DIR") or Path.home() / ".cache" / "offline_sweeps" / "models")


def _read_entry(folder: Path, config: DynamicsConfig, obs_dim: int, act_dim: int, device) -> DynamicsEnsemble:
    ensemble = DynamicsEnsemble(config, obs_dim, act_dim, device)
    ensemble.load_state_dict(torch.load(folder / "model.pt", map_location=ensemble.device, weights_only=True))
    entry = json.loads((folder / "report.json").read_text())
    report = entry.get("report") if isinstance(entry, dict) else None
    if not isinstance(report, dict):
        raise ValueError(f"{folder / 'report.json'} holds no report mapping")
    ensemble.report = report
    return ensemble


LOCK_GRACE_SECONDS = 0.5     # a trial loading the entry holds the lock this briefly: no message for that
LOCK_POLL_SECONDS = 1.0      # how often a trial waiting for another's training looks at the lock


@contextlib.contextmanager
def _cache_lock(path: Path, key: str):
    """The cache entry's file lock. When another process holds it (it is training this very model), say so in
    one line and show the wait's elapsed time, instead of hanging silently for as long as a training takes."""
    from filelock import FileLock, Timeout
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_GRACE_SECONDS)
    except Timeout:
        print(f"waiting for dynamics ensemble {key} being trained by another trial ...", file=sys.stderr, flush=True)
        with Progress(f"  waiting for dynamics ensemble {key[:16]}", None) as progress:
            while True:
                try:
                    lock.acquire(timeout=LOCK_POLL_SECONDS)
                    break
                except Timeout:
                    progress.tick()
            progress.close("its training finished")
    try:
        yield
    finally:
        lock.release()


def load_or_train(dataset, config: DynamicsConfig | dict, cache_dir: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu") -> DynamicsEnsemble:
    """The ensemble for (`dataset`, `config`): loaded from `cache_dir` when there, else trained and stored.

    `report["cached"]` says which happened; `report["key"]` and `report["path"]` name the entry. The env's
    termination rule (from `dataset.env_id`) is attached as `ensemble.termination`.
    """
    config = DynamicsConfig.from_dict(config) if isinstance(config, dict) else config
    termination = termination_fn(getattr(dataset, "env_id", None), dataset)
    root = Path(cache_dir) if cache_dir is not None else default_model_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(dataset, config)
    folder = root / key
    obs_dim, act_dim = dataset.observations.shape[1], dataset.actions.shape[1]
    with _cache_lock(root / f"{key}.lock", key):
        ensemble = None
        if folder.is_dir():
            try:
                ensemble = _read_entry(folder, config, obs_dim, act_dim, device)
                ensemble.report["cached"] = True
            except Exception:             # torch.load and a malformed report.json raise many types
                pass                      # renames are atomic, so damage came from outside: a miss, rebuilt below
        if ensemble is None:
            ensemble = train_ensemble(dataset, config, device)
            temporary = root / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir()
            torch.save({k: v.cpu() for k, v in ensemble.state_dict().items()}, temporary / "model.pt")
            (temporary / "report.json").write_text(json.dumps(
                {"format": FORMAT_VERSION, "dataset_id": getattr(dataset, "dataset_id", None),
                 "env_id": getattr(dataset, "env_id", None), "config": dataclasses.asdict(config),
                 "report": ensemble.report}, indent=1))
            if folder.exists():           # the damaged entry: swapped out only once its replacement is whole
                retired = root / f".{key}.{os.getpid()}.retired"
                shutil.rmtree(retired, ignore_errors=True)
                os.rename(folder, retired)
                os.rename(temporary, folder)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(temporary, folder)
    ensemble.report.update(key=key, path=str(folder))
    ensemble.termination = termination
    return ensemble
