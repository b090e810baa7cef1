"""A study: one question about constraint strength, as YAML, validated into trials for Ray Tune.

    name: iql-tau-pendulum
    algorithm: iql
    datasets: [pendulum/medium-v0]
    train: {eval_every: 1000, total_updates: 10000, algo: {hidden: [64, 64]}}
    search:
      expectile: {grid: [0.5, 0.7, 0.9]}        # grid | choice | uniform | loguniform
    seeds: [0, 1, 2]
    pack: [seed]                                 # axes packed into one trial's population

Search keys name fields of the algorithm's config (`expectile`) or of the training config
(`train.reward_scale`). Grid axes and seeds multiply; `num_samples` random draws of the choice /
uniform / loguniform axes are made per grid point, from `search_seed`, so a study expands to the same
trials every time. Trials that differ only in packed axes become one trial whose members are those
values; packed axes must be grid axes (or seeds) and fields the algorithm lets members differ in.
`parts:` runs several algorithms in one study (each part overrides the top-level keys).
`searcher: optuna` hands the random axes to Optuna instead (`num_samples` trials, each proposed from the
results so far; grid axes and seeds are then packed into every trial).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..algorithms import ALGORITHMS
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


SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"algorithm", "dataset", "members"}
PART_KEYS = {"algorithm", "datasets", "train", "search", "seeds", "pack", "num_samples"}
TOP_KEYS = PART_KEYS | {"name", "description", "parts", "search_seed", "build", "resources", "scheduler", "metric",
                        "mode", "optimize", "wandb", "storage", "max_failures", "checkpoint_every", "keep_checkpoints",
                        "searcher"}
SCHEDULERS = ("none", "asha")
SEARCHERS = ("default", "optuna")


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
    source: dict = dataclasses.field(default_factory=dict)   # the merged YAML, as written to the study folder
    interpolated: tuple = ()             # keys whose ${...} interpolations were resolved (e.g. ${oc.env:VAR})

    def sampled_axes(self) -> list[Axis]:
        """With `searcher: optuna`, the axes Optuna chooses trial by trial (the choice/uniform/loguniform ones)."""
        return [axis for axis in self.parts[0].axes if not axis.is_grid] if self.searcher == "optuna" else []

    def trials(self) -> list[dict]:
        """Every Tune trial as a complete TrainConfig dict plus `study` metadata (its axis values).

        With `searcher: optuna` there is one trial: the template whose sampled axes Optuna fills in.
        """
        rng = np.random.default_rng(self.search_seed)
        trials = []
        for part_index, part in enumerate(self.parts):
            for dataset in part.datasets:
                trials.extend(_part_trials(part, part_index, dataset, rng, self.searcher == "optuna"))
        return trials


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), resolve: bool = True) -> Study:
    """Read a study YAML, apply `key=value` overrides, validate, and return the Study.

    `resolve=False` leaves `${...}` interpolations as the text they are: a study read back from a results folder,
    which may come from someone else, must not pull this machine's environment variables (`${oc.env:TOKEN}`)
    into a report. A resolved study lists the keys it resolved in `interpolated`."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist; the shipped studies are in sweeps/*.yaml")
    try:
        config = OmegaConf.load(path)
        if overrides:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
        interpolated = tuple(_interpolated_keys(OmegaConf.to_container(config, resolve=False))) if resolve else ()
        values = OmegaConf.to_container(config, resolve=resolve)
    except OmegaConfBaseException as error:
        raise StudyError(f"{path}: {str(error).splitlines()[0]}") from error
    except Exception as error:  # YAML syntax errors come from the yaml package
        raise StudyError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise StudyError(f"{path} must hold a mapping of study keys")
    return dataclasses.replace(parse_study(values), interpolated=interpolated)


def _interpolated_keys(values, where: str = ""):
    """The dotted keys of `values` (an unresolved OmegaConf container) whose value holds a `${...}` interpolation."""
    items = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    for key, value in items:
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, str) and "${" in value:
            yield path
        else:
            yield from _interpolated_keys(value, path)


