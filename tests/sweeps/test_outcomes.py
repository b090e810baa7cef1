"""Issue 25, continued: say what happened (every trial failed, every seed diverged, a second Ctrl-C), and every file
of a received folder fuzzed (hypothesis): a report reads results or stops with one line. No Ray, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline_sweeps.sweeps import run
from offline_sweeps.sweeps.outcome import finish_study
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study


def _params(folder: Path) -> Path:
    return next(folder.glob("abcd0000_*/params.json"))


# --- 5. Say what happened ------------------------------------------------------------------------------------------

def _cli():
    import importlib.util
    spec = importlib.util.spec_from_file_location("launch_cli_said", Path(__file__).resolve().parents[2] / "launch.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


class _Result:
    def __init__(self, path, error=None, metrics=None):
        self.path, self.error, self.metrics = str(path), error, metrics or {}


class _Grid(list):
    @property
    def num_errors(self):
        return sum(r.error is not None for r in self)


def test_a_sweep_whose_every_trial_failed_says_so_with_the_first_error_and_exits_1(tmp_path, capsys):
    """Not "has no trial results yet" from the report: the first error's last line and where the rest are."""
    folder = tmp_path / "study"
    grid = _Grid([_Result(folder / "a_iql", RuntimeError("Traceback ...\n  File x\nDatasetError: dataset 'd' is gone")),
                  _Result(folder / "b_iql", RuntimeError("other"))])
    assert finish_study(grid, folder, use_wandb=False) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"error: every trial failed (2); the first: DatasetError: dataset 'd' is gone; the rest in "
                     f"{folder}/*/error.txt")


def test_export_refuses_a_best_config_whose_seeds_all_diverged(tmp_path, study_folder_at):
    from offline_sweeps.sweeps.export import export_best
    folder = study_folder_at(tmp_path)
    for results in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        for row in rows:
            row.update({k: 1.0 for k in row if k.endswith("diverged")})
            row.update({k: float("nan") for k in row if k.endswith("normalized_return")})
        results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(StudyError, match="every seed of every setting of study study diverged") as refused:
        export_best(folder)
    assert "\n" not in str(refused.value) and not list((folder / "best").glob("*.yaml"))


@pytest.mark.parametrize("command", ["sweep", "resume"])
def test_a_second_ctrl_c_still_ends_with_the_resume_hint_and_exit_3(tmp_path, monkeypatch, capsys, command):
    """Tune stops at once on a second SIGINT and `fit` raises KeyboardInterrupt out of the driver."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run, "run_study", interrupted)
    monkeypatch.setattr(run, "resume_study", interrupted)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(parse_study({"name": "study", "algorithm": "iql", "datasets": ["d/medium-v0"],
                                                "storage": str(tmp_path)}).source))
    argv = ["sweep", str(path)] if command == "sweep" else ["resume", str(tmp_path / "study")]
    assert _cli().main(argv) == 3
    assert f"continue the sweep with `python launch.py resume {tmp_path / 'study'}`" in capsys.readouterr().err


# --- property-based: arbitrary content in every file of a received folder -----------------------------------------

JSONS = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
FILES = ["params.json", "result.json", "study.yaml", "experiment_state-x.json"]


def _content(name: str, data) -> str:
    value, key, raw = data
    if raw is not None:
        return raw
    if name == "params.json":
        return json.dumps({"trial": {"algorithm": "iql", "dataset": "pendulum/medium-v0", "members": [{"seed": 0}],
                                     "study": {"point": {}}, key: value}})
    if name == "result.json":
        return json.dumps({"training_iteration": 1, key: value}) + "\n" + json.dumps(value) + "\n"
    if name == "study.yaml":
        return yaml.safe_dump({"name": "study", "algorithm": "iql", "datasets": ["pendulum/medium-v0"], key: value})
    return json.dumps({"trial_data": value})


@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(FILES), data=st.tuples(JSONS, st.sampled_from(["algorithm", "dataset", "members", "study",
                                                                          "total_updates", "seed", "metric", "x"]),
                                                    st.one_of(st.none(), st.text(max_size=40))))
def test_any_content_in_a_received_folders_files_gives_results_or_a_one_line_study_error(tmp_path_factory, name, data,
                                                                                         study_folder_at):
    from offline_sweeps.sweeps.results import load_results
    root = tmp_path_factory.mktemp("received")
    folder = study_folder_at(root)
    target = folder / name if name in ("study.yaml", "experiment_state-x.json") else _params(folder).with_name(name)
    target.write_text(_content(name, data))
    try:
        load_results(folder)
    except StudyError as error:
        assert "\n" not in str(error)
