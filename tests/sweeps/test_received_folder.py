"""Issue 25: a received study folder is untrusted input. One test per reproduction of the issue (each failed
before its fix): code run on a plain `resume` through a symlinked checkpoint folder, and the other links and
special files a folder must not hold; export writing outside the folder; report and export writing through
planted links; `--overwrite` deleting a folder that never was a study; zero-byte trial files after a full
disk. No Ray, no training."""
from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import pytest

from offline_sweeps.sweeps import folder as study_folder
from offline_sweeps.sweeps import run
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study


class Marker:
    """Unpickling it creates the file `path`: what a crafted pickle could do with a shell command."""
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


# --- 1. Received folders are data, never code or paths --------------------------------------------------------

def test_a_symlinked_checkpoint_folder_with_a_crafted_pickle_is_refused_before_ray_and_nothing_runs(tmp_path, no_ray,
                                                                                                    study_folder_at):
    """The issue's first reproduction: the signature did not descend into a symlinked folder, and Tune's restore
    unpickles a `_dict_checkpoint.pkl` it finds in a checkpoint folder."""
    folder = study_folder_at(tmp_path)
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "elsewhere"
    crafted.mkdir()
    (crafted / "state.pt").write_bytes(b"weights")
    (crafted / "_dict_checkpoint.pkl").write_bytes(pickle.dumps(Marker(marker)))
    checkpoint = next(folder.glob("*/checkpoint_000002"))
    for path in checkpoint.iterdir():
        path.unlink()
    checkpoint.rmdir()
    checkpoint.symlink_to(crafted, target_is_directory=True)
    with pytest.raises(StudyError) as refused:
        run.resume_study(folder, use_wandb=False)
    assert "\n" not in str(refused.value) and f"{checkpoint} is a symlink" in str(refused.value)
    with pytest.raises(StudyError, match="is a symlink"):
        run.resume_study(folder, use_wandb=False, trust=True)       # --trust accepts pickles, not links out
    assert not marker.exists()
    pickle.loads((crafted / "_dict_checkpoint.pkl").read_bytes())   # the plant is real: unpickled, it runs
    assert marker.exists()


def test_the_signature_covers_every_file_a_restore_reads_not_only_pickles(tmp_path, study_folder_at):
    folder = study_folder_at(tmp_path)
    study_folder.check_signature(folder)
    state = next(folder.glob("*/checkpoint_000002/state.pt"))
    state.write_bytes(b"other weights")
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)
    study_folder.sign_folder(folder)
    (state.parent / "_dict_checkpoint.pkl").write_bytes(pickle.dumps({}))        # a file added deep below
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)
    (state.parent / "_dict_checkpoint.pkl").unlink()
    study_folder.check_signature(folder)
    for unsigned in ("logs/ray.log", "report/report.md", "best/iql-x.yaml", "abcd0000_x/wandb/run/x.wandb"):
        (folder / unsigned).parent.mkdir(parents=True, exist_ok=True)
        (folder / unsigned).write_text("written after the last signing")
    study_folder.check_signature(folder)


@pytest.mark.parametrize("plant", ["symlinked file", "symlinked folder", "hard link from outside", "fifo", "socket",
                                   "link in wandb not w&b's"])
