"""kl_vs_support.yaml's report on a small real run (tiny nets and budgets, Pendulum data, embedded Ray):
one panel per algorithm, each with its own knob and direction."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.plots import _panels
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.run import run_study
from offline_sweeps.sweeps.study_yaml import parse_study
from offline_sweeps.sweeps.summary import summarize

pytestmark = pytest.mark.slow
SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def test_kl_vs_support_report_has_one_panel_per_algorithm_and_knob(pendulum_datasets, tmp_path, local_ray):
    values = yaml.safe_load((SWEEPS / "kl_vs_support.yaml").read_text())
    values.pop("build")
    tiny = {"eval_every": 10, "eval_episodes": 2, "total_updates": 20, "reward_scale": 0.1,
            "algo": {"hidden": [16, 16], "batch_size": 32, "behavior_pretrain_steps": 5, "warm_start_updates": 0}}
    values.update(datasets=[pendulum_datasets["medium"]], seeds=[0, 1], storage=str(tmp_path), resources={"cpu": 1},
                  wandb={"enabled": False})
    values["parts"][0].update(train={**tiny, "algo": {**tiny["algo"], "critic_hidden": [16, 16]}},
                              search={"kl_weight": {"grid": [0.01, 0.1, 1.0]}})
    values["parts"][1].update(train=tiny, search={"mmd_threshold": {"grid": [0.02, 0.2]}})
    study = parse_study(values)
    assert run_study(study, log=lambda _: None).num_errors == 0
    folder = experiment_dir(study)
    _, runs = collect(folder)
    assert len(runs) == (3 + 2) * 2
    panels = _panels(summarize(study, runs))
    assert sorted(panels) == [("bear", "mmd_threshold"), ("brac", "kl_weight")]
    assert sorted(x for x, _ in next(iter(panels[("brac", "kl_weight")].values()))) == [0.01, 0.1, 1.0]
    paths = write_report(folder)
    assert paths["plot"].stat().st_size > 10_000 and paths["curves"].stat().st_size > 10_000
    markdown = paths["markdown"].read_text()
    assert "| brac |" in markdown and "| bear |" in markdown and "## Winners" in markdown
