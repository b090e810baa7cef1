"""Reading a study folder back: the only code that opens a study's trial files.

What is read, and how: `study.yaml` (its `${...}` interpolations left as text, so a received folder cannot pull
this machine's environment variables into a report); the newest `experiment_state-*.json`, as plain JSON and only
for the trial ids of the folder's own experiment (its cloudpickled parts stay undecoded text); and each trial's
`params.json` and `result.json` (JSON lines), the source of truth whether or not W&B was reachable. A received
folder is input: folder.check_tree first refuses links and special files in it, and every trial file is checked
like user input (`read_trial`, `result_lines`), refused in one line naming it. Nothing is unpickled and nothing
here starts Ray.

`load_results` gives every evaluation of every member as a pandas DataFrame; `collect` and `collect_studies` give
one `MemberRun` per member, a diverged member scored at its dataset's failure level (failure.py), with the returns
of its last evaluation's episodes in the study metric's units (the bandit protocol's arms, selection.py).
"""
from __future__ import annotations

import copy
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..algorithms.trainer import TrainConfig, split_members
from .failure import failure_levels, score_failure
from .folder import check_tree
from .study import SELECTION_METRICS, STUDY_FILE, StudyError, apply_sampled, trial_train_config
from .study_yaml import load_study


@dataclass
class MemberRun:
    """One member of one trial, read back: its knobs and seed, its history of the study's metric, and its scores."""
    algorithm: str
    dataset: str
    knobs: dict            # the study's axis values for this member, seed excluded
    seed: int
    history: np.ndarray    # the study metric at each evaluation, as reported (nan once diverged)
    q_overestimation: float
    diverged_at: int | None  # the 1-based iteration whose evaluation first saw it diverged; None: it did not
    finished: bool         # its trial ran the whole training budget
    iterations: int
    trial_config: dict     # the trial's TrainConfig dict
    member: dict           # this member's entry of trial_config["members"]
    last: float = math.nan   # the metric at the last evaluation, a diverged member at the failure level
    best: float = math.nan   # the best evaluation so far, failure-scored the same way
    failure: float = math.nan  # the failure level it was scored with
    failure_rule: str = ""     # how that level was chosen
    curves: dict = field(default_factory=dict)   # per evaluation: "eval/q_overestimation", "eval/q_mean",
    # "updates_per_second" (the trial's, shared by its members)
    study: str = ""            # the study's name
    ope: dict = field(default_factory=dict)      # {"ope/fqe_value": its last reported value, ...} (nan: none)
    episodes: np.ndarray = field(default_factory=lambda: np.empty(0))   # the metric per episode of its last
    # evaluation (EPISODE_KEYS), as reported; empty where none was (a metric without one, an unfinished trial)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def score(self, optimize: str) -> float:
        return self.best if optimize == "best" else self.last

    def scored_history(self) -> np.ndarray:
        """The metric at each evaluation, from its divergence on at the failure level."""
        scored = self.history.copy()
        if self.diverged:
            scored[self.diverged_at - 1:] = self.failure
        return scored


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


IDENTITY = ("study", "trial", "member", "iteration", "algorithm", "dataset", "seed")
# The per-episode lists a run's last evaluation reports (trainer.py), by the study metric they are in the units of.
EPISODE_KEYS = {"eval/return": "eval/episode_returns", "eval/normalized_return": "eval/episode_normalized_returns"}


