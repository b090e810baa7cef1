"""Run a study on Ray Tune (embedded local Ray, or a running cluster) and resume it: the Tuner, its trainable
and callbacks, and the progress lines.

Tune is the engine: one Tune trial per expanded trial of the study (`{"trial": grid_search(trials)}`),
each a population of packed members; checkpoints every `checkpoint_every` iterations; `max_failures`
restarts a crashed trial from its last checkpoint; `resume` is `Tuner.restore`. Results land under
`<storage>/<study name>/` (Tune's result.json / progress.csv per trial, the study YAML beside them),
so reports never depend on W&B. The folder's claim, lock and signature are folder.py's; Ray's start-up,
ray_setup.py's; the datasets' check and build, inputs.py's.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray import tune

from ..algorithms import ALGORITHMS
from ..algorithms.trainable import OfflineTrainable
from ..algorithms.trainer import split_members
from .folder import (check_free_space, check_signature, check_tree, claim_folder, experiment_dir, folder_lock,
                     ray_log_file, sign_folder, state_stamp)
from .atomic_fs import whole_tune_copies, write_atomic
from .inputs import check_inputs, ensure_datasets
from .results import finished_whole, newest_experiment_state
from .plan import SweepClock, check_resources, cluster_resources, duration, format_plan, make_plan
from .ray_setup import check_cluster_storage, init_ray, ray_messages_to, sigterm_as_sigint
from .study import STUDY_FILE, Study, StudyError, apply_sampled, knob_text, trial_train_config
from .study_yaml import load_study


class StudyTrainable(OfflineTrainable):
    """OfflineTrainable fed by a study trial: `config["trial"]` is a TrainConfig dict plus `study` metadata."""

    def setup(self, config: dict) -> None:
        whole_tune_copies()         # this trial process's checkpoint copies into the study folder, whole files
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


class KeepSigned(tune.Callback):
    """Re-signs the folder while Tune runs, whenever its files changed (looked at once per `every` seconds
    at most, at the end of a Tune loop step), so that a driver killed with SIGKILL, which cannot sign, leaves a
    folder `resume` accepts unless it died between a state write and the next look. Tune writes its
    experiment state and results to a staging folder and copies them here in the background, hence the polling."""

    def __init__(self, folder: Path, every: float = 2.0):
        self.folder, self.every = Path(folder), every
        self._looked, self._signed, self._digests = -math.inf, None, {}

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._looked < self.every:
            return
        self._looked = now
        try:
            stamp = state_stamp(self.folder)
            if stamp != self._signed:
                sign_folder(self.folder, self._digests, use_reserve=False)
                self._signed = stamp
        except FileNotFoundError:       # a file renamed while it was read (Tune's copies): the next look signs
            return
        except StudyError:              # a link or special file appeared: left unsigned, the last signing says so
            return
        except OSError as error:        # a full disk: the driver's last signing uses the reserve
            if error.errno != errno.ENOSPC:
                raise


def wandb_callbacks(study: Study, enabled: bool, verbose: bool = False, log: Callable[[str], None] = print) -> list:
    """One W&B run per member (see wandb_logging.py): offline unless an API key is configured."""
    if not (enabled and study.wandb["enabled"]):
        return []
    from .wandb_logging import MemberWandbCallback
    return [MemberWandbCallback(study.wandb["project"], study.wandb["group"] or study.name, study.wandb.get("entity"),
                                verbose=verbose, log=log)]


class ProgressLines(tune.Callback):
    """Live progress as one line per trial result (Tune's own tables are off): the trial's point, how far
    it is, the study metric (mean, and the members' range for a population), Q overestimation, speed, and
    the time left for the whole sweep (`planned`: the algorithm and Tune iterations of every trial the sweep will
    run, in Tune's order; each algorithm is timed apart).
    Plain lines, no carriage returns: a log file or a pipe reads as well as a terminal."""

    def __init__(self, metric: str, log: Callable[[str], None] = print,
                 planned: list[tuple[str, int]] | None = None):
        self.metric, self.log, self.started = metric, log, time.monotonic()
        self.planned = list(planned or [])
        self.clock = SweepClock(self.planned)
        self.finished: set = set()     # trials whose last result has been seen

    def on_trial_start(self, iteration, trials, trial, **info):
        self.clock.started(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        config = apply_sampled(trial.config)
        point = ", ".join(knob_text(k, v) for k, v in config["study"]["point"].items() if k != "sample")
        total = math.ceil(config["total_updates"] / config["eval_every"])
        members = [v for member in split_members(result, len(config["members"])) if
                   isinstance(v := member.get(self.metric), (int, float)) and math.isfinite(v)]
        spread = f" [{min(members):.1f}, {max(members):.1f}]" if len(members) > 1 else ""
        # A trial is done once its last result is seen: Tune marks the status TERMINATED only after the callbacks of
        # that result, so another trial's result arriving meanwhile would count a finished trial as running.
        if result.get("done") or result["training_iteration"] >= total:
            self.finished.add(getattr(trial, "trial_id", id(trial)))
        done = sum(t.status in ("TERMINATED", "ERROR") or getattr(t, "trial_id", id(t)) in self.finished for t in trials)
        self.clock.result(getattr(trial, "trial_id", id(trial)), config["algorithm"])
        left = self.clock.seconds_left([_work_left(t, trial, result) for t in trials],
                                       unseen=len(self.planned) - len(trials),
                                       running=sum(t.status == "RUNNING" for t in trials))
        count = max(len(self.planned), len(trials))
        eta = f", about {duration(left)} left" if left is not None and done < count else ""
        if eta and self.clock.untimed:
            eta += f"; {', '.join(self.clock.untimed)} not timed yet"
        self.log(f"[{time.monotonic() - self.started:6.0f} s] {config['algorithm']} {point:<24} "
                 f"iter {result['training_iteration']}/{total}  {self.metric} {_fixed(result.get(self.metric))}"
                 f"{spread}  q_overestimation {_fixed(result.get('eval/q_overestimation'))}  "
                 f"{result.get('updates_per_second', 0):.0f} updates/s{_compiled(result)}  "
                 f"({done}/{count} trials done{eta})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"[{time.monotonic() - self.started:6.0f} s] trial {trial.trial_id} failed; Tune retries it "
                 f"from its last checkpoint while max_failures allows")


def _compiled(result: dict) -> str:
    """`train.compile`: the compile time the iteration paid (left out of its updates/s), where it paid one."""
    seconds = result.get("compile_seconds") or 0.0
    return f" (+{seconds:.0f} s compiling)" if seconds > 0 else ""


def _work_left(other, trial, result: dict) -> tuple[str, int]:
    """The algorithm of `other` (a trial of the sweep; a searcher never samples it) and the Tune iterations it
    still has to run, as of `trial`'s `result`."""
    algorithm = other.config["trial"]["algorithm"]
    if other is trial:
        return algorithm, 0 if result.get("done") else _iterations(trial) - result["training_iteration"]
    if other.status in ("TERMINATED", "ERROR"):
        return algorithm, 0
    return algorithm, _iterations(other) - (other.last_result or {}).get("training_iteration", 0)


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
            held.enter_context(claim_folder(folder, trials, overwrite, study.name))
        check_inputs(study)          # before any dataset build: a dataset that cannot be had is said at once
        ensure_datasets(study, log, verbose)
        if isinstance(folder, Path):
            write_atomic(folder / STUDY_FILE, yaml.safe_dump(study.source, sort_keys=False))
            sign_folder(folder)
        return _run_claimed(study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose,
                            list(zip(plan.algorithms, plan.iterations)))


def _run_claimed(study: Study, folder, trials: list[dict], address, use_wandb, num_cpus, log, callbacks,
                 verbose: bool = False, planned: list[tuple[str, int]] | None = None):
    """`planned`: the algorithm and Tune iterations of each trial the sweep will run (the progress lines' clock)."""
    with ray_messages_to(None if verbose else ray_log_file(folder, study.name)):
        return _run_tune(study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose, planned)


def _run_tune(study: Study, folder, trials, address, use_wandb, num_cpus, log, callbacks, verbose, planned):
    whole_tune_copies()
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


def resume_study(folder: str | Path, address: str | None = None, use_wandb: bool = True,
                 num_cpus: int | None = None, trust: bool = False, verbose: bool = False):
    """Continue an interrupted study where it stopped: finished trials stay, unfinished and errored ones
    restart from their last checkpoints, and a finished trial whose results were lost since (requeue_lost_trials)
    runs again from the start. Tune's restore unpickles the folder's files, so a folder this
    installation did not sign (check_signature) is refused unless `trust`."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / STUDY_FILE).is_file() or not (folder / "tuner.pkl").is_file():
        raise StudyError(f"{folder} holds no study to resume (no {STUDY_FILE} and Tune state); give the folder "
                         f"`launch.py sweep` printed, <storage>/<study name>")
    with folder_lock(folder):
        check_tree(folder)          # with --trust too: trust is about pickles, links lead out of the folder
        if not trust:
            check_signature(folder)
        study = load_study(folder / STUDY_FILE, resolve=False)
        try:
            lost = requeue_lost_trials(folder)
            if lost:
                print(f"resume: {len(lost)} finished trial(s) lost params.json or result.json (emptied, cut short "
                      f"or removed) and run again from the start, in new folders: {', '.join(lost)}",
                      file=sys.stderr)
            with ray_messages_to(None if verbose else ray_log_file(folder, study.name)):
                whole_tune_copies()
                init_ray(address, num_cpus, verbose)
                trainable, _ = _tuner_parts(study)
                tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True, _resume_config=RESUME_REQUEUED if lost else None)
                with sigterm_as_sigint():
                    return tuner.fit()
        finally:
            sign_folder(folder)


# How a resume treats Tune's trial states once requeue_lost_trials has relabelled them: unfinished ones (and the
# errored ones, relabelled PENDING: the same path in Tune) continue from their last checkpoints, the lost finished
# ones (relabelled ERROR) start over as new trials, the rest stay finished.
RESUME_REQUEUED = tune.ResumeConfig(unfinished=tune.ResumeConfig.ResumeType.RESUME,
                                    errored=tune.ResumeConfig.ResumeType.RESTART,
                                    finished=tune.ResumeConfig.ResumeType.SKIP)


def requeue_lost_trials(folder: Path) -> list[str]:
    """Find the trials Tune's newest experiment state calls finished whose folders no longer hold their results
    (results.finished_whole: a params.json or result.json emptied, cut short or removed, by a copy that ran out of
    space or by hand), and relabel the state so that a restore with RESUME_REQUEUED runs them again from the start
    (as new trials: Tune's restart gives them new ids and folders, and the report reads only the state's trials)
    while errored trials still continue from their checkpoints. Returns the lost trials' folder names; the state
    is rewritten (atomically) only when there are some. Called after the signature check: the state is trusted,
    and the folder is signed again when the resume ends."""
    newest = newest_experiment_state(folder)
    if newest is None:
        return []
    lost, entries = [], []
    try:
        state = json.loads(newest.read_text())
        for trial_json, runtime_json in state["trial_data"]:
            trial = json.loads(trial_json)
            name = trial["relative_logdir"]
            if trial["status"] == "TERMINATED" and isinstance(name, str) and Path(name).name == name:
                last = json.loads(runtime_json).get("last_result", {}).get("training_iteration")
                if not finished_whole(folder / name, last):
                    lost.append(name)
                    trial["status"] = "ERROR"
            elif trial["status"] == "ERROR":
                trial["status"] = "PENDING"
            entries.append([json.dumps(trial), runtime_json])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []           # not a state this reads: Tune's restore says what is wrong with it
    if lost:
        state["trial_data"] = entries
        write_atomic(newest, json.dumps(state))
    return sorted(lost)


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