def test_links_and_special_files_anywhere_in_a_folder_are_refused_by_resume_report_and_export(tmp_path, no_ray, plant,
                                                                                              study_folder_at):
    from offline_sweeps.sweeps.export import export_best
    from offline_sweeps.sweeps.report import write_report
    folder = study_folder_at(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    trial = next(folder.glob("abcd0000_*"))
    entry = trial / "planted"
    if plant == "symlinked file":
        entry.symlink_to(outside)
    elif plant == "symlinked folder":
        entry.symlink_to(tmp_path, target_is_directory=True)
    elif plant == "hard link from outside":
        os.link(outside, entry)
    elif plant == "fifo":
        os.mkfifo(entry)
    elif plant == "socket":
        import socket
        server = socket.socket(socket.AF_UNIX)
        entry = trial / "s"             # AF_UNIX paths are short
        try:
            server.bind(str(entry))
        except OSError as error:
            pytest.skip(f"cannot make a socket here: {error}")
    else:
        (trial / "wandb").mkdir()
        entry = trial / "wandb" / "checkpoint_000002"
        entry.symlink_to(tmp_path, target_is_directory=True)
    for command in (lambda: run.resume_study(folder, use_wandb=False, trust=True), lambda: write_report(folder),
                    lambda: export_best(folder)):
        with pytest.raises(StudyError) as refused:
            command()
        assert str(entry) in str(refused.value) and "\n" not in str(refused.value)


def test_w_and_bs_own_links_below_a_wandb_folder_are_accepted(tmp_path, study_folder_at):
    folder = study_folder_at(tmp_path)
    wandb = next(folder.glob("abcd0000_*")) / "wandb"
    (wandb / "offline-run-1" / "logs").mkdir(parents=True)
    (wandb / "offline-run-1" / "logs" / "debug.log").write_text("log")
    (wandb / "latest-run").symlink_to("offline-run-1", target_is_directory=True)
    (wandb / "debug.log").symlink_to("offline-run-1/logs/debug.log")
    (wandb / "offline-run-1" / "logs" / "debug-core.log").symlink_to(tmp_path / "cache-outside.log")
    assert study_folder.check_tree(folder)
    study_folder.check_signature(folder)


def test_a_corrupt_signature_or_key_is_one_line(tmp_path, config_dir, study_folder_at):
    folder = study_folder_at(tmp_path)
    (folder / study_folder.SIGNATURE_FILE).write_text('{"version": 2, "hmac_sha256": "\u00e9t\u00e9"}')
    with pytest.raises(StudyError, match="do not match"):
        study_folder.check_signature(folder)
    (folder / study_folder.SIGNATURE_FILE).write_text('{"hmac_sha256": "00"}')       # an older version's
    with pytest.raises(StudyError, match="older version.*resume --trust"):
        study_folder.check_signature(folder)
    (folder / study_folder.SIGNATURE_FILE).write_text('{"version": 2, "hmac_sha256": "00"}')
    (config_dir / "resume.key").write_text("not hex \u00e9")
    with pytest.raises(StudyError, match="is not a resume key"):
        study_folder.check_signature(folder)


# --- 2. Nothing the project did not write is ever deleted ------------------------------------------------------

def test_overwrite_never_deletes_a_folder_that_is_not_a_study_and_says_so_in_one_line(tmp_path, no_ray, monkeypatch,
                                                                                      study_of):
    """The issue's reproduction: `<storage>/<name>` an unrelated non-empty folder; --overwrite deleted it."""
    monkeypatch.setattr(run, "check_inputs", lambda study: None)
    folder = tmp_path / "study"
    (folder / "thesis").mkdir(parents=True)
    (folder / "thesis" / "chapter1.tex").write_text("years of work")
    (folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StudyError) as refused:
            run.run_study(study_of(tmp_path), log=lambda _: None, overwrite=overwrite)
        assert "\n" not in str(refused.value) and f"{folder} is not a study folder" in str(refused.value)
    assert (folder / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir() if p.name != study_folder.LOCK_FILE) == ["notes.txt", "thesis"]


def test_a_sweep_marks_the_folder_it_claims_and_overwrite_clears_only_a_marked_one(tmp_path, monkeypatch, study_of):
    monkeypatch.setattr(run, "check_inputs", lambda study: None)
    monkeypatch.setattr(run, "_run_claimed", lambda *args: "ran")
    folder = tmp_path / "study"
    assert run.run_study(study_of(tmp_path), log=lambda _: None) == "ran"
    assert study_folder.is_study_folder(folder)
    (folder / "abcd_00001_iql").mkdir()
    (folder / "abcd_00001_iql" / "result.json").write_text("{}\n")
    with pytest.raises(StudyError, match="already holds a study's results"):
        run.run_study(study_of(tmp_path), log=lambda _: None)
    assert run.run_study(study_of(tmp_path), log=lambda _: None, overwrite=True) == "ran"
    assert not (folder / "abcd_00001_iql").exists() and study_folder.is_study_folder(folder)


# --- 1 (continued). Values read from a folder are input; outputs stay inside it -----------------------------------

def _params(folder: Path) -> Path:
    return next(folder.glob("abcd0000_*/params.json"))


def test_export_never_writes_outside_the_folder_whatever_params_json_says(tmp_path, study_folder_at):
    """The issue's reproduction: `algorithm` from a received params.json became part of the output file name, so
    `../` in it placed the exported YAML anywhere."""
    from offline_sweeps.sweeps.export import export_best
    folder = study_folder_at(tmp_path)
    params = _params(folder)
    values = json.loads(params.read_text())
    values["trial"]["algorithm"] = "../../../escaped"
    params.write_text(json.dumps(values))
    with pytest.raises(StudyError) as refused:
        export_best(folder)
    assert str(params) in str(refused.value) and "'../../../escaped'" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not list(tmp_path.rglob("escaped*")) and not (folder / "best").exists()


def test_exported_file_names_are_plain_names_inside_best(tmp_path):
    from offline_sweeps.sweeps.export import safe_file_name
    assert safe_file_name("iql-pendulum/medium-v0") == "iql-pendulum_medium-v0"
    assert safe_file_name("iql-/data/sets/pendulum/medium-v0") == "iql-_data_sets_pendulum_medium-v0"
    for hostile in ("../../x", "..", ".hidden", "a\nb", "a\x00b", "é" * 300, ""):
        name = safe_file_name(hostile)
        assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".") and len(name) <= 120
        assert (tmp_path / name).parent == tmp_path


@pytest.mark.parametrize("planted", ["report", "best"])
def test_report_and_export_refuse_to_write_through_a_planted_symlink(tmp_path, planted, study_folder_at):
    """The issue's reproduction: a `report/` or `best/` entry that is a symlink to another folder made report and
    export overwrite files there."""
    from offline_sweeps.sweeps.export import export_best
    from offline_sweeps.sweeps.report import write_report
    folder = study_folder_at(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "report.md").write_text("precious")
    (folder / planted).symlink_to(victim, target_is_directory=True)
    for command in (lambda: write_report(folder), lambda: export_best(folder)):
        with pytest.raises(StudyError, match="is a symlink") as refused:
            command()
        assert "\n" not in str(refused.value)
    assert sorted(p.name for p in victim.iterdir()) == ["report.md"] and (victim / "report.md").read_text() == "precious"


