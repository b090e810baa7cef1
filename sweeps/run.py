"""Run a study on Ray Tune (embedded local Ray, or a running cluster), resume it, and re-run one config.

Tune is the engine: one Tune trial per expanded trial of the study (`{"trial": grid_search(trials)}`),
each a population of packed members; checkpoints every `checkpoint_every` iterations; `max_failures`
restarts a crashed trial from its last checkpoint; `resume` is `Tuner.restore`. Results land under
`<storage>/<study name>/` (Tune's result.json / progress.csv per trial, the study YAML beside them),
so reports never depend on W&B.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray import tune

from ..algorithms import ALGORITHMS
from ..algorithms.trainable import OfflineTrainable
from ..algorithms.trainer import split_members
from ..datasets import BuildConfig, build, local_dataset_ids
from .folder import (KeepSigned, check_free_space, check_signature, claim_folder, experiment_dir, folder_lock,
                     ray_log_file, sign_folder)
from .plan import SweepClock, check_resources, cluster_resources, duration, format_plan, make_plan
from .study import STUDY_FILE, Study, StudyError, apply_sampled, check_inputs, knob_text, load_study, trial_train_config


class StudyTrainable(OfflineTrainable):
    """OfflineTrainable fed by a study trial: `config["trial"]` is a TrainConfig dict plus `study` metadata."""

    def setup(self, config: dict) -> None:
        started = time.perf_counter()
        super().setup(trial_train_config(apply_sampled(config)))
        self.setup_seconds = time.perf_counter() - started     # dataset load, env check, buffer, networks
        self.node_id = ray.get_runtime_context().get_node_id()

    def step(self) -> dict:
        return {**super().step(), "node_id": self.node_id, "setup_seconds": self.setup_seconds}

    def reset_config(self, new_config: dict) -> bool:
        self.setup(new_config)
        return True


def sampled_space(study: Study) -> dict:
    """Tune's search space for the axes Optuna chooses."""
    space = {}
    for axis in study.sampled_axes():
        if axis.kind == "choice":
            space[axis.key] = tune.choice(list(axis.values))
        elif axis.kind == "uniform":
            space[axis.key] = tune.uniform(axis.low, axis.high)
        else:
            space[axis.key] = tune.loguniform(axis.low, axis.high)
    return space


def ensure_datasets(study: Study, log: Callable[[str], None] = print, verbose: bool = True) -> None:
    """Build the study's datasets that are missing locally, when the study says how (`build:`); unless `verbose`,
    the behaviour agent's training shows only its progress line, not a line per evaluation."""
    local = set(local_dataset_ids())
    missing = sorted({d for part in study.parts for d in part.datasets if d not in local and not Path(d).exists()})
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
        env = settings.pop("env", None)
        if not env:
            raise StudyError("build.env: name the Gymnasium env to build missing datasets from")
        try:
            config = BuildConfig(env_id=env, name=name, version=version, kinds=tuple(kinds), **settings)
        except TypeError as error:
            raise StudyError(f"build: {error}") from error
        build(config, log=log, trace=verbose)


