"""A study: one question about constraint strength, as YAML, validated into trials for Ray Tune.

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
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import itertools
import math
import os
import re
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
                        "searcher", "select"}
SCHEDULERS = ("none", "asha")
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")         # one path component, never '.', '..' or hidden
WANDB_PROJECT = re.compile(r"[^/\\#?%:\s]{1,128}")                # W&B refuses / \ # ? % : in a project name
# What every run reports (trainer.TrainRun.train_iteration and evaluation.evaluate_population), and what only
# critics (eval/q_*) or model-based learners add; train/* keys are the algorithm's own (reported_metrics).
RUN_METRICS = {"eval/return", "eval/return_std", "eval/length", "eval/normalized_return", "eval/return_best",
               "eval/normalized_return_best", "updates", "updates_per_second", "members_diverged", "diverged",
               "ope/fqe_value", "ope/fqe_seconds", "ope/fqe_updates_per_second"}     # ope/fqe_*: train.fqe.enabled
CRITIC_METRICS = {"eval/q_mean", "eval/mc_return_mean", "eval/q_overestimation", "ope/critic_initial_q", "ope/td_error"}
MODEL_METRICS = {"eval/model_return", "model/holdout_nll", "model/uncertainty_mean", "rollout/reward_mean",
                 "model/loaded_from_cache"}
SEARCHERS = ("default", "optuna")
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


@functools.lru_cache(maxsize=None)
def reported_metrics(algorithm: str) -> frozenset[str]:
    """The metric keys a run of `algorithm` reports: the run's own, the critics' or model-based ones where they
    apply, and the `"train/..."`/`"rollout/..."` keys written in the source of the learner's classes (every
    update's metrics dict names its keys literally; a test checks that against real updates)."""
    learner = ALGORITHMS[algorithm]
    keys = set(RUN_METRICS)
    if getattr(learner, "USES_MODEL", False):
        keys |= MODEL_METRICS
    from ..algorithms.base import Learner
    if learner.q_value is not Learner.q_value:      # Learner.has_critic: evaluation compares Q with returns
        keys |= CRITIC_METRICS
    for klass in learner.__mro__:
        if not (klass.__module__ or "").startswith(ALGORITHMS[algorithm].__module__.rsplit(".", 1)[0]):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        keys |= set(re.findall(r"[\"'](train/[a-z0-9_]+|rollout/[a-z0-9_]+|precision/[a-z0-9_]+)[\"']", source))
        if "sampled_q_dtype" in source:
            keys.add("precision/sampled_q_bf16")
    return frozenset(keys)


def knob_text(key: str, value) -> str:
    """A knob as trial names, W&B run names and progress lines show it: `expectile=0.7` (the key's last part,
    floats to 4 significant digits)."""
    return f"{key.split('.')[-1]}={value:.4g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"


