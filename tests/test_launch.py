"""launch.py as a user runs it: a subprocess, real datasets, one-line errors with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"


def launch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_dataset_make_list_info_delete(minari_root):
    made = launch("dataset", "make", "--env", "Pendulum-v1", "--kinds", "random,expert", "--expert", "scripted",
                  "--transitions", "400", "--num-envs", "2", "--threads", "1")
    assert made.returncode == 0, made.stderr
    assert "wrote pendulum/expert-v0: 2 episodes, 400 transitions" in made.stdout
    listed = launch("dataset", "list")
    assert "2 dataset(s)" in listed.stdout and "pendulum/random-v0" in listed.stdout
    info = json.loads(launch("dataset", "info", "pendulum/expert-v0").stdout)
    assert info["transitions"] == 400 and info["episodes"] == 2 and info["env_id"] == "Pendulum-v1"
    assert info["ref_min_score"] < -900 < -300 < info["ref_max_score"]
    assert info["normalized_return_mean"] > 80          # the scripted expert's own data, vs its deterministic refs
    assert "scripted controller" in info["behavior_policy"]
    assert launch("dataset", "delete", "pendulum/random-v0").returncode == 0
    assert "1 dataset(s)" in launch("dataset", "list").stdout


@pytest.mark.parametrize("args, message", [
    (("dataset", "make", "--env", "Pendulum-v1", "--kinds", "median"), "unknown dataset kind"),
    (("dataset", "info", "nowhere/missing-v0", "--no-download"), "dataset make"),
    (("dataset", "delete", "nowhere/missing-v0"), "dataset list"),
    (("sweep", "sweeps/quickstart.yaml", "search.expectil.grid=[0.5]"), "search.expectil: 'expectil' is not a field"),
    (("sweep", "sweeps/quickstart.yaml", "search.expectile.grid=[0.5,1.5]"), "expectile=1.5 must be in (0, 1)"),
    (("sweep", "sweeps/quickstart.yaml", "pack=[expectile,hidden]"), "pack: 'hidden' is neither"),
    (("resume", "nowhere/study"), "holds no study to resume"),
    (("train", "--config", "nowhere.yaml"), "config file nowhere.yaml does not exist"),
])
def test_bad_input_gets_one_line_error(args, message):
    result = launch(*args, cwd=LAUNCH.parent)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_help_explains_each_subcommand():
    result = launch("dataset", "make", "--help")
    assert result.returncode == 0 and "--medium-return" in result.stdout and "ref_min_score" in result.stdout


def test_bench_buffer_prints_rates():
    result = subprocess.run([sys.executable, str(LAUNCH), "bench", "buffer", "--members", "2"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "P=2" in result.stdout and "minibatches/s" in result.stdout


def test_bench_algorithms_prints_member_updates():
    result = subprocess.run([sys.executable, str(LAUNCH), "bench", "algorithms", "--algorithms", "bc",
                             "--problems", "hopper", "--members", "1,2", "--seconds", "0.2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "bc    hopper" in result.stdout and "P=2:" in result.stdout and "packing x" in result.stdout


@pytest.mark.slow
def test_bench_tune_times_trials_on_the_quickstart_dataset(pendulum_datasets):
    root = Path(pendulum_datasets["medium"]).parents[1]         # holds pendulum/medium-v0, the quickstart's id
    result = subprocess.run([sys.executable, str(LAUNCH), "bench", "tune", "--trials", "3"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "MINARI_DATASETS_PATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split("median")[0].strip(): line for line in result.stdout.splitlines() if "median" in line}
    assert set(lines) == {"next trials", "first trial", "setup alone"}


def test_runs_from_a_checkout_that_is_not_installed(tmp_path):
    """A Ray job's working dir on a cluster head is a bare copy of the repository: launch.py must import
    the packages from the files beside it. Hide the editable install and run it from a copy."""
    import shutil
    root = LAUNCH.parent
    for name in ("datasets", "algorithms", "sweeps"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(LAUNCH, tmp_path / "launch.py")
    script = ("import sys, runpy\n"
              "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
              "sys.argv = ['launch.py', 'sweep', 'sweeps/quickstart.yaml', 'seeds=[]']\n"
              "runpy.run_path('launch.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]             # it got as far as validating the study
    assert result.stderr.strip() == "error: seeds: give a non-empty list of integers"


def test_model_train_then_list_reads_the_cache(pendulum_datasets, tmp_path):
    args = ("model", "train", pendulum_datasets["medium"], "--hidden", "16,16", "--ensemble", "3", "--elites", "2",
            "--max-epochs", "2", "--model-dir", str(tmp_path))
    first, second = launch(*args), launch(*args)
    assert first.returncode == 0, first.stderr
    assert "trained in" in first.stdout and "elites [" in first.stdout and "reward" in first.stdout
    assert "loaded from the cache" in second.stdout
    listing = launch("model", "list", "--model-dir", str(tmp_path))
    assert "1 cached dynamics ensemble(s)" in listing.stdout and "3 x [16, 16]" in listing.stdout
