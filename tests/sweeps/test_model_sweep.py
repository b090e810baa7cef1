"""A MOPO lambda sweep trains its dynamics ensemble once: the trials after the first load it."""
from __future__ import annotations

from pathlib import Path

import pytest

from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.run import run_study

pytestmark = pytest.mark.slow


def test_lambda_sweep_trains_the_ensemble_once(pendulum_datasets, tmp_path, local_ray, tiny_study):
    settings = dict(
        seeds=[0], search={"penalty": {"grid": [0.0, 1.0]}}, algorithm="mopo",
        train={"model": {"ensemble": 3, "elites": 2, "hidden": [32, 32], "max_epochs": 5},
               "algo": {"hidden": [16, 16], "batch_size": 32, "rollout_batch_size": 64, "rollout_length": 2,
                        "rollout_every": 20}})
    _, study = tiny_study("mopo-lambda", pendulum_datasets["medium"], tmp_path / "results", **settings)
    results = run_study(study, use_wandb=False, log=lambda _: None)
    assert results.num_errors == 0 and len(results) == 2
    # Both trials started together (2 CPUs): one trained the ensemble, the other waited for it and loaded it.
    assert sorted(r.metrics["model/loaded_from_cache"] for r in results) == [0.0, 1.0]
    cache = Path(experiment_dir(study)).parent / "dynamics-cache"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    for result in results:
        assert result.metrics["rollout/penalized_reward_mean"] <= result.metrics["rollout/reward_mean"]

    _, again = tiny_study("mopo-lambda-again", pendulum_datasets["medium"], tmp_path / "results", **settings)
    results = run_study(again, use_wandb=False, log=lambda _: None)
    assert [r.metrics["model/loaded_from_cache"] for r in results] == [1.0, 1.0]   # another study, same model