def check_overrides(overrides) -> list[str]:
    """Each `key=value` override parsed alone (OmegaConf's dotlist, as the study and train configs read them),
    so that a malformed one is named instead of the file it was to change; returns them as a list."""
    for override in overrides:
        if not isinstance(override, str) or "=" not in override or not override.split("=", 1)[0].strip():
            raise StudyError(f"override {override!r}: write key=value (e.g. train.total_updates=2000)")
        try:
            OmegaConf.from_dotlist([override])
        except OmegaConfBaseException as error:
            raise StudyError(f"override {override!r}: {str(error).splitlines()[0]}") from None
        except Exception as error:         # the value is not YAML (yaml's errors)
            problem = getattr(error, "problem", None) or " ".join(str(error).split())
            raise StudyError(f"override {override!r}: its value is not valid YAML ({problem}); a mapping needs a "
                             f"space after each colon, e.g. search.expectile={{grid: [0.5, 0.7]}}") from None
    return list(overrides)


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), resolve: bool = True) -> Study:
    """Read a study YAML, apply `key=value` overrides, validate, and return the Study.

    `resolve=False` leaves `${...}` interpolations as the text they are: a study read back from a results folder,
    which may come from someone else, must not pull this machine's environment variables (`${oc.env:TOKEN}`)
    into a report. A resolved study lists the keys it resolved in `interpolated`."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist; the shipped studies are in sweeps/*.yaml")
    check_overrides(overrides)
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
    """Validate a study's values (from YAML) into a Study; every bad value is a StudyError naming its key."""
    if not isinstance(values, dict):
        raise StudyError("study: must be a mapping of study keys")
    _reject_unknown(values, TOP_KEYS, "")
    name = values.get("name")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise StudyError(f"name: {name!r} must be one folder name (letters, digits, '_', '-', '.', not starting "
                         f"with '.'): it names the results folder inside storage")
    if not isinstance(values.get("description", ""), str):
        raise StudyError("description: must be text")
    if not isinstance(values.get("storage", "results"), str) or not values.get("storage", "results"):
        raise StudyError("storage: give a folder path (or a URI such as s3://bucket/path)")
    if not isinstance(values.get("metric", "eval/normalized_return"), str):
        raise StudyError("metric: must be a metric name such as eval/normalized_return")
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
    study.metric = values.get("metric", study.metric)
    for index, part in enumerate(study.parts):
        if study.metric not in reported_metrics(part.algorithm):
            raise StudyError(f"metric: {part.algorithm} does not report {study.metric!r}; it reports "
                             f"{', '.join(sorted(reported_metrics(part.algorithm)))}")
    study.mode = _one_of(values.get("mode", "max"), ("max", "min"), "mode")
    study.optimize = _one_of(values.get("optimize", "last"), ("last", "best"), "optimize")
    if "wandb" in values:
        study.wandb = _parse_wandb(values["wandb"])
    study.storage = values.get("storage", study.storage)
    _check_storage(study.storage)
    study.max_failures = _integer(values, "max_failures", 2, minimum=0)
    study.checkpoint_every = _integer(values, "checkpoint_every", 1, minimum=1)
    study.keep_checkpoints = _integer(values, "keep_checkpoints", 2, minimum=1)
    if study.build is not None and not isinstance(study.build, dict):
        raise StudyError("build: must be a mapping of dataset-builder settings (env, transitions, ...)")
    study.searcher = _one_of(values.get("searcher", "default"), SEARCHERS, "searcher")
    study.select = _one_of(values.get("select", "online"), SELECT_CRITERIA, "select")
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
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise StudyError(f"{where}algorithm: {algorithm!r} is not one of {', '.join(sorted(ALGORITHMS))}")
    datasets = values.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise StudyError(f"{where}datasets: give a list of Minari dataset ids or folders")
    train = values.get("train") or {}
    _reject_unknown(train, TRAIN_KEYS, f"{where}train.")
    train = dict(train)
    config_class = ALGORITHMS[algorithm].Config
    algo_fields = {f.name for f in dataclasses.fields(config_class)}
    _reject_unknown(train.get("algo") or {}, algo_fields, f"{where}train.algo.")
    if not isinstance(train.get("model") or {}, dict):
        raise StudyError(f"{where}train.model: must be a mapping of dynamics-model settings")
    if train.get("env") is not None:
        check_env_id(train["env"], f"{where}train.env")
    axes = []
    search = values.get("search") or {}
    if not isinstance(search, dict):
        raise StudyError(f"{where}search: must be a mapping of key: {{grid|choice|uniform|loguniform: ...}}")
    for key, space in search.items():
        if not isinstance(key, str):
            raise StudyError(f"{where}search.{key}: search keys are field names")
        axes.append(_parse_axis(key, space, algo_fields, config_class.__name__, f"{where}search.{_show(key)}"))
    seeds = values.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise StudyError(f"{where}seeds: give a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}seeds: {seeds} repeats a seed; each seed once")
    pack = values.get("pack") or []
    if not isinstance(pack, list) or not all(isinstance(key, str) for key in pack):
        raise StudyError(f"{where}pack: give a list of axis names (seed or search keys)")
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
            and not any(isinstance(v, bool) for v in spec) and all(math.isfinite(v) for v in spec)
            and spec[0] < spec[1]):
        raise StudyError(f"{where}.{kind}: give [low, high], finite numbers with low < high")
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
        except (ValueError, TypeError) as error:     # TypeError: a value of a type no check foresaw
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
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def check_env_id(env_id, where: str) -> None:
    """`env_id` names a registered Gymnasium env (a `module:Env-v0` id is left to Gymnasium's import)."""
    import gymnasium as gym
    if not isinstance(env_id, str) or not env_id:
        raise StudyError(f"{where}: {env_id!r} must be a Gymnasium env id such as Pendulum-v1")
    if ":" not in env_id and env_id not in gym.registry:
        raise StudyError(f"{where}: {env_id!r} is not a registered Gymnasium env")


