"""Issue 17 item 2 (progress with ETAs for long jobs) and issue 15's leftover (a failing or killed `dataset make`
ends with one line and leaves no staging folder)."""
from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from offline_sweeps import datasets as ds
from offline_sweeps.algorithms.online_sac import OnlineSAC
from offline_sweeps.datasets import progress
from offline_sweeps.datasets.builder import BuildConfig, build
from offline_sweeps.datasets.progress import Progress

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The progress module's clock, moved by hand: clock[0] is now, in seconds."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


def test_lines_off_a_terminal_carry_the_total_and_an_eta_at_the_recent_rate(clock):
    out = io.StringIO()
    with Progress("work", 100, unit="steps", file=out) as bar:
        for step in range(100):
            clock[0] += 0.1 if step < 20 else 1.0      # a fast warm-up, then 1 step/s
            bar.update(1, loss="0.5")
    lines = out.getvalue().splitlines()
    # A line per tenth once 5 s have passed since the last; the ETA follows the recent rate, not the mean.
    assert lines[0] == "work: 23/100 steps (23%), 00:05 elapsed, 00:16 left, loss=0.5", lines
    assert "work: 60/100 steps (60%), 00:42 elapsed, 00:40 left, loss=0.5" in lines      # 40 steps at 1 step/s
    assert lines[-1] == "work: 100/100 steps in 01:22 (loss=0.5)" and "\r" not in out.getvalue()


def test_a_quiet_job_still_prints_now_and_then_and_an_upper_bound_says_at_most(clock):
    out = io.StringIO()
    with Progress("SAC", 1000, upper_bound=True, file=out) as bar:
        clock[0] += 31
        bar.update(1)
    assert out.getvalue().splitlines()[0].startswith("SAC: 1/1000 it (0%), 00:31 elapsed, at most 8:")


def test_a_wait_shows_its_elapsed_time(clock):
    out = io.StringIO()
    with Progress("waiting", None, file=out) as wait:
        clock[0] += 40
        wait.tick()
        wait.close("done")
    assert out.getvalue().splitlines() == ["waiting: 00:40 elapsed", "waiting: 00:40 elapsed (done)"]


def test_a_small_build_shows_its_sac_budget_and_collection_totals(minari_root, capfd):
    config = BuildConfig("Pendulum-v1", kinds=("random", "medium"), expert="scripted", medium_return=-2000.0,
                         sac_steps=400, sac_start_steps=200, eval_every=200, sac_hidden=(16, 16), eval_episodes=2,
                         transitions=400, num_envs=2, ref_episodes=2)
    build(config, log=lambda _: None, make_agent=OnlineSAC)
    err = capfd.readouterr().err
    assert "SAC to medium return -2000: 200/400 steps in" in err and "target reached" in err, err
    assert "collecting random data: 400/400 transitions in" in err, err
    assert "collecting medium data: 400/400 transitions in" in err, err


def test_a_failed_write_removes_its_staging_folder(minari_root, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    def disk_full(self, episodes):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(HDF5Storage, "update_episodes", disk_full)
    with pytest.raises(ds.DatasetError, match=r"writing pendulum/random-v0 failed \(OSError: \[Errno 28\] No space"):
        build(BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", transitions=200, num_envs=1,
                          ref_episodes=1), log=lambda _: None)
    assert list(minari_root.iterdir()) == []


# The writer stops after its first episode and leaves a marker file; the test then sends SIGTERM to the build.
STALLED_WRITE = textwrap.dedent("""
    import os, sys, time
    from minari.dataset._storages.hdf5_storage import HDF5Storage
    original = HDF5Storage.update_episodes
    def stall(self, episodes):
        original(self, list(episodes)[:1])
        open(os.environ["STALLED_MARKER"], "w").close()
        time.sleep(120)
    HDF5Storage.update_episodes = stall
    sys.argv = sys.argv[1:]
    import runpy
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_sigterm_mid_write_ends_with_one_line_and_no_staging(minari_root):
    args = ["dataset", "make", "--env", "Pendulum-v1", "--kinds", "random", "--expert", "scripted",
            "--transitions", "400", "--num-envs", "2"]
    marker = minari_root.parent / "stalled"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "STALLED_MARKER": str(marker)}
    build_process = subprocess.Popen([sys.executable, "-c", STALLED_WRITE, str(LAUNCH), *args],
                                     cwd=LAUNCH.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists() and build_process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), build_process.communicate(timeout=60)
    assert [p.name for p in minari_root.iterdir() if p.name.startswith(".staging-")]
    build_process.send_signal(signal.SIGTERM)
    _, err = build_process.communicate(timeout=60)
    assert build_process.returncode == 2
    assert err.decode().splitlines() == ["error: dataset build interrupted by SIGTERM: no dataset written whole, "
                                         "pendulum/random-v0 not written (nothing of it left behind)"]
    assert list(minari_root.iterdir()) == []
