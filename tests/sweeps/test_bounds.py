"""Issue 25 item 4: values the plan and validation accepted used to fail late, in a trial or in torch; each is now
refused in one line before Ray: seeds, thread counts, budgets, episode counts, layer widths, names, members of
`train --config`, memory for the networks, CLI ranges, storage inside Ray's temporary folder, a dataset's env id
and absurd magnitudes in its columns."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.datasets import DatasetError
from offline_sweeps.datasets.loading import check_finite, metadata_env_id
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study
from offline_sweeps.sweeps.train import check_train_file

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"
BASE = {"name": "s", "algorithm": "iql", "datasets": ["d/medium-v0"], "train": {"eval_every": 10, "total_updates": 20}}


@pytest.mark.parametrize("changes, message", [
    ({"seeds": [-1]}, "seed=-1 must be a whole number from 0 to 2\\*\\*63 - 1"),
    ({"seeds": [2**63]}, "seed=9223372036854775808 must be"),
    ({"train": {"threads": -1}}, "threads=-1 must be 0"),
    ({"train": {"threads": 5000}}, "threads=5000"),
    ({"train": {"total_updates": 10**10, "eval_every": 10}}, "total_updates=10000000000 must be at most 1,000,000,000"),
    ({"train": {"eval_episodes": 10**6}}, "eval_episodes=1000000 must be at most 100,000"),
    ({"train": {"final_eval_episodes": 10**6}}, "final_eval_episodes=1000000"),
    ({"train": {"algo": {"hidden": [10**6]}}}, "hidden=\\(1000000,\\) must be a list of layer sizes from 1 to 65536"),
    ({"train": {"model": {"seed": -3}}, "algorithm": "mopo"}, "seed=-3"),
    ({"name": "x" * 101}, "^name: .* at most 100 characters"),
    # A grid of 10**7 runs: the expansion alone ran for minutes and took over 10 GiB before this limit (a "hang").
    ({"seeds": list(range(10)), "search": {k: {"grid": [v * (1 + i / 10) for i in range(10)]} for k, v in
      [("expectile", 0.05), ("inverse_temperature", 1.0), ("actor_lr", 1e-4), ("critic_lr", 1e-4),
       ("value_lr", 1e-4), ("gamma", 0.09)]}}, "^search: the study expands to 10,000,000 runs .* more than the 20,000"),
    ({"searcher": "optuna", "num_samples": 10**9, "search": {"expectile": {"uniform": [0.5, 0.9]}}},
     "^search: the study expands to 1,000,000,000 runs"),       # the plan listed 10**9 runs: a hang too
])
def test_values_torch_or_the_os_cannot_take_are_refused_in_one_line(changes, message):
    values = {**BASE, **changes, "train": {**BASE["train"], **changes.get("train", {})}}
    with pytest.raises(StudyError, match=message) as refused:
        parse_study(values)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("members, message", [
    ("[{seed: 0}, {seed: 0}]", "repeats a member"),
    ("[3, 4]", "members must be a non-empty list of per-member settings"),
    ("{seed: 0}", "members=.* must be list"),
])
def test_train_config_members_must_be_distinct_mappings(tmp_path, members, message):
    path = tmp_path / "t.yaml"
    path.write_text(f"algorithm: iql\ndataset: d\nmembers: {members}\n")
    with pytest.raises((StudyError, ConfigError), match=message):
        check_train_file(path)


def test_networks_that_cannot_fit_in_memory_are_refused_before_ray(tmp_path):
    from offline_sweeps.sweeps.plan import make_plan
    study = parse_study({**BASE, "storage": str(tmp_path), "train": {**BASE["train"],
                                                                      "algo": {"hidden": [65536, 65536, 65536]}}})
    plan = make_plan(study, tmp_path / "s", None, 1)
    assert plan.problem and "GiB for its networks and minibatches" in plan.problem and "\n" not in plan.problem
    path = tmp_path / "t.yaml"
    path.write_text("algorithm: iql\ndataset: d\nalgo: {hidden: [65536, 65536, 65536]}\n")
    with pytest.raises(StudyError, match="needs at least .* GiB"):
        check_train_file(path)


def test_more_trial_processes_at_once_than_memory_holds_are_refused_before_ray(tmp_path, monkeypatch):
    """resources.cpu=0.001 let Ray start a process per thousandth of a CPU: on 2 CPUs, 90 trials at once, each a
    Python with torch and Ray, swapped the machine to a halt (a "hang"); now the plan refuses it in one line."""
    from offline_sweeps.algorithms import host_memory
    from offline_sweeps.sweeps.plan import make_plan
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 2**30)          # 1 GiB free: three processes
    values = {**BASE, "seeds": list(range(8)), "storage": str(tmp_path)}
    crowded = make_plan(parse_study({**values, "resources": {"cpu": 0.1}}), tmp_path / "s", None, 2)
    assert crowded.slots == 8 and "\n" not in crowded.problem
    assert crowded.problem.startswith("resources.cpu: at 0.1 CPU per trial, 8 trials would run at once here")
    assert "raise resources.cpu to 0.67 or more" in crowded.problem
    assert make_plan(parse_study({**values, "resources": {"cpu": 1}}), tmp_path / "s", None, 2).problem is None


@pytest.fixture
def gpu_with(tmp_path, monkeypatch):
    """`gpu_with(mib, ...)`: this machine seen with CUDA GPUs whose free memory is `mib` each (index 0, 1, ...), as
    a fake `nvidia-smi` first on PATH reports it, and torch counting them."""
    import torch

    def make(*free_mib: int, visible: str | None = None):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        smi = bin_dir / "nvidia-smi"
        lines = "\\n".join(f"{i}, {mib}" for i, mib in enumerate(free_mib))
        smi.write_text(f'#!/bin/sh\nprintf "{lines}\\n"\n')
        smi.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_mib))
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return make


def test_networks_that_cannot_fit_on_the_gpu_are_refused_before_ray(tmp_path, gpu_with):
    """A GPU study is held against the free memory of the GPU (nvidia-smi's, no CUDA context opened here), times
    the trials that share one GPU; the host's memory does not decide it."""
    from offline_sweeps.sweeps.plan import gpu_free_bytes, make_plan
    gpu_with(40_000, 300, visible="1")
    assert gpu_free_bytes() == 300 * 2**20                       # the visible one, not the least free of all
    gpu_with(40_000, 300)
    assert gpu_free_bytes() == 300 * 2**20
    gpu_with(1000)
    hidden = {"hidden": [2560, 2560]}     # floor 0.41 GiB per trial: fits in 1000 MiB alone, not three at once
    values = {**BASE, "seeds": [0, 1, 2], "storage": str(tmp_path), "train": {**BASE["train"], "algo": hidden}}
    alone = make_plan(parse_study({**values, "resources": {"cpu": 1, "gpu": 1}}), tmp_path / "s", None, 3)
    assert alone.problem is None
    shared = make_plan(parse_study({**values, "resources": {"cpu": 1, "gpu": 0.25}}), tmp_path / "s", None, 3)
    assert shared.problem and "GiB of GPU memory" in shared.problem and "\n" not in shared.problem
    assert "1.23 GiB for the 3 trials at once on one GPU at resources.gpu=0.25, more than the 0.98 GiB free" in \
        shared.problem
    on_cpu = make_plan(parse_study({**values, "resources": {"cpu": 1, "gpu": 0}}), tmp_path / "s", None, 3)
    assert on_cpu.problem is None                                # a CPU study: the host's memory, which holds it
    path = tmp_path / "t.yaml"
    path.write_text("algorithm: iql\ndataset: d\nalgo: {hidden: [8192, 8192]}\n")     # 4.1 GiB: the host has it
    with pytest.raises(StudyError, match="needs at least 4.06 GiB of GPU memory .* than the 0.98 GiB free"):
        check_train_file(path)                                    # device auto, a GPU here: trains on it
    path.write_text("algorithm: iql\ndataset: d\ndevice: cpu\nalgo: {hidden: [8192, 8192]}\n")
    check_train_file(path)


@pytest.mark.parametrize("settings, message", [
    ({"sac_steps": 10**12}, "sac_steps=1000000000000 must be a whole number from 1 to 100,000,000"),
    ({"sac_start_steps": -1}, "sac_start_steps=-1 must be at least 0"),
    ({"transitions": "many"}, "transitions='many' must be a whole number from 1"),      # was a TypeError
    ({"transitions": 2.5}, "transitions=2.5 must be a whole number"),
    ({"version": -1}, "version=-1 must be at least 0"),
    ({"seed": -1}, "seed=-1 must be a whole number from 0 to 2\\*\\*63 - 1"),
    ({"medium_return": float("nan")}, "medium_return=nan must be a finite number"),
])
def test_build_settings_are_bounded_before_anything_runs(settings, message):
    """What a study's `build:` section or `dataset make` hands the builder, checked as it is made."""
    from offline_sweeps.datasets.builder import BuildConfig
    with pytest.raises(DatasetError, match=message):
        BuildConfig("Pendulum-v1", kinds=("medium",), **settings)


def test_storage_inside_rays_temporary_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(StudyError, match="inside Ray's temporary folder"):
        parse_study({**BASE, "storage": str(tmp_path / "ray" / "session_latest" / "results")})


@pytest.mark.parametrize("argv, message", [
    (["sweep", "s.yaml", "--num-cpus", "0"], "--num-cpus: 0 must be from 1"),
    (["resume", "f", "--num-cpus", "-2"], "--num-cpus: -2 must be from 1"),
    (["dataset", "make", "--env", "Pendulum-v1", "--transitions", "1000000000"], "--transitions: 1000000000 must be"),
    (["dataset", "make", "--env", "Pendulum-v1", "--seed", "-1"], "--seed: -1 must be"),
    # Each of these used to run: for minutes to a traceback (a buffer of 10**12 steps), or never to end (a NaN target).
    (["dataset", "make", "--env", "Pendulum-v1", "--sac-steps", "1000000000000"], "--sac-steps: 1000000000000 must"),
    (["dataset", "make", "--env", "Pendulum-v1", "--sac-start-steps", "-5"], "--sac-start-steps: -5 must be from 0"),
    (["dataset", "make", "--env", "Pendulum-v1", "--medium-return", "nan"], "--medium-return: nan must be a finite"),
    (["dataset", "make", "--env", "Pendulum-v1", "--version", "-1"], "--version: -1 must be from 0"),
    (["bench", "buffer", "--threads", "0"], "--threads: 0 must be from 1"),
    (["export", "f", "--select", "bandit", "--episodes", "0"], "--episodes: 0 must be"),
])
def test_cli_ranges_are_argparse_errors(argv, message, capsys):
    spec = importlib.util.spec_from_file_location("launch_cli_bounds", LAUNCH)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_dataset_naming_an_unregistered_env_is_refused_before_ray():
    assert metadata_env_id({"env_spec": json.dumps({"id": "Pendulum-v1"})}, "d") == "Pendulum-v1"
    assert metadata_env_id({}, "d") is None
    with pytest.raises(DatasetError, match="names env 'NoSuchEnv-v0', which is not a registered"):
        metadata_env_id({"env_spec": json.dumps({"id": "NoSuchEnv-v0"})}, "d")
    with pytest.raises(DatasetError, match="env_spec is not a JSON mapping"):
        metadata_env_id({"env_spec": "{not json"}, "d")


def test_a_study_on_a_dataset_whose_env_is_unregistered_stops_in_check_inputs(write_episodes, pendulum_episodes):
    from offline_sweeps.sweeps.inputs import check_inputs
    write_episodes("odd/medium-v0", "Pendulum-v1", pendulum_episodes)
    metadata = next(Path(__import__("os").environ["MINARI_DATASETS_PATH"]).glob("odd/medium-v0/data/metadata.json"))
    values = json.loads(metadata.read_text())
    values["env_spec"] = json.dumps({**json.loads(values["env_spec"]), "id": "Gone-v3"})
    metadata.write_text(json.dumps(values))
    with pytest.raises(DatasetError, match="'Gone-v3', which is not a registered"):
        check_inputs(parse_study({**BASE, "datasets": ["odd/medium-v0"]}))
    check_inputs(parse_study({**BASE, "datasets": ["odd/medium-v0"], "train": {**BASE["train"], "env": "Pendulum-v1"}}))


@pytest.mark.parametrize("column", ["rewards", "observations"])
def test_finite_but_absurd_magnitudes_are_refused_at_load_naming_the_column(column):
    arrays = {name: np.zeros((5, 3), np.float32) for name in ("observations", "actions", "next_observations")}
    arrays["rewards"] = np.zeros(5, np.float32)
    check_finite(arrays, "d")
    arrays[column][2] = 3e18
    with pytest.raises(DatasetError, match=f"column {column} holds magnitudes up to 3e\\+18 \\({column}\\[2\\]\\)"):
        check_finite(arrays, "d")
