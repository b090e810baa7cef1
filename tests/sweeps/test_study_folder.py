"""Study folders (issue 15). One study per folder (item 1): a sweep into a used folder is refused before
Ray starts, or cleared with --overwrite; a lock stops a second driver; report and export read only the
folder's own experiment. No code from a received folder (item 2): resume refuses a folder this installation
did not sign before anything is unpickled, unless --trust; report and export never unpickle. No Ray, no
training."""
from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from offline_sweeps.algorithms.trainer import flatten_members
from offline_sweeps.sweeps import folder as study_folder
from offline_sweeps.sweeps import run
from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.results import load_results
from offline_sweeps.sweeps.study import STUDY_FILE, StudyError

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"


def write_trials(folder: Path, study, ids: list[str], returns: dict[str, float]) -> None:
    """Trial folders as Tune leaves them (`<id>_<point>/params.json, result.json`), one per study trial."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / study_folder.MARKER_FILE).write_text("{}")          # claimed by a sweep of this project
    (folder / STUDY_FILE).write_text(yaml.safe_dump(study.source))
    for trial_id, trial in zip(ids, study.trials()):
        rows = []
        for i in range(1, 4):
            values = np.full(len(trial["members"]), returns[trial_id])
            rows.append({**flatten_members({"eval/normalized_return": values, "eval/return": 10 * values - 1000,
                                            "diverged": np.zeros_like(values)}),
                         "updates": 10 * i, "training_iteration": i, "members_diverged": 0, "done": i == 3})
        trial_dir = folder / f"{trial_id}_iql,n"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps({"trial": trial}))
        (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def experiment_state(folder: Path, ids: list[str], stamp: str) -> None:
    """Tune's experiment state, as far as the report reads it: a trial's JSON state holds its trial_id
    (the cloudpickled parts are hex text in `CLOUDPICKLE_FALLBACK` entries)."""
    trial_data = [[json.dumps({"trial_id": i, "config": {"_type": "CLOUDPICKLE_FALLBACK", "value": "80049500"}}),
                   "{}"] for i in ids]
    (folder / f"experiment_state-{stamp}.json").write_text(json.dumps({"trial_data": trial_data}))


def test_a_sweep_into_a_used_folder_stops_before_ray_with_one_line_offering_resume_name_and_overwrite(tmp_path, no_ray,
                                                                                                      study_of):
    study = study_of(tmp_path)
    folder = tmp_path / "study"
    write_trials(folder, study, ["aaaa0001", "aaaa0002"], {"aaaa0001": 1.0, "aaaa0002": 2.0})
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(StudyError) as refused:
        run.run_study(study, log=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message and f"launch.py resume {folder}" in message
    assert "name=" in message and "--overwrite" in message
    assert sorted(p.name for p in folder.iterdir() if p.name != study_folder.LOCK_FILE) == before   # nothing touched


def test_a_folder_holding_only_the_study_yaml_of_a_sweep_that_never_started_is_reused(tmp_path, monkeypatch, study_of):
    monkeypatch.setattr(run, "check_inputs", lambda study: None)     # its datasets are never used
    study = study_of(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / study_folder.MARKER_FILE).write_text("{}")
    (tmp_path / "study" / STUDY_FILE).write_text("name: study\n")
    monkeypatch.setattr(run, "_run_claimed", lambda *args: "ran")
    assert run.run_study(study, log=lambda _: None) == "ran"


def test_overwrite_clears_the_old_trials_but_keeps_a_dynamics_cache_inside_the_folder(tmp_path, monkeypatch, study_of):
    monkeypatch.setattr(run, "check_inputs", lambda study: None)     # its datasets are never used
    folder = tmp_path / "study"
    cache = folder / "dynamics-cache"
    study = study_of(tmp_path, algorithm="mopo", search={"penalty": {"grid": [0.0, 1.0]}},
                     train={"eval_every": 10, "total_updates": 30, "model_dir": str(cache)})
    (cache / "abc").mkdir(parents=True)
    (cache / "abc" / "model.pt").write_bytes(b"weights")
    (folder / study_folder.MARKER_FILE).write_text("{}")
    (folder / "old_trial").mkdir()
    (folder / "old_trial" / "result.json").write_text("{}\n")
    (folder / "experiment_state-old.json").write_text("{}")
    seen = {}
    monkeypatch.setattr(run, "_run_claimed", lambda *args: seen.setdefault(
        "left", sorted(p.name for p in folder.iterdir())))
    run.run_study(study, log=lambda _: None, overwrite=True)
    assert seen["left"] == sorted([study_folder.LOCK_FILE, study_folder.SIGNATURE_FILE, study_folder.MARKER_FILE,
                                  study_folder.RESERVE_FILE, STUDY_FILE, "dynamics-cache"])
    assert (cache / "abc" / "model.pt").read_bytes() == b"weights"


def test_the_lock_stops_a_second_driver_on_the_same_folder_with_one_line(tmp_path, no_ray, study_of):
    folder = tmp_path / "study"
    with study_folder.folder_lock(folder):
        with pytest.raises(StudyError) as refused:
            run.run_study(study_of(tmp_path), log=lambda _: None)
        assert "in use by another sweep" in str(refused.value) and "\n" not in str(refused.value)
        (folder / STUDY_FILE).write_text(yaml.safe_dump(study_of(tmp_path).source))
        (folder / "tuner.pkl").write_bytes(b"")          # what Tuner.can_restore looks for
        with pytest.raises(StudyError, match="in use by another sweep"):
            run.resume_study(folder)
    with study_folder.folder_lock(folder):        # released: the next driver gets it
        pass


def test_report_and_export_use_only_the_trials_of_the_folders_own_experiment(tmp_path, study_of):
    """A foreign experiment's trials in the folder (an earlier run, another driver) are not pooled: the
    newest experiment state names the folder's own."""
    study = study_of(tmp_path)
    folder = tmp_path / "study"
    write_trials(folder, study, ["0ld_00001", "0ld_00002"], {"0ld_00001": 99.0, "0ld_00002": -99.0})
    write_trials(folder, study, ["n3w_00001", "n3w_00002"], {"n3w_00001": 1.0, "n3w_00002": 2.0})
    experiment_state(folder, ["0ld_00001", "0ld_00002"], "2026-01-01_00-00-00")
    experiment_state(folder, ["n3w_00001", "n3w_00002"], "2026-12-01_00-00-00")
    frame = load_results(folder)
    assert sorted({name.rsplit("_", 1)[0] for name in frame["trial"]}) == ["n3w_00001", "n3w_00002"]
    assert math.isclose(frame["eval/normalized_return"].max(), 2.0)
    best = yaml.safe_load(export_best(folder)[0].read_text())
    assert best["algo"]["expectile"] == 0.9          # n3w_00002's setting; 0ld_00001's 99 is not this study's


