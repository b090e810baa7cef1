"""A study's datasets, before Ray starts: each one checked to be local, buildable or downloadable (`check_inputs`,
said at once rather than after a trial's retries), and the missing ones built when the study says how
(`ensure_datasets`, from its `build:` settings, with datasets.builder).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..algorithms.online_sac import OnlineSAC
from ..datasets import BuildConfig, build, local_dataset_ids
from .study import Study, StudyError
from .study_yaml import check_env_id


def missing_datasets(study: Study) -> list[str]:
    """The study's datasets that are neither in the local Minari root nor a folder."""
    local = set(local_dataset_ids())
    return sorted({d for part in study.parts for d in part.datasets if d not in local and not Path(d).exists()})


def check_inputs(study: Study) -> None:
    """What a study needs from this machine, checked before Ray starts: each dataset is local, or buildable
    (`build:`), or downloadable (not when offline: said at once, not after three failed trial attempts)."""
    from ..datasets.loading import _network_unreachable_reason
    missing = missing_datasets(study)
    if missing and not study.build:
        reason = _network_unreachable_reason()
        if reason is not None:
            raise StudyError(f"datasets: {', '.join(missing)} not found locally and cannot be downloaded ({reason}); "
                             f"build it with `launch.py dataset make`, or add build: to the study")
    if isinstance(study.build, dict) and study.build.get("env") is not None:
        check_env_id(study.build["env"], "build.env")
    check_dataset_envs(study)


def check_dataset_envs(study: Study) -> None:
    """Each local dataset's metadata names a registered env (or the part sets train.env): read from its
    metadata alone, before Ray, instead of failing in every trial's setup."""
    from ..datasets import DatasetError
    from ..datasets.loading import _resolve, metadata_env_id
    import minari.dataset.minari_storage as storage
    local = set(local_dataset_ids())
    for part in study.parts:
        if part.train.get("env") is not None:
            continue
        for dataset in part.datasets:
            if dataset not in local and not Path(dataset).exists():
                continue
            try:
                metadata = storage.MinariStorage.read_raw_metadata(_resolve(dataset, download=False))
            except DatasetError:            # missing or incomplete: the build or the trial says so
                continue
            except Exception as error:
                raise StudyError(f"datasets: {dataset} has unreadable metadata ({' '.join(str(error).split())[:200]}); "
                                 f"delete it and build or download it again") from None
            metadata_env_id(metadata, dataset)


def ensure_datasets(study: Study, log: Callable[[str], None] = print, verbose: bool = True) -> None:
    """Build the study's datasets that are missing locally, when the study says how (`build:`); unless `verbose`,
    the behaviour agent's training shows only its progress line, not a line per evaluation."""
    missing = missing_datasets(study)
    if not missing or not study.build:
        return
    by_name: dict[tuple[str, int], list[str]] = {}
    for dataset_id in missing:
        match = re.fullmatch(r"(.+)/([a-z-]+)-v(\d+)", dataset_id)
        if not match:
            raise StudyError(f"datasets: cannot build {dataset_id!r}; builder ids look like <name>/<kind>-v<N>")
        name, kind, version = match.group(1), match.group(2), int(match.group(3))
        by_name.setdefault((name, version), []).append(kind)
    for (name, version), kinds in by_name.items():
        settings = dict(study.build)
        settings.pop("env", None)
        env = study.build_env(f"{name}/{kinds[0]}-v{version}")
        if not env:
            raise StudyError(f"build.env: name the Gymnasium env to build {name}/... from (without it, only the names "
                             f"of the builder's presets are known: hopper, halfcheetah, walker2d, pendulum)")
        try:
            config = BuildConfig(env_id=env, name=name, version=version, kinds=tuple(kinds), **settings)
        except TypeError as error:
            raise StudyError(f"build: {error}") from error
        build(config, log=log, trace=verbose, make_agent=OnlineSAC)