def wandb_callbacks(study: Study, enabled: bool, verbose: bool = False, log: Callable[[str], None] = print) -> list:
    """One W&B run per member (see wandb_logging.py): offline unless an API key is configured."""
    if not (enabled and study.wandb["enabled"]):
        return []
    from .wandb_logging import MemberWandbCallback
    return [MemberWandbCallback(study.wandb["project"], study.wandb["group"] or study.name, study.wandb.get("entity"),
                                verbose=verbose, log=log)]


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = True) -> None:
    """Join `address` (or RAY_ADDRESS), shipping this code to the workers; else start an embedded local Ray.
    The workers' output reaches this console only when `verbose` on a cluster (never from the embedded Ray:
    a trial's failure is in its error.txt and said in one progress line)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(stage_package())]}, log_to_driver=verbose)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


@contextlib.contextmanager
def ray_messages_to(log_file: Path | None):
    """Ray's start-up notes (token authentication, the local instance), Tune's warnings and its experiment
    banner go to `log_file` instead of the console; None leaves them on the console. The driver's "ray" logger
    gets the file as its one handler (ray.init keeps a logger's handlers, setting only their format), stray
    writes to sys.stderr go there too, and Tune's banner and TensorBoard hint, its "new output", are off
    (RAY_AIR_NEW_OUTPUT=0: its old reporter at verbose 0 prints nothing)."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray")
    handlers = logger.handlers[:]
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    with open(log_file, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(filename)s:%(lineno)d -- %(message)s"))
        logger.handlers[:] = [handler]
        try:
            with contextlib.redirect_stderr(stream):
                yield
        finally:
            logger.handlers[:] = handlers
            if previous is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def stage_package() -> Path:
    """This code as one importable `offline_sweeps/` folder, for Ray's runtime_env `py_modules`.

    The repository keeps datasets/, algorithms/ and sweeps/ at its top and installs them as
    `offline_sweeps.*`; a plain working_dir upload would not import under that name. A folder in
    py_modules is zipped, sent once to every node and put on the workers' path, with no pip run there
    (a wheel would be pip-installed with all its dependencies on every node): the nodes' own environment
    provides torch, Ray and the rest.
    """
    import shutil
    import tempfile
    root = Path(__file__).resolve().parents[1]
    package = Path(tempfile.mkdtemp(prefix="offline-sweeps-code-")) / "offline_sweeps"
    for name in ("datasets", "algorithms", "sweeps"):
        shutil.copytree(root / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package


class ProgressLines(tune.Callback):
    """Live progress as one line per trial result (Tune's own tables are off): the trial's point, how far
    it is, the study metric (mean, and the members' range for a population), Q overestimation, speed, and
    the time left for the whole sweep (`planned`: the Tune iterations of every trial the sweep will run).
    Plain lines, no carriage returns: a log file or a pipe reads as well as a terminal."""

    def __init__(self, metric: str, log: Callable[[str], None] = print, planned: list[int] | None = None):
        self.metric, self.log, self.started = metric, log, time.monotonic()
        self.planned = list(planned or [])
        self.clock = SweepClock(self.planned)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.clock.started(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        config = apply_sampled(trial.config)
        point = ", ".join(knob_text(k, v) for k, v in config["study"]["point"].items() if k != "sample")
        total = math.ceil(config["total_updates"] / config["eval_every"])
        members = [v for member in split_members(result, len(config["members"])) if
                   isinstance(v := member.get(self.metric), (int, float)) and math.isfinite(v)]
        spread = f" [{min(members):.1f}, {max(members):.1f}]" if len(members) > 1 else ""
        done = sum(t.status in ("TERMINATED", "ERROR") or (t is trial and bool(result.get("done"))) for t in trials)
        self.clock.result(getattr(trial, "trial_id", id(trial)))
        left = self.clock.seconds_left([_iterations_left(t, trial, result) for t in trials],
                                       unseen=len(self.planned) - len(trials),
                                       running=sum(t.status == "RUNNING" for t in trials))
        count = max(len(self.planned), len(trials))
        eta = f", about {duration(left)} left" if left is not None and done < count else ""
        self.log(f"[{time.monotonic() - self.started:6.0f} s] {config['algorithm']} {point:<24} "
                 f"iter {result['training_iteration']}/{total}  {self.metric} {_fixed(result.get(self.metric))}"
                 f"{spread}  q_overestimation {_fixed(result.get('eval/q_overestimation'))}  "
                 f"{result.get('updates_per_second', 0):.0f} updates/s  "
                 f"({done}/{count} trials done{eta})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"[{time.monotonic() - self.started:6.0f} s] trial {trial.trial_id} failed; Tune retries it "
                 f"from its last checkpoint while max_failures allows")


def _iterations_left(other, trial, result: dict) -> int:
    """Tune iterations `other` (a trial of the sweep) still has to run, as of `trial`'s `result`."""
    if other is trial:
        return 0 if result.get("done") else _iterations(trial) - result["training_iteration"]
    if other.status in ("TERMINATED", "ERROR"):
        return 0
    return _iterations(other) - (other.last_result or {}).get("training_iteration", 0)


def _iterations(trial) -> int:
    config = apply_sampled(trial.config)
    return math.ceil(config["total_updates"] / config["eval_every"])


def _fixed(value) -> str:
    return f"{value:8.2f}" if isinstance(value, (int, float)) else "       -"


def _tuner_parts(study: Study):
    trainable = tune.with_resources(StudyTrainable, {k: v for k, v in study.resources.items() if v})
    scheduler = None
    if study.scheduler["name"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        scheduler = ASHAScheduler(grace_period=study.scheduler["grace_period"],
                                  reduction_factor=study.scheduler["reduction_factor"])
    return trainable, scheduler


def run_study(study: Study, address: str | None = None, use_wandb: bool = True, num_cpus: int | None = None,
              log: Callable[[str], None] = print, callbacks: tuple = (), overwrite: bool = False,
              verbose: bool = False, estimate: bool = False):
    """Run every trial of `study`; returns Tune's ResultGrid. The study YAML is kept beside the results.
    `callbacks` are extra `tune.Callback`s (the W&B one is added from the study's settings). The study
    folder must be empty (or `overwrite` clears its old trials) and is locked while the sweep runs.

    The plan (sweeps/plan.py; `estimate` times a few updates here for a time estimate) is logged first, and
    resources this machine lacks stop the sweep before the folder is claimed, a dataset built or Ray started.
    Unless `verbose`, Ray's and W&B's own console output goes to files in the study folder."""
    folder = experiment_dir(study)
    trials = with_model_cache(study.trials(), folder)
    plan = make_plan(study, folder, address, num_cpus, estimate=estimate)
    for line in format_plan(plan, None if verbose else str(ray_log_file(folder, study.name))):
        log(line)
    if plan.problem:
        raise StudyError(plan.problem)
    with contextlib.ExitStack() as held:
        if isinstance(folder, Path):
            check_free_space(folder)
            held.enter_context(claim_folder(folder, trials, overwrite))
        check_inputs(study)          # before any dataset build: a dataset that cannot be had is said at once
        ensure_datasets(study, log, verbose)
        if isinstance(folder, Path):
            (folder / STUDY_FILE).write_text(yaml.safe_dump(study.source, sort_keys=False))
            sign_folder(folder)
        return _run_claimed(study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose,
                            plan.iterations)


def _run_claimed(study: Study, folder, trials: list[dict], address, use_wandb, num_cpus, log, callbacks,
                 verbose: bool = False, planned: list[int] | None = None):
    with ray_messages_to(None if verbose else ray_log_file(folder, study.name)):
        return _run_tune(study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose, planned)


def _run_tune(study: Study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose, planned):
    init_ray(address, num_cpus, verbose)
    if address or os.environ.get("RAY_ADDRESS"):
        check_resources(study, cluster_resources(), local=False)
        check_cluster_storage(study, log)
    trainable, scheduler = _tuner_parts(study)
    if study.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        param_space = {"trial": trials[0], "sampled": sampled_space(study)}
        search = {"search_alg": OptunaSearch(seed=study.search_seed), "num_samples": study.parts[0].num_samples}
    else:
        param_space, search = {"trial": tune.grid_search(trials)}, {}
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, scheduler=scheduler, **search,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=study.name, storage_path=str(Path(folder).parent) if isinstance(folder, Path) else study.storage,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=study.checkpoint_every,
                                                    num_to_keep=study.keep_checkpoints, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            callbacks=[ProgressLines(study.metric, log, planned), *wandb_callbacks(study, use_wandb, verbose, log),
                       *([KeepSigned(folder)] if isinstance(folder, Path) else []), *callbacks],
            verbose=0))
    if not isinstance(folder, Path):
        with sigterm_as_sigint():
            return tuner.fit()
    try:
        with sigterm_as_sigint():
            return tuner.fit()
    finally:                # every exit of the driver that runs Python: the end, SIGINT/SIGTERM, an error
        sign_folder(folder)


@contextlib.contextmanager
def sigterm_as_sigint():
    """While Tune runs, SIGTERM (what a cluster scheduler sends) is SIGINT: Tune stops the trials, saves the
    experiment state and `fit` returns, so the driver prints the resume hint and exits 3. (Without this, Ray's
    own SIGTERM handler aborts the driver with no message.) A second signal makes Tune stop at once."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum, frame):
        signal.raise_signal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def with_model_cache(trials: list[dict], folder: Path | str) -> list[dict]:
    """Model-based trials keep their dynamics ensembles in `<storage>/dynamics-cache` unless the study names
    a `train.model_dir`: an ensemble depends on the dataset, the model settings and their seed, not on the
    swept lambda or beta, so every trial after the first loads it. With s3:// or gs:// storage the cache
    stays on each node ($OFFLINE_SWEEPS_MODEL_DIR, or ~/.cache); point that at shared storage."""
    if not isinstance(folder, Path):
        return trials
    for trial in trials:
        if ALGORITHMS[trial["algorithm"]].USES_MODEL and not trial.get("model_dir"):
            trial["model_dir"] = str(folder.parent / "dynamics-cache")
    return trials


def check_cluster_storage(study: Study, log: Callable[[str], None]) -> None:
    """On a multi-node cluster every node writes checkpoints to the storage path: a local path works only
    when it is shared (NFS) and mounted at the same place everywhere, which no check here can see."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in study.storage:
        log(f"Note: storage {experiment_dir(study)} is a local path and the cluster has {len(nodes)} nodes; it "
            f"must be shared storage mounted at that path on every node (NFS), else set storage: s3://... or gs://...")


def resume_study(folder: str | Path, address: str | None = None, use_wandb: bool = True,
                 num_cpus: int | None = None, trust: bool = False, verbose: bool = False):
    """Continue an interrupted study where it stopped: finished trials stay, unfinished and errored ones
    restart from their last checkpoints. Tune's restore unpickles the folder's files, so a folder this
    installation did not sign (check_signature) is refused unless `trust`."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / STUDY_FILE).is_file() or not tune.Tuner.can_restore(str(folder)):
        raise StudyError(f"{folder} holds no study to resume (no {STUDY_FILE} and Tune state); give the folder "
                         f"`launch.py sweep` printed, <storage>/<study name>")
    with folder_lock(folder):
        if not trust:
            check_signature(folder)
        study = load_study(folder / STUDY_FILE, resolve=False)
        try:
            with ray_messages_to(None if verbose else ray_log_file(folder, study.name)):
                init_ray(address, num_cpus, verbose)
                trainable, _ = _tuner_parts(study)
                tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
                with sigterm_as_sigint():
                    return tuner.fit()
        finally:
            sign_folder(folder)


def unfinished_trials(results) -> list[str]:
    """Trials that ended neither done nor in error: what a SIGINT leaves (Tune reports them as terminated)."""
    unfinished = []
    for result in results:
        if result.error is None and not (result.metrics or {}).get("done", False):
            unfinished.append(Path(result.path).name)
    return unfinished


def _trial_name(trial) -> str:
    config = apply_sampled(trial.config)
    point = config["study"]["point"]
    parts = [config["algorithm"]] + [knob_text(k, v) for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", f"{trial.trial_id}_" + ",".join(parts))[:120]
