"""Issue 15 item 8 (algorithms side): a malformed dynamics-cache report is a miss, a diverged member's train
metrics are NaN, and a batch_size no dataset can fill is refused before training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.dynamics import load_or_train
from offline_sweeps.algorithms.iql import IQLConfig
from offline_sweeps.algorithms.trainer import TrainConfig, TrainRun

from .test_dynamics import TINY, linear_dataset


@pytest.mark.parametrize("content", ['{"report": "not a mapping"}', '[1, 2]', '{"format": 1}', "{truncated"])
def test_a_malformed_cache_report_is_a_miss_and_rebuilt_in_place(tmp_path, content):
    data = linear_dataset(n=600)
    entry = Path(load_or_train(data, TINY, tmp_path).report["path"])
    (entry / "report.json").write_text(content)
    again = load_or_train(data, TINY, tmp_path)
    assert again.report["cached"] is False and Path(again.report["path"]) == entry
    assert isinstance(json.loads((entry / "report.json").read_text())["report"], dict)
    assert load_or_train(data, TINY, tmp_path).report["cached"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary or retired entry left


def test_diverged_members_train_metrics_are_nan(pendulum_datasets):
    config = TrainConfig(algorithm="iql", dataset=pendulum_datasets["medium"],
                         algo={"hidden": (16, 16), "batch_size": 32}, members=[{"seed": 0}, {"seed": 1}],
                         eval_every=5, eval_episodes=1, threads=1)
    run = TrainRun(config)
    update = run.learner.update

    def blow_up_member_1(batch):
        metrics = update(batch)
        return {k: torch.stack([v[0], v[1] * 0 - 6.5e9]) for k, v in metrics.items()}
    run.learner.update = blow_up_member_1
    metrics = run.train_iteration()
    assert metrics["members_diverged"] == 1
    train_keys = [k[len("member_1/"):] for k in metrics if k.startswith("member_1/train/")]
    assert train_keys
    for key in train_keys:
        assert np.isnan(metrics[f"member_1/{key}"]), key
        assert np.isfinite(metrics[f"member_0/{key}"]), key
        assert metrics[key] == metrics[f"member_0/{key}"]          # the survivors' mean leaves the -6.5e9 out
    assert metrics["member_1/diverged"] == 1.0


@pytest.mark.parametrize("batch_size", [1e9, 10 ** 9, 0, True, "256"])
def test_absurd_batch_sizes_are_refused_by_the_config(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        IQLConfig(batch_size=batch_size)


def test_a_batch_larger_than_the_dataset_is_refused_before_training(pendulum_datasets):
    config = TrainConfig(algorithm="bc", dataset=pendulum_datasets["medium"],
                         algo={"hidden": (16, 16), "batch_size": 500_000}, eval_every=5, eval_episodes=1, threads=1)
    with pytest.raises(ConfigError, match=r"batch_size=500000 is more than .*10\d\d\d transitions"):
        TrainRun(config)