def parse_study(values: dict[str, Any]) -> Study:
    _reject_unknown(values, TOP_KEYS, "")
    name = values.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise StudyError("name: give the study a non-empty name without '/' (it names the results folder)")
    parts_values = values.get("parts") or [{}]
    if not isinstance(parts_values, list):
        raise StudyError("parts: must be a list of per-algorithm settings")
    shared = {k: v for k, v in values.items() if k in PART_KEYS}
    parts = []
    for index, part_values in enumerate(parts_values):
        where = f"parts[{index}]." if "parts" in values else ""
        if not isinstance(part_values, dict):
            raise StudyError(f"{where.rstrip('.')}: must be a mapping")
        _reject_unknown(part_values, PART_KEYS, where)
        parts.append(_parse_part({**shared, **part_values}, where))
    study = Study(name=name, parts=parts, description=str(values.get("description", "")),
                  search_seed=_integer(values, "search_seed", 0, minimum=0), build=values.get("build"),
                  source=copy.deepcopy(values))
    if "resources" in values:
        study.resources = _parse_resources(values["resources"])
    if "scheduler" in values:
        study.scheduler = _parse_scheduler(values["scheduler"])
    study.metric = str(values.get("metric", study.metric))
    study.mode = _one_of(values.get("mode", "max"), ("max", "min"), "mode")
    study.optimize = _one_of(values.get("optimize", "last"), ("last", "best"), "optimize")
    if "wandb" in values:
        study.wandb = _parse_wandb(values["wandb"])
    study.storage = str(values.get("storage", study.storage))
    study.max_failures = _integer(values, "max_failures", 2, minimum=0)
    study.checkpoint_every = _integer(values, "checkpoint_every", 1, minimum=1)
    study.keep_checkpoints = _integer(values, "keep_checkpoints", 2, minimum=1)
    if study.build is not None and not isinstance(study.build, dict):
        raise StudyError("build: must be a mapping of dataset-builder settings (env, transitions, ...)")
    study.searcher = _one_of(values.get("searcher", "default"), SEARCHERS, "searcher")
    if study.searcher == "optuna":
        _check_optuna(study)
    study.trials()   # expanding validates packing against each algorithm
    return study


def _check_optuna(study: Study) -> None:
    """Optuna proposes one trial at a time from the results so far: it takes the random axes of one
    algorithm on one dataset; grid axes and several seeds ride along packed inside each trial."""
    part = study.parts[0]
    if len(study.parts) > 1 or len(part.datasets) > 1:
        raise StudyError("searcher: optuna searches one algorithm on one dataset; split the study, or use "
                         "searcher: default")
    if not any(not axis.is_grid for axis in part.axes):
        raise StudyError("searcher: optuna needs a choice, uniform or loguniform axis in search:")
    unpacked = [axis.key for axis in part.axes if axis.is_grid and axis.key not in part.pack]
    if len(part.seeds) > 1 and "seed" not in part.pack:
        unpacked.append("seed")
    if unpacked:
        raise StudyError(f"pack: with searcher: optuna, grid axes and seeds are packed into each trial; add "
                         f"{', '.join(unpacked)} to pack:")
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise StudyError("searcher: optuna is not installed; pip install optuna (or use searcher: default)") from error


def _parse_part(values: dict, where: str) -> Part:
    algorithm = values.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise StudyError(f"{where}algorithm: {algorithm!r} is not one of {', '.join(sorted(ALGORITHMS))}")
    datasets = values.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets or not all(isinstance(d, str) for d in datasets):
        raise StudyError(f"{where}datasets: give a list of Minari dataset ids or folders")
    train = dict(values.get("train") or {})
    _reject_unknown(train, TRAIN_KEYS, f"{where}train.")
    config_class = ALGORITHMS[algorithm].Config
    algo_fields = {f.name for f in dataclasses.fields(config_class)}
    _reject_unknown(train.get("algo") or {}, algo_fields, f"{where}train.algo.")
    axes = []
    for key, space in (values.get("search") or {}).items():
        axes.append(_parse_axis(key, space, algo_fields, config_class.__name__, f"{where}search.{key}"))
    seeds = values.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"{where}seeds: give a non-empty list of integers")
    pack = values.get("pack") or []
    axis_keys = {axis.key: axis for axis in axes}
    for key in pack:
        if key == "seed":
            continue
        if key not in axis_keys:
            raise StudyError(f"{where}pack: {key!r} is neither 'seed' nor a search key ({', '.join(axis_keys) or 'none'})")
        if not axis_keys[key].is_grid:
            raise StudyError(f"{where}pack: {key!r} is a {axis_keys[key].kind} axis; only grid axes and seeds can be packed")
        if key.startswith("train.") or key not in ALGORITHMS[algorithm].PACKABLE:
            raise StudyError(f"{where}pack: {key!r} cannot differ inside a {algorithm} population; packable: "
                             f"seed, {', '.join(k for k in ALGORITHMS[algorithm].PACKABLE if k != 'seed')}")
    num_samples = _integer(values, "num_samples", 1, minimum=1)
    return Part(algorithm, list(datasets), train, axes, list(seeds), list(pack), num_samples)


