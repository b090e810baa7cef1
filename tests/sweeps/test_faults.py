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

from offline_sweeps.algorithms.trainable import GATE_ENV
from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.run import run_study

pytestmark = pytest.mark.slow
LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    text = path.read_text()
    complete = text[:text.rfind("\n") + 1]       # a line Tune is still writing is no result yet
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def trial_dirs(folder: Path) -> list[Path]:
    return [d for d in folder.glob("*_iql*") if d.is_dir()] if folder.is_dir() else []


def wait_for(condition, what: str, given_up=lambda: None, hang_guard: float = 1800):
    """Waits on an event, not a deadline: `given_up()` (the sweep that should bring it has ended) says
    why it will never come; `hang_guard` only stops a hung run from hanging the suite."""
    deadline = time.monotonic() + hang_guard
    while not (found := condition()):
        if (reason := given_up()) or time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {reason or 'hung'}")
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """The folder of `hold-<n>` files that stop trials after their n-th result (trainable.wait_at_gate)."""
    folder = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(GATE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def local_ray(gate, local_ray):
    """conftest's Ray, started with the gate set: Ray's workers take the environment of `ray.init`."""
    yield


def test_killed_trial_restarts_from_its_checkpoint(pendulum_datasets, tmp_path, gate, local_ray, tiny_study):
    """SIGKILL a trial's process mid-run: Tune restarts it (max_failures) from its last checkpoint, with the
    learner's state, and the trial finishes."""
    _, study = tiny_study("killed-trial", pendulum_datasets["medium"], tmp_path / "results",
                          seeds=[0], search={"expectile": {"grid": [0.7]}}, checkpoint_every=2, max_failures=2,
                          train={"total_updates": 400})
    folder = Path(experiment_dir(study))
    hold = gate / "hold-5"          # after its 5th result, with the checkpoints of iterations 2 and 4 saved
    hold.touch()
    killed, study_over = {}, threading.Event()

    def kill_at_the_gate():
        try:
            def held():
                return next((d for d in trial_dirs(folder) if len(results_of(d)) >= 5), None)
            trial = wait_for(held, "the trial's 5th result", lambda: study_over.is_set() and "the study ended")
            killed["checkpoints"] = len(list(trial.glob("checkpoint_*")))
            killed["pid"] = results_of(trial)[-1]["pid"]
            killed["iteration"] = results_of(trial)[-1]["training_iteration"]
            os.kill(killed["pid"], signal.SIGKILL)
        except AssertionError as error:
            killed["error"] = str(error)
        finally:
            hold.unlink()       # the restarted trial, or one the killer gave up on, may go on

    killer = threading.Thread(target=kill_at_the_gate, daemon=True)
    killer.start()
    try:
        results = run_study(study, use_wandb=False, log=lambda _: None)
    finally:
        study_over.set()
        killer.join()
    assert "pid" in killed, killed["error"]
    assert killed["iteration"] == 5 and killed["checkpoints"] >= 2
    assert results.num_errors == 0
    rows = results_of(trial_dirs(folder)[0])
    iterations = [row["training_iteration"] for row in rows]
    assert iterations[-1] == 20 and rows[-1]["done"] and rows[-1]["updates"] == 400
    restart = next(i for i, row in enumerate(rows) if row["pid"] != killed["pid"])
    resumed_at = rows[restart]["training_iteration"] - 1
    assert resumed_at >= 2 and resumed_at % 2 == 0            # from a checkpoint (every 2nd iteration)
    assert resumed_at <= killed["iteration"]                   # ... taken before the kill
    assert rows[restart]["updates"] == (resumed_at + 1) * 20  # the learner's state came back with it


def test_killed_driver_resumes_without_redoing_finished_trials(pendulum_datasets, tmp_path, gate):
    """SIGKILL `launch.py sweep` while its second trial runs; `launch.py resume` finishes the study, keeps
    the first trial's results as they were and continues the second from its checkpoint.

    The trials run one after the other on one CPU. The first waits at a gate after its 29th result while the
    test sets the second's gate after its 5th, so that the driver dies while the second trial is mid-run
    however fast or slow the machine. The kill comes just after Tune has saved its experiment state (every
    second here), and no checkpoint is deleted (`keep_checkpoints` above the trial's 30): Tune deletes an old
    checkpoint before it saves the state that stops naming it, and a kill in that gap is Tune's own failure
    (README, Faults), not this one."""
    values = {"name": "killed-driver", "algorithm": "iql", "datasets": [pendulum_datasets["medium"]],
              "seeds": [0], "search": {"expectile": {"grid": [0.6, 0.9]}}, "checkpoint_every": 1,
              "keep_checkpoints": 100,
              "train": {"eval_every": 20, "eval_episodes": 2, "total_updates": 600, "reward_scale": 0.1,
                        "algo": {"hidden": [16, 16], "batch_size": 32}},
              "resources": {"cpu": 1}, "storage": str(tmp_path / "results"), "wandb": {"enabled": False}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    folder = tmp_path / "results" / "killed-driver"
    first_hold, second_hold = gate / "hold-29", gate / "hold-5"
    first_hold.touch()
    command = [sys.executable, str(LAUNCH)]
    started = time.monotonic()
    driver = subprocess.Popen(command + ["sweep", str(tmp_path / "study.yaml"), "--no-wandb", "--num-cpus", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    try:
        def exited():
            return driver.poll() is not None and (f"the sweep exited with {driver.returncode}:\n"
                                                  + driver.stdout.read().decode(errors="replace")[-3000:])

        def trial_with(results: int, other_than: Path | None = None):
            return lambda: next((d for d in trial_dirs(folder) if d != other_than and len(results_of(d)) >= results),
                                None)
        finished = wait_for(trial_with(29), "the first trial's 29th result", exited)
        second_hold.touch()         # the first trial is past its 5th result: only the second stops there
        first_hold.unlink()
        running = wait_for(trial_with(5, other_than=finished), "the second trial's 5th result", exited)
        seen = time.time()

        def state_saved_since():
            return max((p.stat().st_mtime for p in folder.glob("experiment_state-*.json")), default=0) > seen + 0.2
        wait_for(state_saved_since, "Tune's next experiment-state save", exited)
        finished_before = (finished / "result.json").read_bytes()
        sweep_seconds = time.monotonic() - started
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for hold in (first_hold, second_hold):
            hold.unlink(missing_ok=True)
    assert results_of(finished)[-1]["done"]
    rows_before = results_of(running)
    assert len(rows_before) == 5 and not rows_before[-1]["done"]

    # The resume has less left to do than the sweep had done (one Ray start, at most one trial's iterations):
    # a limit of ten times the sweep's time follows the machine's speed, leaves room for a load that grows
    # meanwhile (a busy machine here ran the resume 2.2 times slower than the sweep), and still catches a hang.
    # --trust: a SIGKILLed driver cannot sign; the sweep re-signs its folder within about 2 s of each state write
    # (run.KeepSigned), but this test has Tune write its state every second, so the last one may be unsigned
    # (README, Security); resume takes such a folder only when told to.
    resumed = subprocess.run(command + ["resume", str(folder), "--trust", "--no-wandb", "--num-cpus", "1"],
                             capture_output=True, text=True, timeout=10 * sweep_seconds)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (finished / "result.json").read_bytes() == finished_before        # not redone, not lost
    rows = results_of(running)
    assert rows[-1]["done"] and rows[-1]["updates"] == 600 and rows[-1]["training_iteration"] == 30
    assert rows[:len(rows_before)] == rows_before                            # earlier results kept
    continued = rows[len(rows_before)]
    assert continued["training_iteration"] > 1                               # continued from a checkpoint
    assert continued["updates"] == continued["training_iteration"] * 20      # ... with the learner's state


def test_finished_trials_whose_results_were_lost_run_again_on_resume(pendulum_datasets, tmp_path, local_ray,
                                                                       tiny_study):
    """Issue 25, item 3: a finished trial whose result.json was emptied, and one whose result.json was cut short at
    a line's end (every line left whole), as a copy that ran out of space or a careless hand leaves them, run again
    on `launch.py resume`, from the start, in new folders; the damaged folders are kept as they are; the other
    trials stay as they were. (Before, Tune's state called them finished and the resume skipped them: the study
    kept its holes.)"""
    from offline_sweeps.sweeps.results import load_results
    _, study = tiny_study("lost", pendulum_datasets["medium"], tmp_path)
    run_study(study, use_wandb=False, log=lambda _: None)
    folder = tmp_path / "lost"
    emptied, cut, *kept = sorted(trial_dirs(folder))
    assert len(kept) == 2
    kept_before = [(d / "result.json").read_bytes() for d in kept]
    (emptied / "result.json").write_text("")
    (cut / "result.json").write_text((cut / "result.json").read_text().splitlines(keepends=True)[0])

    def files(trial_dir):
        return sorted((p.relative_to(trial_dir), p.read_bytes()) for p in trial_dir.rglob("*") if p.is_file())
    damaged_before = [files(emptied), files(cut)]

    # A new driver, as after a copy: its own Ray session (this one's staging copies would mend the files unasked).
    # --trust: the damage broke the signature.
    command = [sys.executable, str(LAUNCH), "resume", str(folder), "--no-wandb", "--num-cpus", "2"]
    resumed = subprocess.run(command + ["--trust"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"2 finished trial(s) lost params.json or result.json (emptied, cut short or removed) and run again from " \
           f"the start, in new folders: {emptied.name}, {cut.name}" in resumed.stderr
    assert [files(emptied), files(cut)] == damaged_before            # kept, not deleted, not written to
    assert [(d / "result.json").read_bytes() for d in kept] == kept_before      # not redone
    again = sorted(set(trial_dirs(folder)) - {emptied, cut, *kept})
    assert len(again) == 2
    for trial_dir in again:
        rows = results_of(trial_dir)
        assert rows[0]["training_iteration"] == 1 and rows[-1]["done"] and rows[-1]["updates"] == 40   # from scratch
    params = [json.loads((d / "params.json").read_text()) for d in (*again, emptied, cut)]
    assert sorted(map(json.dumps, params[:2])) == sorted(map(json.dumps, params[2:]))     # the same trials
    assert sorted(set(load_results(folder)["trial"])) == sorted(d.name for d in (*kept, *again))   # lost: not read
    again_before = [(d / "result.json").read_bytes() for d in again]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)      # signed; nothing to redo
    assert resumed.returncode == 0 and "run again" not in resumed.stderr, resumed.stderr[-3000:]
    assert len(trial_dirs(folder)) == 6 and [(d / "result.json").read_bytes() for d in again] == again_before
