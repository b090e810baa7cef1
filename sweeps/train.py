"""`launch.py train --config`: one training config run to its budget in this process, without Ray or Tune.

The config is an export's (`<study folder>/best/*.yaml`, whose YAML comments say how it was chosen) or written by
hand: a TrainConfig as YAML, with `key=value` overrides merged in. Its values are checked as one-line errors before
anything is loaded; the run's config and every iteration's metrics are written to the output folder.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..algorithms.base import ConfigError
from ..algorithms.trainer import TrainConfig, TrainRun
from .study import StudyError
from .study_yaml import check_env_id, check_overrides


def train_from_file(path: str | Path, output: str | Path | None = None, log: Callable[[str], None] = print,
                    overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """`launch.py train --config`: run one exported (or hand-written) TrainConfig YAML, with `key=value`
    overrides (e.g. total_updates=2000 algo.expectile=0.8), to its budget, no Tune.

    Writes the config as run to `<output>/config.yaml` and every iteration's metrics as JSON lines to
    `<output>/result.json`; returns the last metrics.
    """
    values = train_values(path, overrides)
    run = TrainRun(TrainConfig.from_dict(values))
    output = Path(output or Path("results") / "train" / Path(path).stem).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    iterations = math.ceil(run.config.total_updates / run.config.eval_every)
    log(f"Training {run.config.algorithm} on {run.config.dataset}: {run.members} member(s), {iterations} iteration(s)")
    started = time.perf_counter()
    with open(output / "result.json", "w") as results:
        while True:
            metrics = run.train_iteration()
            results.write(json.dumps(_jsonable(metrics)) + "\n")
            results.flush()
            log(f"  updates {metrics['updates']:>8}  {_headline(metrics)}  ({time.perf_counter() - started:.0f} s)")
            if metrics["done"]:
                return metrics


def train_values(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A config file's training values with `overrides` (OmegaConf dotlist) merged in, checked as one-line
    errors once merged (a file an override makes valid is accepted)."""
    if not check_overrides(overrides):
        return check_train_file(path)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    where = f"{path} with {' '.join(overrides)}"
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(read_train_file(path)),
                                                        OmegaConf.from_dotlist(list(overrides))))
    except OmegaConfBaseException as error:
        raise StudyError(f"{where}: {str(error).splitlines()[0]}") from error
    check_train_values(merged, where)
    return merged


def _headline(metrics: dict) -> str:
    keys = ("eval/normalized_return", "eval/return", "eval/q_overestimation")
    return "  ".join(f"{k.split('/')[-1]} {metrics[k]:9.2f}" for k in keys if k in metrics)


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def check_train_file(path) -> dict:
    """`launch.py train --config`: the file's training values, checked as a StudyError/ConfigError one-liner
    (malformed YAML, wrong types, `device: cuda` without a GPU, an unknown env) before anything is loaded."""
    values = read_train_file(path)
    check_train_values(values, str(path))
    return values


def read_train_file(path) -> dict:
    """A training config file's values (a mapping; an export's `study:` key dropped), unchecked."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file (a folder, fifo or device)" if path.exists() else "does not exist"
        raise StudyError(f"config file {path} {what}; give a YAML file (`export` writes them under <study>/best/)")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise StudyError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise StudyError(f"{path} must hold a mapping of training keys")
    return {k: v for k, v in values.items() if k != "study"}


def check_train_values(values: dict, where: str) -> None:
    """Training values as TrainConfig takes them, checked as one-line errors prefixed by `where`."""
    try:
        config = TrainConfig.from_dict(values)
        config.member_configs()
    except (TypeError, ConfigError) as error:
        raise StudyError(f"{where}: {error}") from error
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise StudyError(f"{where}: device: {config.device} but no CUDA GPU is available here; use auto or cpu")
    if config.env is not None:
        check_env_id(config.env, f"{where}: env")
    from .plan import memory_problem
    on_gpu = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    problem = memory_problem([{**values, "study": {}}], gpu_share=1.0 if on_gpu else 0.0)
    if problem:
        raise StudyError(f"{where}: {problem.removeprefix('train/search: ')}")
