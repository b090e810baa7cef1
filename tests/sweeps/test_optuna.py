"""`searcher: optuna`: Optuna chooses each trial's random axes; the chosen values are what trains, what
the report shows and what the exported config re-runs."""
from __future__ import annotations

import pytest
import yaml

from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.run import run_study
from offline_sweeps.sweeps.train import train_from_file

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow


def test_optuna_samples_expectiles_that_train_and_export(pendulum_datasets, tmp_path, local_ray, tiny_study):
    _, study = tiny_study("optuna", pendulum_datasets["medium"], tmp_path / "results", pack=["seed"],
                          searcher="optuna", num_samples=3, search={"expectile": {"uniform": [0.55, 0.95]}})
    results = run_study(study, use_wandb=False, log=lambda _: None)
    assert results.num_errors == 0 and len(results) == 3
    folder = experiment_dir(study)
    _, runs = collect(folder)
    expectiles = sorted({run.knobs["expectile"] for run in runs})
    assert len(runs) == 6 and len(expectiles) == 3 and all(0.55 <= e <= 0.95 for e in expectiles)
    assert "expectile" in write_report(folder)["markdown"].read_text()

    exported = export_best(folder)[0]
    expectile = yaml.safe_load(exported.read_text())["algo"]["expectile"]
    assert expectile in expectiles
    rerun = train_from_file(exported, tmp_path / "rerun", log=lambda _: None)
    seeds = sorted((r for r in runs if r.knobs["expectile"] == expectile), key=lambda r: r.seed)
    for k, run in enumerate(seeds):                 # the sampled value is what the trial trained with
        assert rerun[f"member_{k}/eval/normalized_return"] == pytest.approx(run.last, abs=1e-3)
