"""Issue 15 item 8 (dataset make): names, env counts and tiny transition counts checked before anything is written."""
from __future__ import annotations

import pytest

from offline_sweeps import datasets as ds
from offline_sweeps.datasets.builder import MAX_NUM_ENVS, BuildConfig, build


@pytest.mark.parametrize("name", ["../../escape", "..", ".hidden", "a/b", "", "a b", "x\\y"])
def test_a_name_that_is_not_one_folder_is_refused_before_anything_is_written(minari_root, tmp_path, name):
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ds.DatasetError, match="must be one folder name"):
        build(BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", name=name, transitions=200))
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_too_many_envs_are_refused_at_once():
    with pytest.raises(ds.DatasetError, match=f"num_envs=100000 must be at most {MAX_NUM_ENVS}"):
        BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", num_envs=100_000)


def test_one_transition_writes_one_whole_episode(minari_root):
    built = build(BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", transitions=1, ref_episodes=1),
                  log=lambda _: None)
    assert built[0].transitions == 200 and built[0].episodes == 1       # Pendulum's episodes are 200 steps


def test_medium_data_without_an_online_agent_is_refused_with_one_line_naming_it(minari_root):
    """datasets/ cannot import the SAC learner (tests/test_layers.py): the caller hands the builder its agent."""
    with pytest.raises(ds.DatasetError, match=r"need an online agent.*make_agent=.*OnlineSAC") as refused:
        build(BuildConfig("Pendulum-v1", kinds=("medium",), expert="scripted", medium_return=-900.0, ref_episodes=1),
              log=lambda _: None)
    assert "\n" not in str(refused.value) and ds.local_dataset_ids() == []
