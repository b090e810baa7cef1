"""The plan a sweep prints first, its resource check, the sweep's ETA, and the console's W&B run names."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from offline_sweeps.sweeps import plan as plans
from offline_sweeps.sweeps.run import ProgressLines
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study
from offline_sweeps.sweeps.wandb_logging import member_run_name


def study_of(tmp_path, **overrides):
    values = {"name": "p", "algorithm": "iql", "datasets": ["pendulum/medium-v0"], "seeds": [0, 1], "pack": ["seed"],
              "search": {"expectile": {"grid": [0.6, 0.9]}}, "storage": str(tmp_path),
              "train": {"eval_every": 20, "total_updates": 60, "algo": {"hidden": [16, 16], "batch_size": 32}},
              "resources": {"cpu": 1}, **overrides}
    return parse_study(values)


def test_the_plan_counts_trials_members_updates_and_says_what_it_builds(tmp_path, minari_root):
    study = study_of(tmp_path, build={"env": "Pendulum-v1", "transitions": 10000})
    plan = plans.make_plan(study, tmp_path / "p", num_cpus=2)
    assert (plan.trial_count, plan.members, plan.member_updates, plan.iterations) == (2, 4, 240, [3, 3])
    assert plan.algorithms == [trial["algorithm"] for trial in plan.trials] and len(plan.algorithms) == 2
    assert plan.slots == 2 and plan.problem is None and plan.seconds is None      # no estimate unless asked
    lines = plans.format_plan(plan, "LOG")
    assert lines[0].startswith("Study p: 2 trial(s), 4 member run(s) (iql; axes expectile; packed seed)")
    assert "  budget: 240 member-updates in 6 iteration(s)" in lines
    assert "  per trial: 1 CPU; 2 trial(s) at a time on the local Ray (2 CPU, " in "\n".join(lines)
    assert "  dataset pendulum/medium-v0: missing: built first from Pendulum-v1 (10,000 transitions)" in lines
    assert lines[-1] == "  Ray's own messages go to LOG (--verbose shows them here)"
    assert not any(minari_root.iterdir())                                       # nothing was built


def test_the_estimate_comes_from_updates_timed_here_within_two_seconds(tmp_path, minari_root):
    import time

    import torch._dynamo  # noqa: F401     # torch's first optimizer imports it (2-4 s, once per process)
    study = study_of(tmp_path)
    started = time.perf_counter()
    plan = plans.make_plan(study, tmp_path / "p", num_cpus=2, estimate=True)
    assert time.perf_counter() - started < 2.0
    assert list(plan.rates) == ["iql x2"] and plan.rates["iql x2"] > 0
    one_trial = 2 * 60 / plan.rates["iql x2"] + plans.TRIAL_START_SECONDS
    assert plan.seconds == pytest.approx(plans.RAY_START_SECONDS + one_trial)          # two trials, two slots
    assert "estimate: about" in "\n".join(plans.format_plan(plan))


def test_problem_dims_read_a_local_datasets_metadata(tmp_path, minari_root):
    data = minari_root / "toy" / "medium-v0" / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text(json.dumps({
        "observation_space": json.dumps({"type": "Box", "shape": [5]}),
        "action_space": json.dumps({"type": "Box", "shape": [2]})}))
    assert plans.problem_dims("toy/medium-v0", study_of(tmp_path)) == (5, 2)
    assert plans.problem_dims("nowhere/x-v0", study_of(tmp_path)) == plans.DEFAULT_DIMS


@pytest.mark.parametrize("resources, available, local, needles", [
    ({"cpu": 1, "gpu": 0.25}, {"cpu": 2, "gpu": 0}, True,
     ["resources.gpu: the study asks for 0.25 GPU per trial and this machine has no GPU",
      "override resources.gpu=0", "--address"]),
    ({"cpu": 1, "custom": {"h100": 1}}, {"cpu": 2, "gpu": 0}, False,
     ["resources.custom.h100", "the Ray cluster has none", "resources.custom={}"]),
    ({"cpu": 4}, {"cpu": 2, "gpu": 0}, True, ["resources.cpu: the study asks for 4 CPUs", "resources.cpu=2",
                                               "--num-cpus"]),
])
def test_resources_this_ray_lacks_are_one_line_naming_the_fix(tmp_path, resources, available, local, needles):
    study = study_of(tmp_path, resources=resources)
    with pytest.raises(StudyError) as refused:
        plans.check_resources(study, available, local)
    message = str(refused.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    plans.check_resources(study_of(tmp_path, resources={"cpu": 1, "gpu": 0}), available, local)


def test_a_gpu_plan_here_says_it_cannot_run_and_estimates_nothing(tmp_path, minari_root, monkeypatch):
    monkeypatch.setattr(plans, "local_resources", lambda num_cpus=None: {"cpu": 2, "gpu": 0})
    plan = plans.make_plan(study_of(tmp_path, resources={"cpu": 1, "gpu": 1}), tmp_path / "p", estimate=True)
    assert plan.problem.startswith("resources.gpu:") and plan.seconds is None and plan.slots == 0
    text = "\n".join(plans.format_plan(plan, "LOG"))
    assert "none fits on the local Ray" in text and "cannot run here: resources.gpu" in text and "LOG" not in text


def test_the_sweep_clock_spreads_what_is_left_over_the_trials_seen_running(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(plans.time, "monotonic", lambda: now[0])
    clock = plans.SweepClock([("iql", 4)] * 3)
    clock.started("a"), clock.started("b")
    assert clock.seconds_left([("iql", 4), ("iql", 4)], unseen=1, running=2) is None    # nothing timed yet
    now[0] = 10.0
    clock.result("a", "iql"), clock.result("b", "iql")                       # 10 s per iteration
    # left: 3 + 3 iterations of the running two, 4 of the one not made yet, two at a time: 5 x 10 s
    assert clock.seconds_left([("iql", 3), ("iql", 3)], unseen=1, running=2) == pytest.approx(50.0)
    # one long trial left alone cannot be spread: its own 6 iterations
    assert clock.seconds_left([("iql", 6), ("iql", 0)], unseen=0, running=1) == pytest.approx(60.0)
    assert clock.untimed == []
    assert plans.duration(50) == "50 s" and plans.duration(125) == "2m05s" and plans.duration(7380) == "2h03m"


def test_the_sweep_clock_times_each_algorithm_apart_and_names_those_not_timed_yet(monkeypatch):
    """One study's algorithms differ twentyfold in an iteration's time: the reproduction study on 2 CPUs said
    "about 5m left" after its BC trials, for a run of an hour. Each algorithm keeps its own pace; one not timed
    yet counts at the slowest pace seen and is named."""
    now = [0.0]
    monkeypatch.setattr(plans.time, "monotonic", lambda: now[0])
    clock = plans.SweepClock([("bc", 4), ("bc", 4), ("cql", 4), ("iql", 4)])
    clock.started("bc0"), clock.started("bc1")
    now[0] = 2.0
    clock.result("bc0", "bc"), clock.result("bc1", "bc")                     # bc: 2 s an iteration
    left = clock.seconds_left([("bc", 3), ("bc", 3)], unseen=2, running=2)
    assert left == pytest.approx((6 + 8) * 2.0 / 2) and clock.untimed == ["cql", "iql"]
    clock.started("cql0")
    now[0] = 42.0
    clock.result("cql0", "cql")                                              # cql: 40 s an iteration
    # bc's 6 left at 2 s, cql's 2 at 40 s, iql (not made yet, untimed) at cql's pace: 4 x 40 s; two at a time
    # that is (12 + 80 + 160) / 2 = 126 s, but iql's one trial alone takes 160 s
    left = clock.seconds_left([("bc", 3), ("bc", 3), ("cql", 2)], unseen=1, running=2)
    assert left == pytest.approx(160.0) and clock.untimed == ["iql"]
    left = clock.seconds_left([("bc", 30), ("bc", 30), ("cql", 2)], unseen=0, running=2)
    assert left == pytest.approx((120 + 80) / 2) and clock.untimed == []
    # a single slow trial left bounds it from below: cql's 3 iterations, alone
    assert clock.seconds_left([("bc", 0), ("bc", 1), ("cql", 3)], unseen=0, running=2) == pytest.approx(120.0)
    assert clock.untimed == []


def test_progress_lines_end_with_the_time_left_for_the_sweep(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(plans.time, "monotonic", lambda: now[0])
    trials = [{"trial": t} for t in study_of(tmp_path).trials()]
    first, second = (SimpleNamespace(trial_id=f"t{k}", config=config, status="RUNNING", last_result={})
                     for k, config in enumerate(trials))
    lines = []
    progress = ProgressLines("eval/normalized_return", lines.append, planned=[("iql", 3), ("iql", 3)])
    progress.on_trial_start(0, [first, second], first)
    progress.on_trial_start(0, [first, second], second)
    now[0] = 8.0
    result = {"training_iteration": 1, "eval/normalized_return": 1.0, "updates_per_second": 5.0}
    progress.on_trial_result(1, [first, second], first, result)
    # 2 + 3 iterations left, two trials at a time, but the second's three run one after another: 3 x 8 s
    assert lines[-1].endswith("(0/2 trials done, about 24 s left)")
    assert "\r" not in lines[-1]
    # a third trial planned, of an algorithm not timed yet: counted at iql's pace, and named
    progress = ProgressLines("eval/normalized_return", lines.append, planned=[("iql", 3), ("iql", 3), ("cql", 3)])
    progress.on_trial_start(0, [first, second], first)
    now[0] = 16.0
    progress.on_trial_result(1, [first, second], first, result)
    assert lines[-1].endswith("(0/3 trials done, about 32 s left; cql not timed yet)")


def test_a_trial_counts_as_done_from_its_last_result_before_tune_marks_it(tmp_path):
    """Tune sets TERMINATED after the callbacks of a trial's last result: the other trial's last result, arriving
    meanwhile, must still read "2/2 done" (the e2e sweep saw "(1/2 trials done, about 0 s left)")."""
    trials = [{"trial": t} for t in study_of(tmp_path).trials()]
    first, second = (SimpleNamespace(trial_id=f"t{k}", config=config, status="RUNNING", last_result={})
                     for k, config in enumerate(trials))
    lines = []
    progress = ProgressLines("eval/normalized_return", lines.append, planned=[("iql", 3), ("iql", 3)])
    for trial in (first, second):
        progress.on_trial_start(0, [first, second], trial)
    for iteration in (1, 2, 3):
        for trial in (first, second):
            progress.on_trial_result(iteration, [first, second], trial,
                                     {"training_iteration": iteration, "eval/normalized_return": 1.0})
    assert lines[-2].endswith("(1/2 trials done, about 0 s left)") and lines[-1].endswith("(2/2 trials done)")


def test_wandb_run_names_carry_the_algorithm_the_knobs_and_the_seed(tmp_path):
    packed, unpacked = study_of(tmp_path).trials()[1], study_of(tmp_path, pack=[]).trials()[1]
    assert [member_run_name(packed, m) for m in packed["members"]] == ["iql expectile=0.9 seed=0",
                                                                       "iql expectile=0.9 seed=1"]
    assert member_run_name(unpacked, unpacked["members"][0]) == "iql expectile=0.6 seed=1"
    two_axes = study_of(tmp_path, search={"expectile": {"grid": [0.7]}, "train.reward_scale": {"grid": [0.1]}},
                        pack=["seed", "expectile"]).trials()[0]
    assert member_run_name(two_axes, two_axes["members"][1]) == "iql reward_scale=0.1 expectile=0.7 seed=1"
