"""Faults a long sweep meets: a trial process dies mid-run, the driver itself is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from offline_sweeps.sweeps.run import experiment_dir, run_study

pytestmark = pytest.mark.slow
LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def test_killed_trial_restarts_from_its_checkpoint(pendulum_datasets, tmp_path, local_ray, tiny_study):
    """SIGKILL a trial's process mid-run: Tune restarts it (max_failures) from its last checkpoint, with the
    learner's state, and the trial finishes."""
    _, study = tiny_study("killed-trial", pendulum_datasets["medium"], tmp_path / "results",
                          seeds=[0], search={"expectile": {"grid": [0.7]}}, checkpoint_every=2, max_failures=2,
                          train={"total_updates": 400})
    folder = Path(experiment_dir(study))
    killed = {}

    def kill_after_two_checkpoints():
        def ready():
            trials = [d for d in folder.glob("*_iql*") if d.is_dir()] if folder.is_dir() else []
            if trials and len(list(trials[0].glob("checkpoint_*"))) >= 2 and len(results_of(trials[0])) >= 5:
                return trials[0]
        trial = wait_for(ready, 120, "two checkpoints")
        killed["pid"] = results_of(trial)[-1]["pid"]
        killed["iteration"] = results_of(trial)[-1]["training_iteration"]
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_two_checkpoints, daemon=True)
    killer.start()
    results = run_study(study, use_wandb=False, log=lambda _: None)
    killer.join(timeout=1)
    assert "pid" in killed, "the trial finished before it could be killed"
    assert results.num_errors == 0
    rows = results_of(next(d for d in folder.glob("*_iql*") if d.is_dir()))
    iterations = [row["training_iteration"] for row in rows]
    assert iterations[-1] == 20 and rows[-1]["done"] and rows[-1]["updates"] == 400
    restart = next(i for i, row in enumerate(rows) if row["pid"] != killed["pid"])
    resumed_at = rows[restart]["training_iteration"] - 1
    assert resumed_at >= 2 and resumed_at % 2 == 0            # from a checkpoint (every 2nd iteration)
    assert resumed_at <= killed["iteration"]                   # ... taken before the kill
    assert rows[restart]["updates"] == (resumed_at + 1) * 20  # the learner's state came back with it


def test_killed_driver_resumes_without_redoing_finished_trials(pendulum_datasets, tmp_path):
    """SIGKILL `launch.py sweep` while its second trial runs; `launch.py resume` finishes the study, keeps
    the first trial's results as they were and continues the second from its checkpoint.

    The kill comes just after Tune has saved its experiment state (every second here), and no checkpoint is
    deleted (`keep_checkpoints` above the trial's 30): Tune deletes an old checkpoint before it saves the
    state that stops naming it, and a kill in that gap is Tune's own failure (README, Faults), not this one."""
    values = {"name": "killed-driver", "algorithm": "iql", "datasets": [pendulum_datasets["medium"]],
              "seeds": [0], "search": {"expectile": {"grid": [0.6, 0.9]}}, "checkpoint_every": 1,
              "keep_checkpoints": 100,
              "train": {"eval_every": 20, "eval_episodes": 2, "total_updates": 600, "reward_scale": 0.1,
                        "algo": {"hidden": [16, 16], "batch_size": 32}},
              "resources": {"cpu": 1}, "storage": str(tmp_path / "results"), "wandb": {"enabled": False}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    folder = tmp_path / "results" / "killed-driver"
    command = [sys.executable, str(LAUNCH)]
    driver = subprocess.Popen(command + ["sweep", str(tmp_path / "study.yaml"), "--no-wandb", "--num-cpus", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    try:
        def second_trial_running():
            trials = sorted((d for d in folder.glob("*_iql*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
            finished = [d for d in trials if (rows := results_of(d)) and rows[-1]["done"]]
            running = [d for d in trials if d not in finished and len(results_of(d)) >= 3
                       and list(d.glob("checkpoint_*"))]
            return (finished[0], running[0]) if finished and running else None
        finished, running = wait_for(second_trial_running, 240, "one finished and one running trial")
        seen = time.time()

        def state_saved_since():
            return max((p.stat().st_mtime for p in folder.glob("experiment_state-*.json")), default=0) > seen + 0.2
        wait_for(state_saved_since, 30, "Tune's next experiment-state save")
        finished_before = (finished / "result.json").read_bytes()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    rows_before = results_of(running)
    assert not rows_before[-1]["done"]

    resumed = subprocess.run(command + ["resume", str(folder), "--no-wandb", "--num-cpus", "1"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (finished / "result.json").read_bytes() == finished_before        # not redone, not lost
    rows = results_of(running)
    assert rows[-1]["done"] and rows[-1]["updates"] == 600
    assert rows[:len(rows_before)] == rows_before                            # earlier results kept
    assert rows[len(rows_before)]["training_iteration"] > 1                  # continued from a checkpoint
