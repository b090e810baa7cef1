"""One training run of a population, without Ray: dataset -> buffer -> learner -> evaluations.

`TrainRun.train_iteration()` does `eval_every` updates, then evaluates every member, and returns a flat
metrics dict; `state()`/`restore()` capture everything needed to continue exactly. The Ray Tune
Trainable (trainable.py) is a thin shell around it.

The learner's hooks let model-based algorithms in without special cases here: `attach_data` (MOPO and
COMBO load or train their dynamics ensemble, `model:` settings, cached under `model_dir`), `sample_batch`
(they refresh rollouts and mix model data into the minibatch) and `evaluation_metrics` (model/*, rollout/*
and eval/model_return next to the env's eval/*).

Offline policy evaluation (fqe.py) rides on the evaluations: every evaluation of a learner with a critic reports
ope/critic_initial_q and ope/td_error per member, and the run's last one (every one with `fqe.every_evaluation`)
fits FQE for ope/fqe_value. The ope/* keys appear in every result (NaN where not measured), since Tune's
progress.csv keeps only the columns of a trial's first result.

The run's last evaluation runs `final_eval_episodes` episodes per member (at least `eval_episodes`) and reports
each one's return as a list, `eval/episode_returns` (and `eval/episode_normalized_returns`): the arms of the bandit
protocol of Unifloral (Jackson et al. 2025), which sweeps/selection.py replays. Unifloral records 1000 final
episodes (`eval_final_episodes` in its algorithms/iql.py); 100 here, a tenth of that evaluation cost.

With `compile: true` every update (minibatch sampling included) runs as one compiled graph (compiled.py); its
randomness then comes from counter-based streams, so a compiled run is reproducible but not the eager run's
numbers. The first iteration's `compile_seconds` is the compile (or the on-disk cache load); `updates_per_second`
leaves it out.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch

from ..datasets import DatasetError, TransitionBuffer, check_env_compatible, iql_reward_scale, load, make_env
from ..datasets.loading import normalized_score
from . import ALGORITHMS
from .base import CheckedConfig, ConfigError, DataContext, check_field_types
from .compiled import MODES, GraphUpdate
from .dynamics import DynamicsConfig
from .evaluation import evaluate_population
from .fqe import (FQEConfig, critic_initial_q, critic_td_error, fitted_q_evaluation, fixed_sample,
                  generators_untouched, split_episodes)
from .host_memory import keep_freed_memory


MAX_UPDATES = 10**9          # a training budget's ceiling, per run
MAX_EPISODES = 100_000       # evaluation episodes per member and evaluation
MAX_THREADS = 1024           # torch threads


@dataclasses.dataclass
class TrainConfig(CheckedConfig):
    KIND = "training"
    algorithm: str
    dataset: str
    env: str | None = None                 # evaluation env; default: the one the dataset names
    algo: dict = dataclasses.field(default_factory=dict)       # algorithm fields shared by all members
    members: list = dataclasses.field(default_factory=lambda: [{}])   # per-member overrides (knobs, seed)
    eval_every: int = 5_000                # updates per iteration; every iteration ends with an evaluation
    eval_episodes: int = 10
    final_eval_episodes: int = 100         # the last evaluation's episodes (at least eval_episodes), each one's return
                                           # kept for the bandit protocol (Unifloral records 1000)
    total_updates: int = 1_000_000
    normalize_observations: bool | None = None   # None: as the algorithm's reference code (Learner.NORMALIZE_OBSERVATIONS)
    reward_normalization: str | None = None      # "none", "iql" (r * 1000 / (max - min episode return)); None: as the
                                                 # algorithm's reference code (Learner.REWARD_NORMALIZATION)
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    eval_seed: int = 0
    mc_tail_steps: int | None = None       # unscored steps past a time limit for eval/mc_return_mean; None: ceil(5/(1-gamma))
    device: str = "auto"                   # "auto": cuda when available
    threads: int = 0                       # torch threads; 0: OMP_NUM_THREADS (Ray sets it from num_cpus), else 1
    download: bool = True
    model: dict = dataclasses.field(default_factory=dict)    # DynamicsConfig fields (mopo, combo)
    model_dir: str | None = None           # dynamics cache; None: $OFFLINE_SWEEPS_MODEL_DIR or ~/.cache/offline_sweeps/models
    fqe: dict = dataclasses.field(default_factory=dict)      # FQEConfig fields (fqe.py): offline policy evaluation
    holdout_fraction: float = 0.0          # episodes kept out of training for ope/td_error; 0: it uses training data
    compile: bool = False                  # each update as one torch.compile(fullgraph=True) graph (compiled.py)
    compile_mode: str = "default"          # with compile: "reduce-overhead" replays CUDA graphs (unmeasured)

    def __post_init__(self):
        check_field_types(self)
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm={self.algorithm!r} is unknown; choose from {', '.join(sorted(ALGORITHMS))}")
        if not isinstance(self.members, (list, tuple)) or not self.members or not all(
                isinstance(member, dict) for member in self.members):
            raise ConfigError("members must be a non-empty list of per-member settings (e.g. [{seed: 0}])")
        if len({repr(sorted(member.items(), key=str)) for member in self.members}) < len(self.members):
            raise ConfigError(f"members: {list(self.members)} repeats a member; each member once (a repeated one is "
                              f"the same run twice)")
        for key in ("eval_every", "eval_episodes", "total_updates"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        self.check(self.total_updates <= MAX_UPDATES, "total_updates", f"at most {MAX_UPDATES:,} (a stated ceiling: "
                   f"1e9 updates would run for years on a CPU, weeks on a GPU)")
        self.check(self.eval_episodes <= MAX_EPISODES, "eval_episodes", f"at most {MAX_EPISODES:,}")
        self.check(0 <= self.final_eval_episodes <= MAX_EPISODES, "final_eval_episodes",
                   f"a whole number of episodes from 0 to {MAX_EPISODES:,} for the last evaluation (below "
                   f"eval_episodes: eval_episodes)")
        self.check(0 <= self.threads <= MAX_THREADS, "threads", f"0 (as Ray gives the trial) or a whole number up to "
                   f"{MAX_THREADS}")
        self.seed_in_range("eval_seed")
        if self.eval_every > self.total_updates:
            raise ConfigError(f"eval_every={self.eval_every} is larger than total_updates={self.total_updates}: "
                              f"no evaluation would fall inside the run")
        self.check(self.mc_tail_steps is None or self.mc_tail_steps >= 0,
                   "mc_tail_steps", "null (ceil(5 / (1 - gamma))) or a whole number of steps >= 0")
        if self.reward_normalization not in (None, "none", "iql"):
            raise ConfigError(f"reward_normalization={self.reward_normalization!r}: choose 'none' or 'iql' "
                              f"(or null for {self.algorithm}'s own)")
        learner_class = ALGORITHMS[self.algorithm]
        if self.normalize_observations is None:
            self.normalize_observations = learner_class.NORMALIZE_OBSERVATIONS
        if self.reward_normalization is None:
            self.reward_normalization = learner_class.REWARD_NORMALIZATION
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device={self.device!r}: choose auto, cpu or cuda[:N]")
        if self.model and not ALGORITHMS[self.algorithm].USES_MODEL:
            raise ConfigError(f"model: settings are for model-based algorithms "
                              f"({', '.join(n for n, c in ALGORITHMS.items() if c.USES_MODEL)}), not {self.algorithm}")
        DynamicsConfig.from_dict(dict(self.model))
        FQEConfig.from_dict(dict(self.fqe))
        self.check(0.0 <= self.holdout_fraction < 1.0, "holdout_fraction",
                   "in [0, 1): the fraction of episodes held out of training for ope/td_error")
        self.check(self.compile_mode in MODES, "compile_mode", " or ".join(MODES))
        self.check(self.compile or self.compile_mode == "default", "compile_mode",
                   "default unless compile: true (the mode says how to compile)")
        self.check(self.compile_mode != "reduce-overhead" or self.device.startswith("cuda"), "compile_mode",
                   "default on the CPU (reduce-overhead replays CUDA graphs: set device: cuda)")

    def member_configs(self) -> list:
        learner_class = ALGORITHMS[self.algorithm]
        configs = [learner_class.Config.from_dict({**self.algo, **dict(member)}) for member in self.members]
        for config in configs:
            learner_class.check_run_length(config, self.total_updates)
        return configs


class TrainRun:
    def __init__(self, config: TrainConfig):
        self.config = config
        torch.set_num_threads(config.threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        configs = config.member_configs()          # validate before any expensive work
        self.fqe = FQEConfig.from_dict(dict(config.fqe))
        self.dataset = load(config.dataset, download=config.download)
        whole, held_out = self.dataset, None
        if config.holdout_fraction > 0:            # whole episodes out; the learner (and its dynamics) never see them
            self.dataset, held_out = split_episodes(self.dataset, config.holdout_fraction)
        for member in configs:
            if member.batch_size > self.dataset.num_transitions:
                raise ConfigError(f"batch_size={member.batch_size} is more than {config.dataset}'s "
                                  f"{self.dataset.num_transitions} transitions; use a smaller batch_size")
        self.env_id = config.env or self.dataset.env_id
        if self.env_id is None:
            raise DatasetError(f"dataset {config.dataset} names no env; set env: to the Gymnasium id to evaluate in")
        check_env_compatible(self.dataset, make_env(self.env_id))
        scale, bias = config.reward_scale, config.reward_bias
        if config.reward_normalization == "iql":
            try:
                scale *= iql_reward_scale(self.dataset.episode_returns)
            except ValueError as error:
                raise ConfigError(f"reward_normalization: iql: {error}; set reward_normalization: none") from None
        self.reward_scale, self.reward_bias = scale, bias
        self.buffer = TransitionBuffer.from_dataset(self.dataset, self.device, config.normalize_observations,
                                                    reward_scale=scale, reward_bias=bias)
        starts = whole.episode_starts[:self.fqe.start_states]
        self.start_observations = self.buffer.normalize(torch.as_tensor(whole.observations[starts], device=self.device))
        self.td_sample = fixed_sample(self.buffer if held_out is None else TransitionBuffer.from_dataset(
            held_out, self.device, reward_scale=scale, reward_bias=bias, like=self.buffer))
        space = self.dataset.action_space
        self.learner = ALGORITHMS[config.algorithm](configs, self.dataset.obs_dim, self.dataset.act_dim,
                                                    torch.as_tensor(space.low), torch.as_tensor(space.high),
                                                    self.device)
        model = {"compile": config.compile, **config.model}      # train.compile compiles the ensemble's training too
        self.learner.attach_data(DataContext(self.dataset, self.buffer, self.env_id, scale, bias, model,
                                             config.model_dir, config.total_updates))
        self.graph = GraphUpdate(self.learner, self.buffer, mode=config.compile_mode) if config.compile else None
        self.updates = 0
        self.iterations = 0
        self.best: dict[str, np.ndarray] = {}

    @property
    def members(self) -> int:
        return self.learner.members

    def offline_evaluation(self, final: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per-member ope/* values `[P]` and the run-wide FQE timings. FQE fits at the last evaluation (or every
        one); the learner's own critic is read at every one. Diverged members get NaN."""
        learner, cfg = self.learner, self.config
        alive = ~learner.diverged.cpu().numpy()
        per_member: dict[str, np.ndarray] = {}
        shared: dict[str, float] = {}
        if learner.has_critic:
            per_member["ope/critic_initial_q"] = critic_initial_q(learner, self.start_observations,
                                                                  self.reward_scale, self.reward_bias)
            per_member["ope/td_error"] = critic_td_error(learner, self.td_sample, self.reward_scale)
        if self.fqe.enabled:
            per_member["ope/fqe_value"] = np.full(self.members, np.nan)
            shared = {"ope/fqe_seconds": float("nan"), "ope/fqe_updates_per_second": float("nan")}
            if (final or self.fqe.every_evaluation) and alive.any():
                updates = self.fqe.budget(final, cfg.eval_every, cfg.total_updates)
                with generators_untouched(learner):
                    result = fitted_q_evaluation(learner.act, self.buffer, self.start_observations, learner.config.gamma,
                                                 [c.seed for c in learner.configs], self.fqe, updates,
                                                 self.reward_scale, self.reward_bias, alive, cfg.compile,
                                                 cfg.compile_mode)
                per_member["ope/fqe_value"] = result.values
                shared = {"ope/fqe_seconds": result.seconds, "ope/fqe_updates_per_second": result.updates_per_second}
        return {key: np.where(alive, value, np.nan) for key, value in per_member.items()}, shared

    def train_iteration(self) -> dict[str, Any]:
        """`eval_every` updates, then an evaluation; returns flat metrics (see `flatten_members`)."""
        cfg, learner = self.config, self.learner
        started = time.perf_counter()
        compiled_before = self.graph.compile_seconds if self.graph is not None else 0.0
        train: dict[str, torch.Tensor] = {}
        for _ in range(cfg.eval_every):
            train = self.graph() if self.graph is not None else learner.guarded_update(learner.sample_batch(self.buffer))
        self.updates += cfg.eval_every
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)     # the updates were only queued: time them done
        compile_seconds = self.graph.compile_seconds - compiled_before if self.graph is not None else 0.0
        train_seconds = max(time.perf_counter() - started - compile_seconds, 1e-9)
        final = self.updates >= cfg.total_updates
        evaluation = evaluate_population(learner, self.env_id, cfg.eval_episodes, cfg.eval_seed + self.iterations,
                                         learner.config.gamma, self.buffer.normalize, self.reward_scale,
                                         self.reward_bias, cfg.mc_tail_steps,
                                         max(0, cfg.final_eval_episodes - cfg.eval_episodes) if final else 0)
        episode_returns = evaluation.pop("eval/episode_returns")
        alive = ~learner.diverged.cpu().numpy()
        for key, value in learner.evaluation_metrics(cfg.eval_episodes, cfg.eval_seed + self.iterations).items():
            evaluation[key] = np.where(alive, value, np.nan)
        self.iterations += 1
        per_member = {key: value.detach().cpu().numpy().astype(np.float64) for key, value in train.items()}
        for key in per_member:     # a diverged member's losses are its frozen garbage (-6.5e9): not a measurement
            if key != "diverged":
                per_member[key] = np.where(alive, per_member[key], np.nan)
        per_member.update(evaluation)
        normalizes = self.dataset.ref_min_score is not None and self.dataset.ref_max_score is not None
        if normalizes:
            per_member["eval/normalized_return"] = normalized_score(self.dataset, evaluation["eval/return"])
        if final:      # the bandit's arms: each episode of the final policies (NaN rows for diverged members)
            per_member["eval/episode_returns"] = episode_returns
            if normalizes:
                per_member["eval/episode_normalized_returns"] = normalized_score(self.dataset, episode_returns)
        done = final or bool(learner.diverged.all())
        ope, ope_shared = self.offline_evaluation(final=done)
        per_member.update(ope)
        for key in ("eval/return", "eval/normalized_return"):
            if key in per_member:
                best = self.best.get(key, np.full(self.members, -np.inf))
                self.best[key] = np.fmax(best, per_member[key])
                per_member[key + "_best"] = self.best[key].copy()
        metrics = flatten_members(per_member)
        metrics.update(ope_shared)
        metrics.update({"updates": self.updates, "updates_per_second": cfg.eval_every / train_seconds,
                        "compile_seconds": compile_seconds,
                        "members_diverged": int(learner.diverged.sum()), "done": done})
        if hasattr(learner, "sampled_q_dtype"):    # CQL, COMBO: did "auto" score the sampled actions in bfloat16?
            metrics["precision/sampled_q_bf16"] = float(learner.sampled_q_dtype == torch.bfloat16)
        world = getattr(learner, "world", None)
        if world is not None:      # model-based: was this run's dynamics ensemble trained here or found cached?
            metrics["model/loaded_from_cache"] = float(bool(world.ensemble.report.get("cached")))
        return metrics

    def state(self) -> dict[str, Any]:
        return {"learner": self.learner.checkpoint(), "updates": self.updates, "iterations": self.iterations,
                "best": {k: torch.as_tensor(v) for k, v in self.best.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.learner.restore(state["learner"])
        self.updates, self.iterations = int(state["updates"]), int(state["iterations"])
        self.best = {k: v.cpu().numpy() for k, v in state["best"].items()}

    def save(self, path: str | os.PathLike) -> None:
        """Written to a temporary file beside `path` and renamed over it: a full disk or a kill mid-write
        never leaves a partial checkpoint under the real name."""
        folder, name = os.path.split(os.fspath(path))
        temporary = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
        try:
            torch.save(self.state(), temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def load(self, path: str | os.PathLike) -> None:
        """Restore from a file `save` wrote. It is read onto the CPU (`weights_only`: a checkpoint cannot execute
        code) and `restore` puts each tensor on this run's device, so a trial written on cuda:1 resumes on cuda:0."""
        self.restore(torch.load(path, map_location="cpu", weights_only=True))


def flatten_members(per_member: dict[str, np.ndarray]) -> dict[str, float | list[float]]:
    """`{key: [P] array}` -> `member_k/key` for every member, plus `key` itself: the member's value when
    P = 1, else the mean over the members that have not diverged (what a Tune scheduler compares).
    `{key: [P, E] array}` (per episode) -> a list of E values per member, `member_k/key` (`key` when P = 1)."""
    metrics: dict[str, float | list[float]] = {}
    for key, values in per_member.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 2:
            metrics.update({key: values[0].tolist()} if len(values) == 1 else
                           {f"member_{k}/{key}": row.tolist() for k, row in enumerate(values)})
            continue
        finite = values[np.isfinite(values)]
        metrics[key] = float(finite.mean()) if len(finite) else float("nan")
        if len(values) > 1 or key == "diverged":
            for k, value in enumerate(values):
                metrics[f"member_{k}/{key}"] = float(value)
    return metrics


def split_members(metrics: dict[str, Any], members: int) -> list[dict[str, Any]]:
    """`flatten_members`' inverse: one dict per member, `member_k/` removed, for a population of `members`.
    A key without a per-member value (`updates`, `training_iteration`, `members_diverged`, ...) is shared
    and appears in every member's dict; when P = 1 every key is the member's own."""
    own = [{} for _ in range(members)]
    shared = {}
    for key, value in metrics.items():
        head, _, rest = key.partition("/")
        if head.startswith("member_") and head[7:].isdigit() and rest:
            if int(head[7:]) < members:
                own[int(head[7:])][rest] = value
        else:
            shared[key] = value
    if members > 1:    # the plain value of a per-member key is the survivors' mean, no member's own
        shared = {k: v for k, v in shared.items() if not any(k in mine for mine in own)}
    return [{**shared, **mine} for mine in own]
