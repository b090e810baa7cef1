"""Weights & Biases logging of a study: one W&B run per member, grouped by study, from the driver.

Tune's own WandbLoggerCallback logs a trial as one run from a logging actor that Tune kills as soon as
`wandb.finish()` returns, which can cut an offline run's records short, and it cannot split a packed
trial into its members. This callback runs in the driver instead: for every trial it opens one run
per member (its config: algorithm, dataset, the member's knobs and seed, the trial's training config; its
name, e.g. `iql expectile=0.7 seed=1`), logs that member's metrics each iteration, and finishes the runs when
the trial ends, all on a background thread and silently unless asked. Offline runs land in
`<study folder>/<trial>/wandb/` and upload later with `wandb sync`.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Callable

from ray import tune

from ..algorithms.trainer import split_members
from .study import apply_sampled, knob_text, trial_train_config


def wandb_mode() -> str:
    """WANDB_MODE when set; else online when an API key is configured, offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    return "online" if has_key else "offline"


class MemberWandbCallback(tune.Callback):
    """One W&B run per member of every trial. `wandb.init` takes 0.5-2.5 s and Tune's event loop waits for its
    callbacks, so every W&B call (init, log, finish) runs on one background thread fed by a queue; Tune's loop
    only enqueues, and the experiment's end waits for the queue to drain. Silent unless `verbose`."""

    def __init__(self, project: str, group: str, entity: str | None = None, mode: str | None = None,
                 verbose: bool = False, log: Callable[[str], None] = print):
        self.project, self.group, self.entity = project, group, entity
        self.mode = mode or wandb_mode()
        self.verbose, self.log = verbose, log
        self._start()

    def _start(self) -> None:
        self.runs: dict[str, list] = {}
        self.folders: set[Path] = set()           # where the runs are, for the `wandb sync` hint
        self.failure: str | None = None
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None

    def __getstate__(self) -> dict:               # Tune pickles its callbacks with the experiment: no thread
        return {k: v for k, v in self.__dict__.items() if k in ("project", "group", "entity", "mode", "verbose", "log")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start()

    def _submit(self, work, *args) -> None:
        if self._worker is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._drain, name="wandb-logging", daemon=True)
            self._worker.start()
        self._queue.put((work, args))

    def _drain(self) -> None:
        while True:
            work, args = self._queue.get()
            if work is None:
                return
            try:
                work(*args)
            except Exception as error:            # W&B trouble must not stop the sweep; said once at the end
                self.failure = self.failure or f"{type(error).__name__}: {error}"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        config = apply_sampled(trial.config)
        members = trial_train_config(config)["members"]
        self._submit(self._log, trial.trial_id, config, trial_folder(trial),
                     [numeric(metrics) for metrics in split_members(result, len(members))],
                     int(result["training_iteration"]))

    def _log(self, trial_id: str, config: dict, folder: Path, metrics: list[dict], step: int) -> None:
        import wandb
        if trial_id not in self.runs:
            folder.mkdir(parents=True, exist_ok=True)
            self.folders.add(folder / "wandb")
            train = trial_train_config(config)
            settings = wandb.Settings(silent=not self.verbose, console="auto" if self.verbose else "off")
            self.runs[trial_id] = [
                wandb.init(project=self.project, group=self.group, entity=self.entity, mode=self.mode,
                           dir=str(folder), reinit="create_new", job_type=config["algorithm"],
                           name=member_run_name(config, member), settings=settings,
                           config={"algorithm": config["algorithm"], "dataset": config["dataset"],
                                   **dict(member), "member": k, "trial": trial_id,
                                   "point": config["study"]["point"], "train": train})
                for k, member in enumerate(train["members"])]
        for run, values in zip(self.runs[trial_id], metrics):
            run.log(values, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit(self._finish, trial.trial_id, 0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit(self._finish, trial.trial_id, 1)

    def on_experiment_end(self, trials, **info):
        if self._worker is None:
            return
        self._submit(self._finish_all)
        self._queue.put((None, ()))
        self._worker.join()
        self._worker = None
        if self.failure:
            self.log(f"W&B logging failed ({self.failure}); the study folder's results are complete without it")

    def _finish_all(self) -> None:
        for trial_id in list(self.runs):
            self._finish(trial_id, 0)

    def _finish(self, trial_id: str, exit_code: int) -> None:
        for run in self.runs.pop(trial_id, []):
            run.finish(exit_code=exit_code)


def trial_folder(trial) -> Path:
    """The trial's folder in the study folder (storage), so that runs sit beside its results; Ray's staging
    folder (synced to storage later) when the storage is a URI."""
    path = getattr(trial, "path", None)
    if path and "://" not in str(path):
        return Path(path)
    return Path(trial.local_path or ".")


def member_run_name(config: dict, member: dict) -> str:
    """A member's W&B run name: the algorithm, the study's axes at this member and its seed,
    e.g. `iql expectile=0.7 seed=1`."""
    point = {k: v for k, v in config["study"]["point"].items() if k != "sample"}
    for key in config["study"].get("axes", []) + config["study"].get("pack", []):
        if key in member:
            point[key] = member[key]
    point.pop("seed", None)
    knobs = [knob_text(key, value) for key, value in point.items()]
    return " ".join([config["algorithm"], *knobs, f"seed={member.get('seed', 0)}"])


def numeric(metrics: dict) -> dict:
    """The numbers W&B can chart (Tune's result also carries strings, booleans and nested dicts)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def report_run_id(study) -> str:
    """The W&B run id of a study's report: the same every time, so a new report updates that run."""
    key = "/".join(str(part) for part in (study.wandb.get("entity"), study.wandb["project"],
                                          study.wandb["group"] or study.name, study.name))
    return "report-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def log_report(study, paths: dict[str, Path], verbose: bool = False) -> Path:
    """The study's sensitivity table and plots (`write_report`'s paths) as the study's W&B report run
    (job_type `report`, in the study's group); reporting again resumes that run (a fixed id) and logs the
    new table over the old, instead of adding a run. Returns the run's local folder."""
    import csv

    import wandb

    with open(paths["csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    run = wandb.init(settings=wandb.Settings(silent=not verbose, console="auto" if verbose else "off"),
                     project=study.wandb["project"], group=study.wandb["group"] or study.name,
                     entity=study.wandb.get("entity"), mode=wandb_mode(), dir=str(paths["csv"].parent),
                     job_type="report", name=f"{study.name}-report", id=report_run_id(study), resume="allow",
                     reinit="create_new", config={"study": study.name, "metric": study.metric,
                                                  "optimize": study.optimize})
    images = {f"sensitivity/{key}": wandb.Image(str(paths[key])) for key in ("plot", "curves") if key in paths}
    run.log({"sensitivity/table": wandb.Table(columns=rows[0], data=rows[1:]), **images})
    run.finish()
    return Path(run.dir).parent
