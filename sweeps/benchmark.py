"""Ray Tune's cost per trial: the time from a trial's start to its first training step.

`launch.py bench tune` runs one-update trials on the quickstart study's dataset, one at a time (one
CPU), and times the gap between a trial's end and the next trial's first result, less that first
iteration's own time. What is left is the overhead of a trial: Tune's bookkeeping and end-of-trial
checkpoint, starting (or, with reuse_actors, resetting) the trial's actor, the trial's setup (dataset
load, env check, buffer and networks; also reported alone as `setup_seconds`) and moving the result back.
The first trial also pays for starting its actor's process (from Tune's start to its first result) and
is reported apart.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from ray import tune

from .run import run_study
from .study_yaml import load_study

QUICKSTART = Path(__file__).resolve().parent / "quickstart.yaml"


class TrialTiming(tune.Callback):
    """When each trial delivered its first result and when it completed, with its first iteration's time."""

    def __init__(self):
        self.first: list[tuple[float, float, float]] = []     # (arrival, time_this_iter_s, setup_seconds)
        self.completed: list[float] = []
        self.seen: set[str] = set()
        self.experiment_start = 0.0

    def setup(self, **info):
        self.experiment_start = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.seen:
            self.seen.add(trial.trial_id)
            self.first.append((time.perf_counter(), float(result["time_this_iter_s"]),
                               float(result["setup_seconds"])))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed.append(time.perf_counter())


def trial_overhead(trials: int = 8, log=print) -> dict[str, np.ndarray]:
    """Run `trials` one-update IQL trials one after another; per-trial overheads and setup seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as storage:
        study = load_study(QUICKSTART, [
            "name=bench-tune", f"storage={storage}", f"seeds=[{','.join(str(s) for s in range(trials))}]",
            "pack=[]", "search={expectile: {grid: [0.7]}}", "train.eval_every=1", "train.total_updates=1",
            "train.eval_episodes=1", "wandb.enabled=false"])
        timing = TrialTiming()
        started = time.perf_counter()
        results = run_study(study, use_wandb=False, num_cpus=1, log=log, callbacks=(timing,))
        wall = time.perf_counter() - started
        if results.num_errors:
            raise RuntimeError(f"{results.num_errors} benchmark trial(s) failed")
    gaps = [arrival - iteration - previous_end
            for (arrival, iteration, _), previous_end in zip(timing.first[1:], timing.completed[:-1])]
    arrival, iteration, _ = timing.first[0]
    return {"overhead": np.array(gaps), "first": np.array([arrival - iteration - timing.experiment_start]), "setup": np.array([setup for *_, setup in timing.first]),
            "wall": np.array([wall])}
