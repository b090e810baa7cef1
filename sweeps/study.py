"""A study: one question about constraint strength, and its expansion into the trials Ray Tune runs.

    name: iql-tau-pendulum
    algorithm: iql
    datasets: [pendulum/medium-v0]
    train: {eval_every: 1000, total_updates: 10000, algo: {hidden: [64, 64]}}
    search:
      expectile: {grid: [0.5, 0.7, 0.9]}        # grid | choice | uniform | loguniform
    seeds: [0, 1, 2]
    pack: [seed]                                 # axes packed into one trial's population
    select: online                               # export's pick: online (test env) | fqe | critic | td_error

Search keys name fields of the algorithm's config (`expectile`) or of the training config
(`train.reward_scale`). Grid axes and seeds multiply; `num_samples` random draws of the choice /
uniform / loguniform axes are made per grid point, from `search_seed`, so a study expands to the same
trials every time. Trials that differ only in packed axes become one trial whose members are those
values; packed axes must be grid axes (or seeds) and fields the algorithm lets members differ in.
`parts:` runs several algorithms in one study (each part overrides the top-level keys).
`searcher: optuna` hands the random axes to Optuna instead (`num_samples` trials, each proposed from the
results so far; grid axes and seeds are then packed into every trial).

The YAML is read and validated into a `Study` by study_yaml.py. A trial is a dict: a complete TrainConfig dict
plus `study` metadata (its part, axes, packed axes and point); the helpers below read it.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np

from ..algorithms.trainer import TrainConfig


STUDY_FILE = "study.yaml"     # the study, as run, beside its results


def trial_train_config(trial: dict) -> dict:
    """A trial dict (`Study.trials()`) without its `study` metadata: the TrainConfig dict it runs."""
    return {k: v for k, v in trial.items() if k != "study"}


def apply_sampled(config: dict) -> dict:
    """A Tune trial's `trial` dict with the values a searcher (Optuna) chose, `config["sampled"]`, filled in:
    training keys into the config, algorithm keys into every member, all of them into the study point."""
    trial = copy.deepcopy(config["trial"])
    for key, value in (config.get("sampled") or {}).items():
        if key.startswith("train."):
            trial[key[len("train."):]] = value
        else:
            for member in trial["members"]:
                member[key] = value
        trial["study"]["point"][key] = value
    return trial


class StudyError(ValueError):
    """A bad study; the message names the key path and what is allowed."""


# How `export` picks a setting: online, by the test environment's returns (the oracle); or offline, from the data
# alone, by a metric each member reports at its final result, and whether higher or lower is better: Fitted Q
# Evaluation's value, the critic's own initial Q, or the critic's TD error on a fixed sample of transitions (held-out
# episodes only with train.holdout_fraction > 0; by default, 0, training transitions: a measure of fit).
SELECTION_METRICS = {"fqe": ("ope/fqe_value", "max"), "critic": ("ope/critic_initial_q", "max"),
                     "td_error": ("ope/td_error", "min")}
SELECT_CRITERIA = ("online", *SELECTION_METRICS)


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str                     # "expectile" (algorithm field) or "train.reward_scale"
    kind: str                    # grid | choice | uniform | loguniform
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"


@dataclasses.dataclass
class Part:
    algorithm: str
    datasets: list[str]
    train: dict
    axes: list[Axis]
    seeds: list[int]
    pack: list[str]
    num_samples: int


@dataclasses.dataclass
class Study:
    name: str
    parts: list[Part]
    description: str = ""
    search_seed: int = 0
    build: dict | None = None            # builder settings for datasets missing locally (see datasets.builder)
    resources: dict = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    scheduler: dict = dataclasses.field(default_factory=lambda: {"name": "none"})
    metric: str = "eval/normalized_return"
    mode: str = "max"
    optimize: str = "last"               # rank by the last evaluation or the best one ("best")
    wandb: dict = dataclasses.field(default_factory=lambda: {"enabled": True, "project": "offline-rl-sweeps"})
    storage: str = "results"
    max_failures: int = 2
    checkpoint_every: int = 1            # iterations between checkpoints
    keep_checkpoints: int = 2            # newest checkpoints kept per trial (Tune's num_to_keep)
    searcher: str = "default"            # default: the expansion below; optuna: Optuna picks the random axes
    select: str = "online"               # export's default criterion (SELECT_CRITERIA)
    source: dict = dataclasses.field(default_factory=dict)   # the merged YAML, as written to the study folder
    reference: tuple = ()                # published scores shown beside the measured ones (reference.Reference)
    interpolated: tuple = ()             # keys whose ${...} interpolations were resolved (e.g. ${oc.env:VAR})

    def build_env(self, dataset_id: str) -> str | None:
        """The env `build:` builds a missing `dataset_id` (`<name>/<kind>-v<N>`) from: `build.env`, else the preset env
        its name stands for (`hopper` -> Hopper-v5, datasets/presets.py), so one study builds several envs' sets."""
        if not isinstance(self.build, dict):
            return None
        if self.build.get("env"):
            return self.build["env"]
        from ..datasets.presets import preset_env
        return preset_env(dataset_id.split("/")[0])

    def sampled_axes(self) -> list[Axis]:
        """With `searcher: optuna`, the axes Optuna chooses trial by trial (the choice/uniform/loguniform ones)."""
        return [axis for axis in self.parts[0].axes if not axis.is_grid] if self.searcher == "optuna" else []

    def trials(self) -> list[dict]:
        """Every Tune trial as a complete TrainConfig dict plus `study` metadata (its axis values).

        With `searcher: optuna` there is one trial: the template whose sampled axes Optuna fills in.
        """
        members = sum(part_members(part, self.searcher == "optuna") for part in self.parts)
        if members > MAX_MEMBERS:
            raise StudyError(f"search: the study expands to {members:,} runs (datasets x grid values x samples x "
                             f"seeds, over its parts), more than the {MAX_MEMBERS:,} one study takes; use fewer "
                             f"grid values or seeds, or split it into several studies")
        rng = np.random.default_rng(self.search_seed)
        trials = []
        for part_index, part in enumerate(self.parts):
            # Errors name the part where the study has `parts:` (the first one too).
            where = f"parts[{part_index}]." if "parts" in self.source or len(self.parts) > 1 else ""
            for dataset in part.datasets:
                trials.extend(_part_trials(part, part_index, dataset, rng, self.searcher == "optuna", where))
        return trials