class Marker:
    """Unpickling it creates the file `path`: what a crafted tuner.pkl could do with a shell command."""
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def received_folder(tmp_path, study_of) -> tuple[Path, Path]:
    """A study folder from elsewhere whose tuner.pkl creates a marker file when unpickled."""
    study = study_of(tmp_path, name="received")
    folder = tmp_path / "received"
    write_trials(folder, study, ["abcd0001", "abcd0002"], {"abcd0001": 1.0, "abcd0002": 2.0})
    experiment_state(folder, ["abcd0001", "abcd0002"], "2026-12-01_00-00-00")
    marker = tmp_path / "code-ran"
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Marker(marker)))
    return folder, marker


def test_resume_refuses_a_received_folder_without_unpickling_it_and_names_trust(tmp_path, config_dir, study_of):
    folder, marker = received_folder(tmp_path, study_of)
    refused = subprocess.run([sys.executable, str(LAUNCH), "resume", str(folder), "--no-wandb"], capture_output=True,
                             text=True, timeout=300, env={**os.environ, study_folder.CONFIG_DIR_ENV: str(config_dir)})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    error = refused.stderr.strip()
    assert "\n" not in error and "not written by this installation" in error
    assert f"launch.py resume --trust {folder}" in error
    assert not marker.exists()


def test_resume_trust_passes_a_received_folder_on_to_tune(tmp_path, config_dir, monkeypatch, study_of):
    folder, marker = received_folder(tmp_path, study_of)
    monkeypatch.setattr(run, "init_ray", lambda *args: None)
    with pytest.raises(Exception):          # Tune unpickles the crafted file (which is no tuner state)
        run.resume_study(folder, use_wandb=False, trust=True)
    assert marker.exists()


def test_a_folder_this_installation_signed_passes_and_one_changed_since_is_refused(tmp_path, config_dir, study_of):
    folder, marker = received_folder(tmp_path, study_of)
    study_folder.sign_folder(folder)
    study_folder.check_signature(folder)
    key = config_dir / "resume.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(bytes.fromhex(key.read_text().strip())) == 32
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Marker(tmp_path / "other")))        # tampered with
    with pytest.raises(StudyError, match="killed with SIGKILL.*resume --trust"):
        study_folder.check_signature(folder)
    study_folder.sign_folder(folder)
    (folder / "abcd0001_iql,n" / "dict_checkpoint.pkl").write_bytes(b"x")       # a pickle added below
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)