def _read(folder: str | Path) -> tuple[object, list[tuple[str, dict, list[dict]]]]:
    """The study and, per trial that reported at least once, (trial folder name, trial dict, results)."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / STUDY_FILE).is_file():
        raise StudyError(f"{folder} is not a study folder (no {STUDY_FILE}); give <storage>/<study name>")
    check_tree(folder)          # no links out of it, no special files: what is read below lies inside
    study = load_study(folder / STUDY_FILE, resolve=False)     # a received folder's ${oc.env:...} stays text
    trials = []
    own = experiment_trial_ids(folder)
    for params_file in sorted(folder.glob("*/params.json")):
        if own is not None and not any(params_file.parent.name.startswith(f"{i}_") for i in own):
            continue            # a trial of another experiment that ran in this folder: not this study's
        results_file = params_file.with_name("result.json")
        if not results_file.is_file() or results_file.stat().st_size == 0:
            continue
        trial = read_trial(params_file, study)
        results = result_lines(results_file) if trial is not None else []
        if results:
            trials.append((params_file.parent.name, trial, results))
    if not trials:
        raise StudyError(f"{folder} has no trial results yet; run or resume the study first")
    return study, trials


def read_trial(path: Path, study) -> dict | None:
    """A trial's `params.json`, checked like user input: its trial dict (a searcher's choices filled in), or None
    for a file that is empty or cut short (a full disk, a killed writer: the trial had not started; named on
    stderr; so is any JSON that stops being valid before its end). Anything else that is not a trial of `study`
    (an algorithm or dataset the study does not run, values TrainConfig refuses, a malformed `study` entry) is a
    one-line StudyError naming the file."""
    text = path.read_text(errors="replace")
    try:
        values = json.loads(text)
    except ValueError as error:
        if error.msg == "Extra data":          # whole JSON with more after it: not a file cut short, not Tune's
            raise StudyError(f"{path} is not JSON ({error.msg}, character {error.pos}); the file is damaged") from None
        print(f"warning: {path} is {'empty' if not text.strip() else 'cut short'}; its trial counts as not started",
              file=sys.stderr)
        return None
    try:
        trial = apply_sampled(values)
        point, algorithm, dataset = trial["study"]["point"], trial["algorithm"], trial["dataset"]
        assert isinstance(point, dict) and isinstance(trial["study"].get("axes", []), list)
        assert isinstance(trial["members"], list) and all(isinstance(m, dict) for m in trial["members"])
    except (KeyError, TypeError, AttributeError, AssertionError):
        raise StudyError(f"{path} is not a trial of this project's (a 'trial' mapping with algorithm, dataset, "
                         f"members and study.point); the file is damaged or foreign") from None
    runs = {(part.algorithm, d) for part in study.parts for d in part.datasets}
    if not (isinstance(algorithm, str) and isinstance(dataset, str)) or (algorithm, dataset) not in runs:
        raise StudyError(f"{path}: algorithm {str(algorithm)[:80]!r} on dataset {str(dataset)[:200]!r} is not a "
                         f"part of study {study.name} ({', '.join(sorted(f'{a} on {d}' for a, d in runs))})")
    try:
        TrainConfig.from_dict(trial_train_config(trial)).member_configs()
    except (ValueError, TypeError) as error:          # ConfigError is a ValueError
        raise StudyError(f"{path}: {' '.join(str(error).split())[:300]}") from None
    return trial


def result_lines(path: Path) -> list[dict]:
    """The JSON lines of a trial's result.json, each a mapping whose training_iteration is a whole number >= 0; a
    truncated last line (a full disk, a killed writer) is skipped and named on stderr. A bad line before the last
    is an error: the file is not Tune's."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    results = []
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            if n < len(lines) - 1:
                raise StudyError(f"{path} line {n + 1} is not JSON; the file is damaged") from None
            print(f"warning: skipped the truncated last line ({len(line)} characters) of {path}", file=sys.stderr)
            continue
        iteration = row.get("training_iteration", 0) if isinstance(row, dict) else None
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise StudyError(f"{path} line {n + 1} is not a result (a mapping with training_iteration a whole "
                             f"number >= 0); the file is damaged or foreign")
        results.append(row)
    return results


def finished_whole(trial_dir: Path, last_iteration) -> bool:
    """Whether a finished trial's folder still holds what the trial wrote: a params.json that is a JSON mapping and
    a result.json whose lines are all JSON, the last at `last_iteration` (the one Tune's state recorded: a file cut
    at a line's end is caught too; an ASHA-stopped trial, whose last result is not done, is whole). Read quietly:
    resume asks this of every trial Tune's state calls finished, and one that is not whole runs again."""
    try:
        params = json.loads((trial_dir / "params.json").read_text(errors="replace"))
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text(errors="replace").splitlines()
                if line.strip()]
    except (OSError, ValueError):
        return False
    return (isinstance(params, dict) and bool(rows) and isinstance(rows[-1], dict)
            and rows[-1].get("training_iteration") == last_iteration)


def experiment_trial_ids(folder: Path) -> set[str] | None:
    """The trial ids of the folder's own experiment: those in Tune's newest `experiment_state-*.json`, read as
    plain JSON (the cloudpickled parts stay undecoded text, nothing is unpickled). None where the folder has
    no readable experiment state (then every trial folder counts)."""
    newest = newest_experiment_state(folder)
    if newest is None:
        return None
    try:
        state = json.loads(newest.read_text())
        ids = {json.loads(entry[0])["trial_id"] for entry in state["trial_data"]}
    except (ValueError, KeyError, TypeError, IndexError, OSError) as error:
        print(f"warning: {newest} is unreadable ({type(error).__name__}); reading every trial folder",
              file=sys.stderr)
        return None
    return ids


def newest_experiment_state(folder: Path) -> Path | None:
    """Tune's newest `experiment_state-*.json` in `folder` (the one a restore reads: the greatest name, a
    timestamp), or None."""
    return max(folder.glob("experiment_state-*.json"), default=None)


def _knobs(trial: dict, member: dict) -> dict:
    """A member's values of the study's axes, seed excluded."""
    return {**{k: v for k, v in trial["study"]["point"].items() if k not in ("seed", "sample")},
            **{k: v for k, v in member.items() if k != "seed"}}


def _frame(study, trials: list[tuple[str, dict, list[dict]]]):
    import pandas as pd
    records = []
    for name, trial, results in trials:
        members = trial_train_config(trial)["members"]
        for result in results:
            for k, metrics in enumerate(split_members(result, len(members))):
                scalars = {key: v for key, v in metrics.items()
                           if not isinstance(v, (dict, list)) or key in EPISODE_KEYS.values()}
                records.append({"study": study.name, "trial": name, "member": k,
                                "iteration": int(result.get("training_iteration", 0)), "algorithm": trial["algorithm"],
                                "dataset": trial["dataset"], "seed": int(members[k].get("seed", 0)),
                                **_knobs(trial, members[k]), **{key: v for key, v in scalars.items()
                                                                if key not in IDENTITY}})
    # A trial restored from a checkpoint reports the iterations after it again: keep the last report of each.
    frame = pd.DataFrame.from_records(records)
    frame = frame.drop_duplicates(subset=["trial", "member", "iteration"], keep="last")
    return frame.sort_values(["trial", "member", "iteration"], kind="stable").reset_index(drop=True)


