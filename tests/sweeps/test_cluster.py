"""A study on a multi-node Ray cluster, simulated on this machine with `ray.cluster_utils.Cluster`."""
from __future__ import annotations

import pytest

from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.run import run_study

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head that runs no trials (0 CPUs) and two 1-CPU worker nodes, each with one `sweeper` slot."""
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={"sweeper": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_trials_are_placed_on_worker_nodes_and_the_study_completes(pendulum_datasets, tmp_path, cluster,
                                                                   tiny_study):
    cluster, workers = cluster
    _, study = tiny_study("on-cluster", pendulum_datasets["medium"], tmp_path / "results",
                          resources={"cpu": 1, "custom": {"sweeper": 1}}, train={"total_updates": 200})
    notes = []
    results = run_study(study, address=cluster.address, use_wandb=False, log=notes.append)
    assert results.num_errors == 0 and len(results) == 4
    nodes = {result.metrics["node_id"] for result in results}
    assert nodes <= {worker.node_id for worker in workers}       # the head never runs a trial
    # Four trials of several seconds each, two slots: the second worker's actor is up well before the
    # first worker could have run them all (Tune reuses actors, so a slow start could leave it idle).
    assert len(nodes) == 2
    assert any("shared storage" in note for note in notes)       # a local storage path is flagged
    _, runs = collect(experiment_dir(study))
    assert len(runs) == 4 and all(run.iterations == 10 for run in runs)

    import ray

    @ray.remote(num_cpus=1)
    def code_location() -> str:
        import offline_sweeps.sweeps.run
        return offline_sweeps.sweeps.run.__file__
    assert "runtime_resources" in ray.get(code_location.remote())   # the workers run the shipped copy