MAX_MEMBERS = 20_000      # runs (members) one study expands to: beyond it the expansion alone takes minutes and GiBs


def part_members(part: Part, optuna: bool = False) -> int:
    """How many runs (members) a part expands to, or with `optuna` runs one after the other, counted without
    expanding it."""
    grid = math.prod(len(axis.values) for axis in part.axes if axis.is_grid)
    samples = part.num_samples if optuna or any(not axis.is_grid for axis in part.axes) else 1
    return len(part.datasets) * grid * samples * len(part.seeds)


def knob_text(key: str, value) -> str:
    """A knob as trial names, W&B run names and progress lines show it: `expectile=0.7` (the key's last part,
    floats to 4 significant digits)."""
    return f"{key.split('.')[-1]}={value:.4g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"


def _part_trials(part: Part, part_index: int, dataset: str, rng: np.random.Generator,
                 optuna: bool = False, where: str = "") -> list[dict]:
    grid_axes = [axis for axis in part.axes if axis.is_grid]
    random_axes = [axis for axis in part.axes if not axis.is_grid]
    points = []
    for combination in itertools.product(*[axis.values for axis in grid_axes]):
        for sample in range(part.num_samples if random_axes and not optuna else 1):
            # One draw per configuration, shared by its seeds; `sample` keeps equal draws apart.
            drawn = {axis.key: _draw(axis, rng) for axis in random_axes}
            for seed in part.seeds:
                point = {**dict(zip([axis.key for axis in grid_axes], combination)), **drawn, "seed": seed}
                if random_axes:
                    point["sample"] = sample
                points.append(point)
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        trial_key = tuple((k, _hashable(v)) for k, v in point.items() if k not in part.pack)
        groups.setdefault(trial_key, []).append(point)
    trials = []
    for group in groups.values():
        train = copy.deepcopy(part.train)
        algo = dict(train.pop("algo", {}) or {})
        shared = {k: v for k, v in group[0].items() if k not in part.pack and k != "sample"}
        for key, value in list(shared.items()):
            if key.startswith("train."):
                train[key[6:]] = shared.pop(key)
        members = [{**{k: v for k, v in shared.items()},
                    **{k: point[k] for k in part.pack}} for point in group]
        config = {"algorithm": part.algorithm, "dataset": dataset, **train_defaults(), **train, "algo": algo,
                  "members": members}
        try:
            TrainConfig.from_dict(config).member_configs()
        except (ValueError, TypeError) as error:     # TypeError: a value of a type no check foresaw
            raise StudyError(f"{where}train/search: {error}") from error
        config["study"] = {"part": part_index, "axes": [a.key for a in part.axes], "pack": part.pack,
                           "point": {k: v for k, v in group[0].items() if k not in part.pack}}
        trials.append(config)
    return trials


def train_defaults() -> dict:
    """TrainConfig's declared defaults, for the keys a study leaves out: a trial dict is then complete, so the plan,
    the progress lines and trial names read `total_updates` and the rest without a default of their own."""
    defaults = {}
    for field in dataclasses.fields(TrainConfig):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = copy.deepcopy(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return {k: v for k, v in defaults.items() if k not in ("algo", "members")}


def _draw(axis: Axis, rng: np.random.Generator):
    if axis.kind == "choice":
        return axis.values[int(rng.integers(len(axis.values)))]
    if axis.kind == "uniform":
        return float(rng.uniform(axis.low, axis.high))
    return float(math.exp(rng.uniform(math.log(axis.low), math.log(axis.high))))


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value
