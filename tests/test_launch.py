"""launch.py as a user runs it: a subprocess, real datasets, one-line errors with exit code 2."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    (("train", "--config", "sweeps"), "config file sweeps is not a regular file"),
    (("sweep", "sweeps", "--dry-run"), "study file sweeps is not a regular file"),
    (("sweep", "sweeps/quickstart.yaml", "search.expectil={grid:[0.5]}"),
     "override 'search.expectil={grid:[0.5]}': its value is not valid YAML"),
    (("sweep", "sweeps/quickstart.yaml", "total_updates"), "override 'total_updates': write key=value"),
])
def test_bad_input_gets_one_line_error(args, message):
    result = launch(*args, cwd=LAUNCH.parent)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_help_explains_each_subcommand():
    result = launch("dataset", "make", "--help")
    assert result.returncode == 0 and "--medium-return" in result.stdout and "ref_min_score" in result.stdout
    import argparse
    spec = importlib.util.spec_from_file_location("launch_cli", LAUNCH)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def leaves(parser, path=()):
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands:
            yield path, parser
        for action in commands:
            for name, sub in action.choices.items():
                yield from leaves(sub, (*path, name))
    found = dict(leaves(cli.parser()))
    assert {("sweep",), ("resume",), ("report",), ("export",), ("train",), ("dataset", "make"), ("model", "list"),
            ("bench",)} <= set(found)
    for path, sub in found.items():
        assert sub.description and len(sub.description) > 20, path
        assert "--verbose" in sub.format_help(), path
    import offline_sweeps.datasets as ds
    from offline_sweeps.algorithms.networks import SAMPLED_Q_PRECISIONS
    from offline_sweeps.sweeps.study import SELECT_CRITERIA
    assert (cli.DATASET_KINDS, cli.SAMPLED_Q_PRECISIONS, cli.SELECT_CRITERIA) == (
        ds.KINDS, SAMPLED_Q_PRECISIONS, SELECT_CRITERIA)


def test_help_imports_neither_torch_nor_ray():
    script = ("import runpy, sys\n"
              "for argv in (['--help'], ['sweep', '--help'], ['train', '--help']):\n"
              "    sys.argv = ['launch.py', *argv]\n"
              "    try:\n"
              f"        runpy.run_path({str(LAUNCH)!r}, run_name='__main__')\n"
              "    except SystemExit as done:\n"
              "        assert done.code == 0, done.code\n"
              "print(sorted({'torch', 'ray', 'wandb', 'gymnasium'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_sweep_dry_run_prints_the_plan_and_starts_nothing(tmp_path, minari_root, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("launch_cli", LAUNCH)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    import ray

    from offline_sweeps.sweeps import run
    monkeypatch.setattr(run, "init_ray", lambda *args: pytest.fail("Ray was started"))
    monkeypatch.setattr(run, "ensure_datasets", lambda *args: pytest.fail("a dataset was built"))
    assert cli.main(["sweep", str(LAUNCH.parent / "sweeps" / "quickstart.yaml"), "--dry-run",
                     f"storage={tmp_path / 'results'}", "train.total_updates=2000"]) == 0
    out = capsys.readouterr().out
    assert "Study quickstart: 3 trial(s), 9 member run(s)" in out and "18,000 member-updates" in out
    assert "dataset pendulum/medium-v0: missing: built first from Pendulum-v1" in out
    assert "estimate: about" in out and out.rstrip().endswith("dry run: nothing started")
    assert not (tmp_path / "results").exists() and not any(minari_root.iterdir()) and not ray.is_initialized()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has the GPU the study asks for")
def test_a_gpu_study_on_a_machine_without_one_stops_at_once_with_one_line(tmp_path, minari_root):
    import time
    started = time.monotonic()
    result = launch("sweep", "sweeps/iql_tau.yaml", f"storage={tmp_path / 'results'}", cwd=LAUNCH.parent)
    assert time.monotonic() - started < 15           # about 5 s here: the imports; no dataset build, no Ray
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: resources.gpu: the study asks for 0.25 GPU per trial and this machine "
                                    "has no GPU") and "resources.gpu=0" in result.stderr and "--address" in result.stderr
    assert "cannot run here" in result.stdout                       # the plan came first
    assert not (tmp_path / "results").exists() and not any(minari_root.iterdir())


def train_config(tmp_path, dataset: str) -> Path:
    path = tmp_path / "bc.yaml"
    path.write_text(yaml.safe_dump({"algorithm": "bc", "dataset": dataset, "eval_every": 10, "eval_episodes": 1,
                                    "total_updates": 40, "algo": {"hidden": [8, 8], "batch_size": 16},
                                    "members": [{"seed": 0}]}))
    return path


@pytest.mark.parametrize("override, message", [
    ("total_updates", "override 'total_updates': write key=value"),
    ("algo={hidden:[8]}", "override 'algo={hidden:[8]}': its value is not valid YAML"),
    ("total_updates=five", "total_updates"),
])
def test_train_names_a_bad_override(tmp_path, override, message):
    result = launch("train", "--config", str(train_config(tmp_path, "pendulum/medium-v0")), override)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_train_with_overrides_runs_the_changed_config(pendulum_datasets, tmp_path):
    config = train_config(tmp_path, pendulum_datasets["medium"])
    result = launch("train", "--config", str(config), "total_updates=20", "members=[{seed: 3}]",
                    "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out" / "result.json").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["updates"] == 20
    ran = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert ran["total_updates"] == 20 and ran["members"] == [{"seed": 3}] and ran["eval_every"] == 10


def test_an_override_can_make_a_config_file_valid(tmp_path):
    """The merged values are checked, not the file alone: eval_every past total_updates is fixed by the override,
    and the merged values are still checked (a bad one named with the file and its overrides)."""
    from offline_sweeps.sweeps.study import StudyError
    from offline_sweeps.sweeps.train import train_values
    path = train_config(tmp_path, "pendulum/medium-v0")
    path.write_text(path.read_text().replace("eval_every: 10", "eval_every: 100"))
    with pytest.raises(StudyError, match="bc.yaml: eval_every=100 is larger than total_updates=40"):
        train_values(path)
    assert train_values(path, ["total_updates=200"])["total_updates"] == 200
    with pytest.raises(StudyError, match=r"bc.yaml with total_updates=20: .*eval_every=100 is larger"):
        train_values(path, ["total_updates=20"])


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
    result = subprocess.run([sys.executable, str(LAUNCH), "bench", "tune", "--trials", "2"], capture_output=True,
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
