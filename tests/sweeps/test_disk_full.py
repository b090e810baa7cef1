"""Issue 25: a disk that fills mid-sweep, on a real small filesystem (a tmpfs mounted for the test; skipped, with
the reason, where mounting is not allowed). Every write into the study folder leaves the old file or a whole new
one, the driver still signs its folder (the signature reserve), and once space is freed a plain `resume` finishes
the study. Reproduces the issue's report: the full disk left zero-byte params.json/result.json, the signature was
refused and `resume --trust` failed with a traceback."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from offline_sweeps.algorithms.trainable import GATE_ENV
from offline_sweeps.sweeps import folder as study_folder
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import load_results
from offline_sweeps.sweeps.run import resume_study, run_study

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A 112 MiB tmpfs: just above the 100 MiB a sweep asks for, so a test fills it in a moment."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=112m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); needs root or "
                    f"CAP_SYS_ADMIN")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte with one file (unbuffered writes); returns it (delete it to free the space)."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (2**20, 4096, 1):
            try:
                while True:
                    os.write(descriptor, bytes(block))
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


@pytest.fixture
def gate(tmp_path, monkeypatch):
    folder = tmp_path / "gate"
    folder.mkdir()
    monkeypatch.setenv(GATE_ENV, str(folder))
    return folder


def test_a_disk_that_fills_mid_sweep_leaves_a_folder_a_plain_resume_finishes(pendulum_datasets, small_disk, gate,
                                                                              tiny_study, monkeypatch):
    import ray
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)    # sees the gate
    try:
        _fill_mid_sweep_then_resume(pendulum_datasets, small_disk, gate, tiny_study)
    finally:
        ray.shutdown()


def _fill_mid_sweep_then_resume(pendulum_datasets, disk, gate, tiny_study):
    _, study = tiny_study("full", pendulum_datasets["medium"], disk, seeds=[0], max_failures=1, keep_checkpoints=2,
                          train={"total_updates": 120})
    folder = disk / "full"
    hold = gate / "hold-2"
    hold.touch()
    filled = {}

    def fill_at_the_gate():
        """Once a trial's second result is in the folder (it then waits at the gate), fill the disk, open it."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(len(results_of(d)) >= 2 for d in folder.glob("*_iql*")):
            time.sleep(0.1)
        filled["filler"] = fill(disk)
        hold.unlink()
    filler = threading.Thread(target=fill_at_the_gate, daemon=True)
    filler.start()
    results = run_study(study, use_wandb=False, log=lambda _: None)
    filler.join()
    assert "filler" in filled and results.num_errors >= 1          # the full disk failed a trial
    # Every file the sweep left is whole: no zero-byte or partial JSON (Tune's copies are whole files).
    # (basic-variant-state-*.json is a pickle, whatever its name says)
    for path in [*folder.glob("experiment_state-*.json"), *folder.glob("*/params.json")]:
        assert path.stat().st_size > 0, path
        json.loads(path.read_text())
    study_folder.check_signature(folder)            # the driver signed it, full disk and all (the reserve)
    filled["filler"].unlink()                       # space freed
    resumed = resume_study(folder, use_wandb=False)
    assert resumed.num_errors == 0
    for trial_dir in folder.glob("*_iql*"):
        rows = results_of(trial_dir)
        assert rows[-1]["done"] and rows[-1]["updates"] == 120, trial_dir
    assert len(set(load_results(folder)["trial"])) == 2
    write_report(folder)
    assert (folder / study_folder.RESERVE_FILE).stat().st_size == study_folder.RESERVE_BYTES     # made again