def _check_storage(storage: str) -> None:
    """A local storage path must be (or be creatable as) a writable folder; URIs (s3://, gs://) are left to Ray."""
    if "://" in storage:
        return
    if "\x00" in storage:
        raise StudyError(f"storage: {storage!r} is not a usable path")
    try:
        existing = Path(storage).expanduser().absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StudyError(f"storage: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StudyError(f"storage: {existing} is not writable")
    except (OSError, RuntimeError) as error:        # a name too long, a home folder that cannot be found
        raise StudyError(f"storage: {storage!r} is not a usable folder ({error})") from error


def _show(key: str) -> str:
    """A key as an error message names it: as written when plain, else quoted (so the message stays one line)."""
    return key if re.fullmatch(r"[\w./-]+", key) else repr(key)


def _reject_unknown(values: dict, allowed: set[str], where: str) -> None:
    if not isinstance(values, dict):
        raise StudyError(f"{where.rstrip('.') or 'study'}: must be a mapping")
    unknown = sorted((str(key) for key in set(values) - allowed))
    if unknown:
        raise StudyError(f"{where}{_show(unknown[0])}: unknown key; allowed here: {', '.join(sorted(allowed))}")


def _integer(values: dict, key: str, default: int, minimum: int) -> int:
    value = values.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise StudyError(f"{key}: {value!r} must be an integer >= {minimum}")
    return value


def _one_of(value, allowed: tuple, key: str):
    if value not in allowed:
        raise StudyError(f"{key}: {value!r} must be one of {', '.join(allowed)}")
    return value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_resources(values) -> dict:
    _reject_unknown(values, {"cpu", "gpu", "custom"}, "resources.")
    cpu, gpu = values.get("cpu", 1), values.get("gpu", 0)
    if not _number(cpu) or cpu <= 0:
        raise StudyError(f"resources.cpu: {cpu!r} must be positive")
    if not _number(gpu) or gpu < 0:
        raise StudyError(f"resources.gpu: {gpu!r} must be >= 0 (fractions share a GPU)")
    custom = values.get("custom") or {}
    if not isinstance(custom, dict) or not all(_number(v) and v > 0 for v in custom.values()):
        raise StudyError("resources.custom: give {resource_name: amount} with positive amounts")
    return {"cpu": cpu, "gpu": gpu, **custom}


def _parse_scheduler(values) -> dict:
    _reject_unknown(values, {"name", "grace_period", "reduction_factor"}, "scheduler.")
    name = _one_of(values.get("name", "none"), SCHEDULERS, "scheduler.name")
    result = {"name": name, "grace_period": values.get("grace_period", 1),
              "reduction_factor": values.get("reduction_factor", 3)}
    if not _number(result["grace_period"]) or not isinstance(result["grace_period"], int) or result["grace_period"] < 1:
        raise StudyError("scheduler.grace_period: must be an integer >= 1 (iterations)")
    if not _number(result["reduction_factor"]) or result["reduction_factor"] <= 1:
        raise StudyError("scheduler.reduction_factor: must be > 1")
    return result


def _parse_wandb(values) -> dict:
    _reject_unknown(values, {"enabled", "project", "group", "entity"}, "wandb.")
    enabled, project = values.get("enabled", True), values.get("project", "offline-rl-sweeps")
    if not isinstance(enabled, bool):
        raise StudyError(f"wandb.enabled: {enabled!r} must be true or false")
    if not isinstance(project, str) or not WANDB_PROJECT.fullmatch(project):
        raise StudyError(f"wandb.project: {project!r} must be 1-128 characters without / \\ # ? % : or spaces")
    for key in ("group", "entity"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise StudyError(f"wandb.{key}: {values[key]!r} must be text")
    return {"enabled": enabled, "project": project, "group": values.get("group"), "entity": values.get("entity")}