def load_results(folder: str | Path):
    """Every evaluation of every member of a study as a pandas DataFrame, one row per (trial, member,
    iteration): study, trial (its folder), member, iteration, algorithm, dataset, seed, one column per
    knob of the study, and every metric the member reported (`eval/normalized_return`, `diverged`, ...,
    `member_k/` removed; metrics shared by the population, such as `updates`, in every member's row), and at the
    last evaluation the lists of `EPISODE_KEYS`, each episode's value.
    Values are as reported: a diverged member's metrics are nan (`collect` scores them as failures). A
    trial restored from a checkpoint keeps the last report of each iteration."""
    study, trials = _read(folder)
    return _frame(study, trials)


def collect(folder: str | Path) -> tuple[object, list[MemberRun]]:
    """The study and one MemberRun per member of every trial that reported at least once, diverged members
    scored at the failure level (failure.py); built on `load_results`."""
    return collect_studies([folder])


def collect_studies(folders) -> tuple[object, list[MemberRun]]:
    """`collect` over several studies of the same metric, scored together (one failure level per dataset);
    the study returned is the first, named after all of them."""
    runs, normalization, studies = [], defaultdict(list), []
    for folder in folders:
        study, trials = _read(folder)
        if studies and (study.metric, study.mode, study.optimize) != (studies[0].metric, studies[0].mode,
                                                                       studies[0].optimize):
            raise StudyError(f"{folder}: study {study.name} ranks by {study.optimize} {study.metric} ({study.mode}), "
                             f"{studies[0].name} by {studies[0].optimize} {studies[0].metric} ({studies[0].mode}); "
                             f"only studies of the same metric share a report")
        if study.name in (s.name for s in studies):
            raise StudyError(f"{folder}: study {study.name} is given twice")
        studies.append(study)
        frame = _frame(study, trials)
        numbers = {key: _column(frame, key) for key in (study.metric, "diverged", "eval/q_overestimation", "updates",
                                                        "updates_per_second",
                                                        "eval/return", "eval/normalized_return", "eval/q_mean",
                                                        *(key for key, _ in SELECTION_METRICS.values()))}
        by_name = {name: trial for name, trial, _ in trials}
        episode_key = EPISODE_KEYS.get(study.metric.removesuffix("_best"))
        for (name, k), rows in frame.groupby(["trial", "member"], sort=True):
            config, index = trial_train_config(by_name[name]), rows.index
            diverged = np.flatnonzero(numbers["diverged"][index] > 0)
            member = config["members"][k]
            runs.append(MemberRun(
                config["algorithm"], config["dataset"], _knobs(by_name[name], member), int(member.get("seed", 0)),
                numbers[study.metric][index], float(numbers["eval/q_overestimation"][index][-1]),
                int(diverged[0]) + 1 if len(diverged) else None,
                bool(numbers["updates"][index][-1] >= config.get("total_updates", TrainConfig.total_updates)),
                len(index), config, member, study=study.name,
                curves={key: numbers[key][index] for key in ("eval/q_overestimation", "eval/q_mean",
                                                             "updates_per_second")},
                ope={key: _last_finite(numbers[key][index]) for key, _ in SELECTION_METRICS.values()},
                episodes=_episodes(frame, episode_key, index)))
            normalization[config["dataset"]] += list(zip(numbers["eval/return"][index],
                                                          numbers["eval/normalized_return"][index]))
    study = studies[0]
    for dataset, (level, rule) in failure_levels(study, runs, normalization).items():
        for run in runs:
            if run.dataset == dataset:
                score_failure(run, level, study.mode)
                run.failure_rule = rule
    if len(studies) > 1:
        study = copy.copy(study)
        study.name, study.description = " + ".join(s.name for s in studies), "; ".join(
            f"{s.name}: {s.description}" for s in studies if s.description)
    return study, runs


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan


def _episodes(frame, key: str | None, index) -> np.ndarray:
    """The last list of `key` in the rows `index`, where all its values are finite numbers; else empty."""
    if key is None or key not in frame:
        return np.empty(0)
    for value in reversed(frame[key][index].tolist()):
        if isinstance(value, list):
            values = np.array([_number(v) for v in value], dtype=np.float64)
            return values if len(values) and np.isfinite(values).all() else np.empty(0)
    return np.empty(0)


def _column(frame, key: str) -> np.ndarray:
    """A numeric column as float64 (nan where missing or not a number)."""
    import pandas as pd
    if key not in frame:
        return pd.Series(math.nan, index=frame.index).to_numpy()
    return pd.to_numeric(frame[key].map(_number), errors="coerce").to_numpy(dtype=np.float64)
