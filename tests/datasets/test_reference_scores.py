"""Issue 23 item 1: MuJoCo datasets built here carry D4RL's reference returns (d4rl infos.py), so their normalized
scores read on the published tables' scale; envs D4RL does not have keep the scores measured here."""
from __future__ import annotations

import pytest

from offline_sweeps import datasets as ds
from offline_sweeps.datasets.builder import BuildConfig, build
from offline_sweeps.datasets.presets import D4RL_REFERENCE_SCORES, PRESETS, d4rl_reference_scores


def test_d4rl_reference_scores_are_the_published_ones():
    assert d4rl_reference_scores("Hopper-v5") == (-20.272305, 3234.3)
    assert d4rl_reference_scores("HalfCheetah-v5") == (-280.178953, 12135.0)
    assert d4rl_reference_scores("Walker2d-v4") == (1.629008, 4592.3)
    assert d4rl_reference_scores("Pendulum-v1") is None
    assert {f"{name}-v5" for name in D4RL_REFERENCE_SCORES} <= set(PRESETS)      # every D4RL robot has targets


def test_auto_picks_d4rl_where_it_has_the_env_and_an_expert_is_then_only_trained_for_expert_data():
    medium = BuildConfig("Walker2d-v5", kinds=("medium", "medium-replay"))
    assert medium.reference_scores == "d4rl" and not medium.needs_expert
    assert medium.medium_return == PRESETS["Walker2d-v5"]["medium_return"]
    assert BuildConfig("HalfCheetah-v5", kinds=("medium", "expert")).needs_expert
    assert BuildConfig("Hopper-v5", kinds=("medium",), reference_scores="measured").needs_expert
    pendulum = BuildConfig("Pendulum-v1", kinds=("medium",))
    assert pendulum.reference_scores == "measured" and pendulum.needs_expert


@pytest.mark.parametrize("kwargs, message", [
    ({"env_id": "Pendulum-v1", "reference_scores": "d4rl"}, "D4RL has no reference scores for Pendulum-v1"),
    ({"env_id": "Hopper-v5", "reference_scores": "paper"}, "reference_scores='paper': choose one of auto, d4rl"),
    ({"env_id": "Ant-v5", "kinds": ("medium",)}, "no medium_return known for Ant-v5"),
])
def test_bad_reference_settings_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ds.DatasetError, match=message):
        BuildConfig(**kwargs)


def test_a_hopper_dataset_is_written_with_d4rls_scores_and_normalizes_on_their_scale(minari_root):
    built = build(BuildConfig("Hopper-v5", kinds=("random",), transitions=50), log=lambda _: None)
    assert (built[0].ref_min_score, built[0].ref_max_score) == (-20.272305, 3234.3)
    data = ds.load("hopper/random-v0", download=False)
    low, high = D4RL_REFERENCE_SCORES["Hopper"]
    assert ds.normalized_score(data, [high])[0] == pytest.approx(100.0)
    assert ds.normalized_score(data, [low + 0.5 * (high - low)])[0] == pytest.approx(50.0)
