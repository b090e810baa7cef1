"""SIGTERM (what a cluster scheduler sends) stops a sweep as SIGINT does (issue 15, item 7): the trials
stop, the experiment state is saved, the resume hint is printed, exit code 3; `resume` then finishes it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


def test_sigterm_stops_the_sweep_with_the_resume_hint_and_resume_finishes_it(pendulum_datasets, tmp_path,
                                                                             tiny_study):
    values, _ = tiny_study("sigterm", pendulum_datasets["medium"], tmp_path / "results", seeds=[0],
                           search={"expectile": {"grid": [0.7]}}, checkpoint_every=1,
                           train={"total_updates": 800})          # 40 iterations: far from done at the signal
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(values))
    folder = tmp_path / "results" / "sigterm"
    env = {**os.environ, "OFFLINE_SWEEPS_CONFIG_DIR": str(tmp_path / "config")}
    command = [sys.executable, str(LAUNCH)]
    driver = subprocess.Popen(command + ["sweep", str(tmp_path / "study.yaml"), "--no-wandb", "--num-cpus", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 600
        while not any(p.stat().st_size for p in folder.glob("*/result.json")):
            assert driver.poll() is None, driver.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no first result"
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        output = driver.communicate(timeout=300)[0].decode(errors="replace")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 3, output[-3000:]
    assert f"python launch.py resume {folder}" in output
    rows = [json.loads(line) for p in folder.glob("*/result.json") for line in p.read_text().splitlines() if line]
    assert rows and not rows[-1]["done"]

    resumed = subprocess.run(command + ["resume", str(folder), "--no-wandb", "--num-cpus", "1"], capture_output=True,
                             text=True, timeout=900, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = [json.loads(line) for p in folder.glob("*/result.json") for line in p.read_text().splitlines() if line]
    assert rows[-1]["done"] and rows[-1]["updates"] == 800