def test_a_running_sweep_re_signs_its_folder_when_tune_rewrites_its_state(tmp_path, config_dir, study_of):
    """KeepSigned: what a driver killed with SIGKILL leaves is resumable without --trust once the callback has
    looked after Tune's last write (and it does not sign again while nothing changed)."""
    folder, _ = received_folder(tmp_path, study_of)
    keeper = run.KeepSigned(folder, every=0.0)
    keeper.on_step_end(iteration=1, trials=[])
    study_folder.check_signature(folder)
    signature = (folder / study_folder.SIGNATURE_FILE).stat().st_mtime_ns
    keeper.on_step_end(iteration=2, trials=[])
    assert (folder / study_folder.SIGNATURE_FILE).stat().st_mtime_ns == signature      # nothing changed: not re-signed
    state = folder / "experiment_state-2026-12-03_10-00-00.json"
    state.write_text('{"trial_data": []}')                # Tune's next experiment state arrives
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)
    keeper.on_step_end(iteration=3, trials=[])
    study_folder.check_signature(folder)
    slow = run.KeepSigned(folder, every=3600.0)            # looks at most once an hour: the first look only
    slow.on_step_end(iteration=1, trials=[])
    state.write_text('{"trial_data": [1]}')
    slow.on_step_end(iteration=2, trials=[])
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)


def test_another_installations_signature_is_refused(tmp_path, config_dir, monkeypatch, study_of):
    folder, _ = received_folder(tmp_path, study_of)
    study_folder.sign_folder(folder)
    monkeypatch.setenv(study_folder.CONFIG_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)


def test_report_and_export_never_unpickle(tmp_path, monkeypatch, study_of):
    import cloudpickle
    from offline_sweeps.sweeps.report import write_report
    folder, marker = received_folder(tmp_path, study_of)

    def refuse(*args, **kwargs):
        raise AssertionError("report/export unpickled something")
    for module in (pickle, cloudpickle):
        for name in ("load", "loads", "Unpickler"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(pickle, "_loads", refuse, raising=False)
    write_report(folder)
    assert export_best(folder)
    assert not marker.exists()


# Disk full and partial files (issue 15, item 6)

def test_a_sweep_onto_storage_with_too_little_free_space_stops_before_ray_with_one_line(tmp_path, no_ray,
                                                                                       monkeypatch, study_of):
    import shutil
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(study_folder.shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(StudyError, match=r"10 MiB free, below the 100 MiB") as refused:
        run.run_study(study_of(tmp_path), log=lambda _: None)
    assert "\n" not in str(refused.value) and not (tmp_path / "study").exists()


def test_report_and_export_skip_a_truncated_last_result_line_and_name_it(tmp_path, capsys, study_of):
    study = study_of(tmp_path)
    folder = tmp_path / "study"
    write_trials(folder, study, ["abcd_00001", "abcd_00002"], {"abcd_00001": 1.0, "abcd_00002": 2.0})
    damaged = folder / "abcd_00002_iql,n" / "result.json"
    damaged.write_text(damaged.read_text() + '{"eval/normalized_return": 5')        # the disk filled mid-line
    frame = load_results(folder)
    assert len(frame[frame["trial"] == "abcd_00002_iql,n"]) == 3 * 2         # 3 iterations x 2 members
    assert f"skipped the truncated last line (28 characters) of {damaged}" in capsys.readouterr().err
    assert export_best(folder)


def test_enospc_during_a_command_is_one_line(monkeypatch, capsys):
    import errno
    import importlib.util
    spec = importlib.util.spec_from_file_location("launch_cli", LAUNCH)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/results/study/x/state.pt")
    monkeypatch.setattr(cli, "sweep", full)
    assert cli.main(["sweep", "study.yaml"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no space left on the device writing /results/study/x/state.pt" in error


def test_a_checkpoint_is_written_atomically_so_a_partial_one_never_takes_the_name(tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    import torch
    from offline_sweeps.algorithms.trainer import TrainRun
    (tmp_path / "checkpoint").mkdir()
    path = tmp_path / "checkpoint" / "state.pt"
    TrainRun.save(SimpleNamespace(state=lambda: {"step": torch.tensor(1)}), path)

    def full_disk(obj, target):
        Path(target).write_bytes(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        TrainRun.save(SimpleNamespace(state=lambda: {"step": torch.tensor(2)}), path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"].item() == 1          # the previous checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]       # no partial file left
