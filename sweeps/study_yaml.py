"""Reading a study: its YAML, with `key=value` overrides merged in (OmegaConf), validated into a `Study`.

Every bad value is a one-line StudyError naming its key path and what is allowed: unknown keys, search axes
that are not fields of the algorithm's config or of the training config, packing an axis the algorithm cannot
pack, a metric the algorithm does not report, resources, scheduler, W&B and storage settings, env ids.
`resolve=False` leaves `${...}` interpolations as text, for a study read back from a results folder.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..algorithms import ALGORITHMS
from ..algorithms.trainer import TrainConfig
from .reference import parse_references
from .study import SELECT_CRITERIA, Axis, Part, Study, StudyError

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"algorithm", "dataset", "members"}
PART_KEYS = {"algorithm", "datasets", "train", "search", "seeds", "pack", "num_samples"}
TOP_KEYS = PART_KEYS | {"name", "description", "parts", "search_seed", "build", "resources", "scheduler", "metric",
                        "mode", "optimize", "wandb", "storage", "max_failures", "checkpoint_every", "keep_checkpoints",
                        "searcher", "select", "reference"}
SCHEDULERS = ("none", "asha")
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")         # one path component, never '.', '..' or hidden
MAX_NAME = 100                                                  # file names stop at 255 bytes
WANDB_PROJECT = re.compile(r"[^/\\#?%:\s]{1,128}")                # W&B refuses / \ # ? % : in a project name
# What every run reports (trainer.TrainRun.train_iteration and evaluation.evaluate_population), and what only
# critics (eval/q_*) or model-based learners add; train/* keys are the algorithm's own (reported_metrics).
RUN_METRICS = {"eval/return", "eval/return_std", "eval/length", "eval/normalized_return", "eval/return_best",
               "eval/normalized_return_best", "updates", "updates_per_second", "members_diverged", "diverged",
               "ope/fqe_value", "ope/fqe_seconds", "ope/fqe_updates_per_second", "compile_seconds"}  # ope/fqe_*: train.fqe.enabled
CRITIC_METRICS = {"eval/q_mean", "eval/mc_return_mean", "eval/q_overestimation", "ope/critic_initial_q", "ope/td_error"}
MODEL_METRICS = {"eval/model_return", "model/holdout_nll", "model/uncertainty_mean", "rollout/reward_mean",
                 "model/loaded_from_cache"}
SEARCHERS = ("default", "optuna")


def scaled_steps(value, fraction) -> int:
    """The `times` resolver: `${times:${train.total_updates},0.3}` is round(total_updates * 0.3), so a phase of a
    run (BRAC's behaviour fit, a warm start) keeps its share of the budget when `train.total_updates` is overridden."""
    if not (_number(value) and _number(fraction)) or value < 0 or fraction < 0:
        raise ValueError(f"times: {value!r} and {fraction!r} must be non-negative numbers")
    return int(round(float(value) * float(fraction)))


if hasattr(OmegaConf, "register_resolver"):         # OmegaConf 2.4 (register_new_resolver is deprecated there)
    OmegaConf.register_resolver("times", scaled_steps, replace=True, annotation_validation="off")
else:
    OmegaConf.register_new_resolver("times", scaled_steps, replace=True)


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
        what = "is not a regular file (a folder, fifo or device)" if path.exists() else "does not exist"
        raise StudyError(f"study file {path} {what}; give a YAML file (the shipped studies are in sweeps/*.yaml)")
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
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise StudyError(f"name: {str(name)[:120]!r} must be one folder name of at most {MAX_NAME} characters "
                         f"(letters, digits, '_', '-', '.', not starting with '.'): it names the results folder "
                         f"inside storage, and trial folders and W&B runs add to it")
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
        merged = {**shared, **part_values}
        if isinstance(shared.get("train"), dict) and isinstance(part_values.get("train"), dict):
            merged["train"] = _merge_train(shared["train"], part_values["train"])
        parts.append(_parse_part(merged, where))
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
    study.reference = parse_references(values.get("reference"))
    if study.searcher == "optuna":
        _check_optuna(study)
    study.trials()   # expanding validates packing against each algorithm
    return study


def _merge_train(shared: dict, own: dict) -> dict:
    """A part's `train:` over the study's: the part's keys win, and mappings (`algo`, `model`, `fqe`) merge one level
    down, so a `train.total_updates=...` override reaches every part that does not set it itself."""
    merged = {**shared, **own}
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(shared.get(key), dict):
            merged[key] = {**shared[key], **value}
    return merged


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
    ray_temp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()).resolve() / "ray"
    try:
        resolved = Path(storage).expanduser().resolve()
        if resolved == ray_temp or ray_temp in resolved.parents:
            raise StudyError(f"storage: {resolved} is inside Ray's temporary folder {ray_temp}, which Ray deletes "
                             f"with its sessions; give a folder of your own")
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
