"""What MOPO and COMBO share: SAC trained on a mix of real data and short rollouts of a learned model.

The scheme is MBPO's (Janner et al., 2019, algorithm 2) as MOPO (Yu et al., 2020, algorithm 2) and
COMBO (Yu et al., 2021, algorithm 1) run it offline:
- once: load or train the dynamics ensemble (dynamics.py), cached per (dataset, DynamicsConfig);
- every `rollout_every` updates: from `rollout_batch_size` states sampled from the dataset, roll each
  member's own (stochastic) policy `rollout_length` steps in the model and add the transitions to that
  member's model buffer, a ring holding the last `model_retain_rollouts` refreshes;
- every update: a minibatch of `real_ratio * B` dataset transitions followed by `(1 - real_ratio) * B`
  model transitions, drawn by the member's generator.

Model states are clamped into `observation_bounds(dataset, clip_observations)` (dynamics.py) at every model
step, in the rollouts and in `eval/model_return`: by default the env's observation space, known structure like
the termination rules (Pendulum: velocity in [-8, 8], which the env enforces and an unclamped model does not:
over 200 simulated steps its velocity ran away to hundreds of rad/s, so that on Pendulum medium data
`eval/model_return` sat 800-3200 *below* `eval/return`; clamped, within about 150 of it).

The model works in raw units: start states are un-normalized, the policy sees normalized observations,
and rollout rewards `rollout_reward(r, u)` (MOPO subtracts its penalty there) are put on the buffer's
reward scale before they are stored. Each member's rollouts use its own generator (start states, actions,
elite choice, model noise), so a packed member still equals its solo run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ..datasets.buffer import PackedRolloutBuffer, mixed_rows, transition_rows
from ..datasets.rollout import make_env
from .base import DataContext
from .dynamics import (CLIP_MODES, UNCERTAINTIES, UNCERTAINTY_MODELS, DynamicsEnsemble, DynamicsError,
                       ObservationBounds, load_or_train, observation_bounds, rollout)
from .sac import SAC, SACConfig


@dataclass
class ModelBasedConfig(SACConfig):
    rollout_length: int = 5              # h
    rollout_batch_size: int = 50_000     # start states per refresh (per member)
    rollout_every: int = 1000            # updates between refreshes
    model_retain_rollouts: int = 5       # refreshes the model buffer holds (MBPO's model_retain_epochs)
    real_ratio: float = 0.05
    uncertainty: str = "max_std"         # "max_std" (MOPO: max_i ||sigma_i||) or "disagreement" (of the means)
    uncertainty_models: str = "all"      # u over "all" ensemble members (MOPO's code) or the "elites" only
    clip_observations: str = "env"       # model states clamped to: the env's observation space, "data" range, "none"
    clip_margin: float = 0.1             # "data": the dataset's range widened by this fraction of its width per side

    def __post_init__(self):
        super().__post_init__()
        for name in ("rollout_length", "rollout_batch_size", "rollout_every", "model_retain_rollouts"):
            self.check(getattr(self, name) >= 1, name, "at least 1")
        self.check(0.0 <= self.real_ratio <= 1.0, "real_ratio", "in [0, 1]")
        self.check(self.uncertainty in UNCERTAINTIES, "uncertainty", f"one of {', '.join(UNCERTAINTIES)}")
        self.check(self.uncertainty_models in UNCERTAINTY_MODELS, "uncertainty_models",
                   f"one of {', '.join(UNCERTAINTY_MODELS)}")
        self.check(self.clip_observations in CLIP_MODES, "clip_observations", f"one of {', '.join(CLIP_MODES)}")
        self.check(self.clip_margin >= 0, "clip_margin", ">= 0")

    @property
    def model_buffer_capacity(self) -> int:
        return self.model_retain_rollouts * self.rollout_batch_size * self.rollout_length


@dataclass
class AttachedModel:
    """The trained ensemble and how to move between its raw units and the learner's buffer."""
    ensemble: DynamicsEnsemble
    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    reward_scale: float
    reward_bias: float
    episode_start_observations: torch.Tensor     # raw `[episodes, obs]`: `eval/model_return`'s starts without an env
    max_episode_steps: int
    bounds: ObservationBounds | None = None      # where model states are clamped (config.clip_observations)
    env_id: str | None = None                    # `eval/model_return` starts where the env evaluation does

    def normalize(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.obs_mean) / self.obs_std

    def raw(self, observations: torch.Tensor) -> torch.Tensor:
        return observations * self.obs_std + self.obs_mean


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the first (member) axis, counting only `mask`: `[P, ...]` -> `[P]`."""
    kept = torch.where(mask, values, torch.zeros_like(values))      # padding may hold inf/NaN: never multiply it
    return kept.flatten(1).sum(1) / mask.flatten(1).sum(1)


class ModelBasedSAC(SAC):
    """SAC on mixed real and model data; subclasses say how rollout rewards are shaped and may replace
    the critic objective (COMBO)."""
    Config = ModelBasedConfig
    USES_MODEL = True

    def __init__(self, configs, obs_dim, act_dim, action_low=-1.0, action_high=1.0, device="cpu"):
        super().__init__(configs, obs_dim, act_dim, action_low, action_high, device)
        cfg = self.config
        self.model_buffer = PackedRolloutBuffer(self.members, cfg.model_buffer_capacity, obs_dim, act_dim, self.device)
        self.real_rows = mixed_rows(cfg.real_ratio, cfg.batch_size)     # sample_mixed puts them first
        self.batches_drawn = 0
        self.world: AttachedModel | None = None
        self._restored_key: str | None = None
        # Figures of the latest refresh per member: env reward, the reward stored (penalized for MOPO), u.
        self.register_buffer("rollout_stats", torch.full((3, self.members), float("nan"), device=self.device))

    # --- data ------------------------------------------------------------------------------------------
    def attach_data(self, context: DataContext) -> None:
        """Load (or train, once per cache entry) the dynamics ensemble for the dataset."""
        self.attach_model(load_or_train(context.dataset, context.model, context.model_dir, self.device), context)

    def attach_model(self, ensemble: DynamicsEnsemble, context: DataContext) -> None:
        """Use `ensemble` (however it was made) with the dataset and buffer of `context`."""
        dataset, buffer = context.dataset, context.buffer
        if self._restored_key is not None and self._restored_key != ensemble.report.get("key"):
            raise DynamicsError(f"the checkpoint was trained with dynamics model {self._restored_key}, but this run "
                                f"has {ensemble.report.get('key')}: restore with the same dataset and model: settings")
        steps = gym.spec(context.env_id).max_episode_steps if context.env_id is not None else None
        starts = torch.as_tensor(dataset.observations[dataset.episode_starts], device=self.device)
        bounds = observation_bounds(dataset, self.config.clip_observations, self.config.clip_margin, self.device)
        self.world = AttachedModel(ensemble, buffer.obs_mean, buffer.obs_std, context.reward_scale,
                                   context.reward_bias, starts, int(steps or int(np.max(dataset.episode_lengths))),
                                   bounds, context.env_id)

    def prepare_batch(self, buffer) -> None:
        """Every `rollout_every` minibatches, new model rollouts first (on the host's schedule, outside a compiled
        update's graph, with the members' generators)."""
        if self.world is None:
            raise DynamicsError(f"{type(self).__name__} needs its dynamics model: call attach_data(DataContext(...)) "
                                f"first (TrainRun does)")
        if self.batches_drawn % self.config.rollout_every == 0:
            self.refresh_rollouts(buffer)
        self.batches_drawn += 1

    def sample_batch(self, buffer):
        if self.streams is None:        # a compiled update's GraphUpdate calls prepare_batch itself, outside the graph
            self.prepare_batch(buffer)
        return self.model_buffer.sample_mixed(buffer, self.config.real_ratio, self.config.batch_size,
                                              self.generators if self.streams is None else self.streams)

    def q_metrics(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """`train/q_data_mean` over the minibatch's dataset rows only, and `train/q_model_mean` over its model
        rows (each where the batch has any): a mean over both would be mostly model states at MOPO's real_ratio."""
        real = self.real_rows
        metrics = {}
        if real > 0:
            metrics["train/q_data_mean"] = q[..., :real].mean(dim=(1, 2))
        if real < q.shape[-1]:
            metrics["train/q_model_mean"] = q[..., real:].mean(dim=(1, 2))
        return metrics

    def rollout_reward(self, rewards: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        """The reward stored for model transitions, raw units, `[P, ...]`: the model's, unchanged."""
        return rewards

    @torch.no_grad()
    def refresh_rollouts(self, buffer) -> None:
        """Roll every member's policy `rollout_length` steps in the model from dataset states and add the
        transitions (up to each trajectory's first terminal step) to the member's model buffer."""
        cfg, world = self.config, self.world
        starts = buffer.gather(buffer.sample_indices(cfg.rollout_batch_size, self.members, self.generators))
        rolled = rollout(world.ensemble, lambda obs: self.sample_actions(world.normalize(obs))[0],
                         world.raw(starts.observations), cfg.rollout_length, self.generators, cfg.uncertainty,
                         world.bounds, cfg.uncertainty_models)
        # [h, P, N, ...] -> [P, h * N, ...]: each member's transitions in one row of the packed buffer.
        obs, actions, rewards, next_obs, terminals, uncertainty, valid = (
            x.transpose(0, 1).flatten(1, 2) for x in rolled)
        stored = self.rollout_reward(rewards, uncertainty)
        rows = transition_rows(world.normalize(obs), actions, stored * world.reward_scale + world.reward_bias,
                               world.normalize(next_obs), terminals, torch.zeros_like(rewards))
        self.model_buffer.add(rows, valid)
        self.rollout_stats.copy_(torch.stack([masked_mean(rewards, valid), masked_mean(stored, valid),
                                              masked_mean(uncertainty, valid)]))

    # --- evaluation ------------------------------------------------------------------------------------
    def model_start_states(self, episodes: int, seed: int) -> torch.Tensor:
        """Raw `[episodes, obs]` start states of `eval/model_return`: those of the env evaluation with the same
        `seed` (its episode e resets with seed + e), so model and real returns differ only by the dynamics;
        without an env, `episodes` dataset episode starts chosen by `seed`."""
        world = self.world
        if world.env_id is not None:
            env = make_env(world.env_id)
            try:
                starts = [env.reset(seed=seed + e)[0] for e in range(episodes)]
            finally:
                env.close()
            return torch.as_tensor(np.stack(starts), dtype=torch.float32, device=self.device)
        pick = torch.randint(len(world.episode_start_observations), (episodes,),
                             generator=torch.Generator().manual_seed(seed))
        return world.episode_start_observations[pick.to(self.device)]

    @torch.no_grad()
    def model_return(self, episodes: int, seed: int) -> torch.Tensor:
        """`[P]`: the undiscounted return (env reward, no penalty) of each member's deterministic policy over a
        full-length episode simulated in the model (states clamped as in the rollouts) from the start states
        of the env evaluation (`model_start_states`; the model's randomness is drawn by `seed`, the same for
        every member). Far above `eval/return`: the policy exploits the model's errors."""
        world = self.world
        obs = self.model_start_states(episodes, seed).expand(self.members, episodes, -1)
        generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in range(self.members)]
        total = torch.zeros(self.members, episodes, device=self.device)
        alive = torch.ones(self.members, episodes, dtype=torch.bool, device=self.device)
        for _ in range(world.max_episode_steps):
            next_obs, rewards, _, terminals = world.ensemble.sample_step(obs, self.act(world.normalize(obs)), generators,
                                                                         bounds=world.bounds, uncertainty_models="elites")
            total += torch.where(alive, rewards, torch.zeros_like(rewards))
            alive &= ~terminals
            obs = next_obs
        return total.mean(1)

    def evaluation_metrics(self, episodes: int, seed: int) -> dict[str, Any]:
        report = self.world.ensemble.report
        reward, _, uncertainty = self.rollout_stats.cpu().numpy().astype(np.float64)
        return {"model/holdout_nll": np.full(self.members, float(report.get("elite_holdout_nll", "nan"))),
                "model/uncertainty_mean": uncertainty, "rollout/reward_mean": reward,
                "eval/model_return": self.model_return(episodes, seed).cpu().numpy().astype(np.float64)}

    # --- checkpointing ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Adds the model buffers, the refresh counter and the dynamics model's cache key (the model itself
        stays in its cache, and `attach_data` loads it again)."""
        state = super().checkpoint()
        state["model_based"] = {"rollouts": self.model_buffer.state_dict(), "batches_drawn": self.batches_drawn,
                                "dynamics_key": self.world.ensemble.report.get("key") if self.world else None}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        extra = state["model_based"]
        key = extra["dynamics_key"]
        if self.world is not None and key is not None and key != self.world.ensemble.report.get("key"):
            raise DynamicsError(f"the checkpoint was trained with dynamics model {key}, but this run has "
                                f"{self.world.ensemble.report['key']}: restore with the same dataset and model: settings")
        self._restored_key = key
        self.model_buffer.load_state_dict(extra["rollouts"])
        self.batches_drawn = int(extra["batches_drawn"])