def test_a_symlinked_file_inside_report_or_best_is_replaced_never_written_through(tmp_path):
    """check_tree refuses links before anything is read; a link planted between that check and the write is
    replaced by the new file (write_atomic renames over it), and its target is left as it was."""
    from offline_sweeps.sweeps.atomic_fs import write_atomic
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "report.md"
    link.symlink_to(victim)
    write_atomic(link, "the report")
    assert victim.read_text() == "precious" and not link.is_symlink() and link.read_text() == "the report"


@pytest.mark.parametrize("damage, message", [
    ('{"trial": {"algorithm": "iql"}}', "is not a trial of this project's"),
    ('[1, 2]', "is not a trial of this project's"),
    ('{"x": 1} trailing', "is not JSON"),
    ("members", "members must be a non-empty list"),
    ("dataset", "is not a part of study"),
    ("seed", "seed"),
])
def test_a_damaged_or_foreign_params_json_is_one_line_naming_the_file(tmp_path, damage, message, study_folder_at):
    from offline_sweeps.sweeps.results import load_results
    folder = study_folder_at(tmp_path)
    params = _params(folder)
    values = json.loads(params.read_text())
    if damage == "members":
        values["trial"]["members"] = []
    elif damage == "dataset":
        values["trial"]["dataset"] = "/etc/passwd"
    elif damage == "seed":
        values["trial"]["members"][0]["seed"] = "zero"
    params.write_text(json.dumps(values) if damage in ("members", "dataset", "seed") else damage)
    with pytest.raises(StudyError, match=message) as refused:
        load_results(folder)
    assert str(params) in str(refused.value) and "\n" not in str(refused.value)


def test_a_result_line_that_is_not_a_result_is_one_line_naming_the_file(tmp_path, study_folder_at):
    from offline_sweeps.sweeps.results import load_results
    folder = study_folder_at(tmp_path)
    results = _params(folder).with_name("result.json")
    results.write_text('{"training_iteration": "one"}\n' + results.read_text())
    with pytest.raises(StudyError, match=f"{results} line 1 is not a result") as refused:
        load_results(folder)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("left", ["empty params", "cut params", "empty results"])
def test_empty_or_truncated_trial_files_count_as_a_trial_not_started(tmp_path, left, capsys, study_folder_at):
    """What a full disk left (the issue's reproduction): zero-byte params.json/result.json made the report after
    `resume --trust` fail with a traceback."""
    from offline_sweeps.sweeps.export import export_best
    from offline_sweeps.sweeps.results import load_results
    folder = study_folder_at(tmp_path)
    params = _params(folder)
    if left == "empty params":
        params.write_text("")
    elif left == "cut params":
        params.write_text(params.read_text()[:50])
    else:
        params.with_name("result.json").write_text("")
    frame = load_results(folder)
    assert sorted(set(frame["trial"])) == [next(folder.glob("abcd0001_*")).name]
    assert export_best(folder)
    if left != "empty results":
        assert f"{params} is" in capsys.readouterr().err


# --- 4. No value fails late ----------------------------------------------------------------------------------------

def test_a_study_leaving_total_updates_at_its_default_plans_without_a_key_error(tmp_path):
    """The issue's reproduction: `KeyError: 'total_updates'` in the plan of `sweep` and `--dry-run`."""
    from offline_sweeps.algorithms.trainer import TrainConfig
    from offline_sweeps.sweeps.plan import format_plan, make_plan
    study = parse_study({"name": "defaults", "algorithm": "iql", "datasets": ["pendulum/medium-v0"],
                         "storage": str(tmp_path), "wandb": {"enabled": False}})
    trial = study.trials()[0]
    assert trial["total_updates"] == TrainConfig.total_updates and trial["eval_every"] == TrainConfig.eval_every
    plan = make_plan(study, tmp_path / "defaults", None, 1)
    assert plan.iterations == [TrainConfig.total_updates // TrainConfig.eval_every]
    assert any("1,000,000 member-updates" in line for line in format_plan(plan, None))


def test_a_link_planted_while_a_sweep_runs_is_never_signed(tmp_path, study_folder_at):
    """KeepSigned leaves the folder unsigned (and the sweep running); the driver's last signing and any resume
    then refuse it in one line."""
    folder = study_folder_at(tmp_path)
    before = (folder / study_folder.SIGNATURE_FILE).read_bytes()
    trial = next(folder.glob("abcd0000_*"))
    (trial / "planted").symlink_to(tmp_path, target_is_directory=True)
    run.KeepSigned(folder, every=0.0).on_step_end(iteration=1, trials=[])
    assert (folder / study_folder.SIGNATURE_FILE).read_bytes() == before
    with pytest.raises(StudyError, match="is a symlink"):
        study_folder.sign_folder(folder)
