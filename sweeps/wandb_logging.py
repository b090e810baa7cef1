"""Weights & Biases logging of a study: one W&B run per member, grouped by study, from the driver.

Tune's own WandbLoggerCallback logs a trial as one run from a logging actor that Tune kills as soon as
`wandb.finish()` returns, which can cut an offline run's records short, and it cannot split a packed
trial into its members. This callback runs in the driver instead: for every trial it opens one run
per member (its config: algorithm, dataset, the member's knobs and seed, the trial's training config),
logs that member's metrics each iteration, and finishes the runs when the trial ends. Offline runs
land in `<trial folder>/wandb/` and upload later with `wandb sync`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ray import tune

from ..algorithms.trainer import split_members
from .study import apply_sampled, trial_train_config


def wandb_mode() -> str:
    """WANDB_MODE when set; else online when an API key is configured, offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    return "online" if has_key else "offline"


class MemberWandbCallback(tune.Callback):
    def __init__(self, project: str, group: str, entity: str | None = None, mode: str | None = None):
        self.project, self.group, self.entity = project, group, entity
        self.mode = mode or wandb_mode()
        self.runs: dict[str, list] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        import wandb
        config = apply_sampled(trial.config)
        members = trial_train_config(config)["members"]
        if trial.trial_id not in self.runs:
            folder = Path(trial.local_path or ".")
            folder.mkdir(parents=True, exist_ok=True)
            self.runs[trial.trial_id] = [
                wandb.init(project=self.project, group=self.group, entity=self.entity, mode=self.mode,
                           dir=str(folder), reinit="create_new", job_type=config["algorithm"],
                           name=f"{trial.trial_id}-m{k}" if len(members) > 1 else trial.trial_id,
                           config={"algorithm": config["algorithm"], "dataset": config["dataset"],
                                   **{k2: v for k2, v in member.items()}, "member": k, "trial": trial.trial_id,
                                   "point": config["study"]["point"], "train": trial_train_config(config)})
                for k, member in enumerate(members)]
        for run, metrics in zip(self.runs[trial.trial_id], split_members(result, len(members))):
            run.log(numeric(metrics), step=int(result["training_iteration"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id, exit_code=0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id, exit_code=1)

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self.runs):
            self._finish(trial_id, exit_code=0)

    def _finish(self, trial_id: str, exit_code: int) -> None:
        for run in self.runs.pop(trial_id, []):
            run.finish(exit_code=exit_code)


def numeric(metrics: dict) -> dict:
    """The numbers W&B can chart (Tune's result also carries strings, booleans and nested dicts)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def report_run_id(study) -> str:
    """The W&B run id of a study's report: the same every time, so a new report updates that run."""
    key = "/".join(str(part) for part in (study.wandb.get("entity"), study.wandb["project"],
                                          study.wandb["group"] or study.name, study.name))
    return "report-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def log_report(study, paths: dict[str, Path]) -> Path:
    """The study's sensitivity table and plots (`write_report`'s paths) as the study's W&B report run
    (job_type `report`, in the study's group); reporting again resumes that run (a fixed id) and logs the
    new table over the old, instead of adding a run. Returns the run's local folder."""
    import csv

    import wandb

    with open(paths["csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    run = wandb.init(project=study.wandb["project"], group=study.wandb["group"] or study.name,
                     entity=study.wandb.get("entity"), mode=wandb_mode(), dir=str(paths["csv"].parent),
                     job_type="report", name=f"{study.name}-report", id=report_run_id(study), resume="allow",
                     reinit="create_new", config={"study": study.name, "metric": study.metric,
                                                  "optimize": study.optimize})
    images = {f"sensitivity/{key}": wandb.Image(str(paths[key])) for key in ("plot", "curves") if key in paths}
    run.log({"sensitivity/table": wandb.Table(columns=rows[0], data=rows[1:]), **images})
    run.finish()
    return Path(run.dir).parent