def _parse_axis(key: str, space: Any, algo_fields: set[str], config_name: str, where: str) -> Axis:
    if key.startswith("train."):
        if key[6:] not in TRAIN_KEYS - {"algo"}:
            raise StudyError(f"{where}: {key[6:]!r} is not a training key; allowed: {', '.join(sorted(TRAIN_KEYS - {'algo'}))}")
    elif key not in algo_fields or key == "seed":
        raise StudyError(f"{where}: {key!r} is not a field of {config_name} (seeds go in `seeds:`); "
                         f"fields: {', '.join(sorted(algo_fields - {'seed'}))}")
    if not isinstance(space, dict) or len(space) != 1 or next(iter(space)) not in SPACE_KINDS:
        raise StudyError(f"{where}: write one of {{grid: [...]}}, {{choice: [...]}}, {{uniform: [low, high]}}, "
                         f"{{loguniform: [low, high]}}")
    kind, spec = next(iter(space.items()))
    if kind in ("grid", "choice"):
        if not isinstance(spec, list) or not spec:
            raise StudyError(f"{where}.{kind}: give a non-empty list of values")
        return Axis(key, kind, values=tuple(spec))
    if not (isinstance(spec, list) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec)
            and spec[0] < spec[1]):
        raise StudyError(f"{where}.{kind}: give [low, high] with low < high")
    if kind == "loguniform" and spec[0] <= 0:
        raise StudyError(f"{where}.loguniform: bounds must be positive")
    return Axis(key, kind, low=float(spec[0]), high=float(spec[1]))


def _part_trials(part: Part, part_index: int, dataset: str, rng: np.random.Generator,
                 optuna: bool = False) -> list[dict]:
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
        config = {"algorithm": part.algorithm, "dataset": dataset, **train, "algo": algo, "members": members}
        try:
            TrainConfig.from_dict(config).member_configs()
        except ValueError as error:
            raise StudyError(f"{'parts[%d].' % part_index if part_index else ''}train/search: {error}") from error
        config["study"] = {"part": part_index, "axes": [a.key for a in part.axes], "pack": part.pack,
                           "point": {k: v for k, v in group[0].items() if k not in part.pack}}
        trials.append(config)
    return trials


def _draw(axis: Axis, rng: np.random.Generator):
    if axis.kind == "choice":
        return axis.values[int(rng.integers(len(axis.values)))]
    if axis.kind == "uniform":
        return float(rng.uniform(axis.low, axis.high))
    return float(math.exp(rng.uniform(math.log(axis.low), math.log(axis.high))))


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _reject_unknown(values: dict, allowed: set[str], where: str) -> None:
    if not isinstance(values, dict):
        raise StudyError(f"{where.rstrip('.') or 'study'}: must be a mapping")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise StudyError(f"{where}{unknown[0]}: unknown key; allowed here: {', '.join(sorted(allowed))}")


def _integer(values: dict, key: str, default: int, minimum: int) -> int:
    value = values.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise StudyError(f"{key}: {value!r} must be an integer >= {minimum}")
    return value


def _one_of(value, allowed: tuple, key: str):
    if value not in allowed:
        raise StudyError(f"{key}: {value!r} must be one of {', '.join(allowed)}")
    return value


def _parse_resources(values) -> dict:
    _reject_unknown(values, {"cpu", "gpu", "custom"}, "resources.")
    cpu, gpu = values.get("cpu", 1), values.get("gpu", 0)
    if not isinstance(cpu, (int, float)) or cpu <= 0:
        raise StudyError(f"resources.cpu: {cpu!r} must be positive")
    if not isinstance(gpu, (int, float)) or gpu < 0:
        raise StudyError(f"resources.gpu: {gpu!r} must be >= 0 (fractions share a GPU)")
    custom = values.get("custom") or {}
    if not isinstance(custom, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in custom.values()):
        raise StudyError("resources.custom: give {resource_name: amount} with positive amounts")
    return {"cpu": cpu, "gpu": gpu, **custom}


def _parse_scheduler(values) -> dict:
    _reject_unknown(values, {"name", "grace_period", "reduction_factor"}, "scheduler.")
    name = _one_of(values.get("name", "none"), SCHEDULERS, "scheduler.name")
    result = {"name": name, "grace_period": values.get("grace_period", 1),
              "reduction_factor": values.get("reduction_factor", 3)}
    if not isinstance(result["grace_period"], int) or result["grace_period"] < 1:
        raise StudyError("scheduler.grace_period: must be an integer >= 1 (iterations)")
    if not isinstance(result["reduction_factor"], (int, float)) or result["reduction_factor"] <= 1:
        raise StudyError("scheduler.reduction_factor: must be > 1")
    return result


def _parse_wandb(values) -> dict:
    _reject_unknown(values, {"enabled", "project", "group", "entity"}, "wandb.")
    return {"enabled": bool(values.get("enabled", True)), "project": str(values.get("project", "offline-rl-sweeps")),
            "group": values.get("group"), "entity": values.get("entity")}
