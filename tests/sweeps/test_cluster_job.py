"""README's cluster path as a user runs it: a head and two worker nodes each started with `ray start` (its own
process tree), a study submitted with `ray job submit --working-dir . -- python launch.py sweep ... --address
auto`, then `launch.py report` and `export` on the results.

It checks trial placement (every trial on a worker node, both workers used, the head never), the job API
(ray[default]), the working-dir and py_modules uploads, token authentication, `--address auto` inside a submitted
job, and the job's `python` resolved on the head. (An earlier test of placement alone, with `ray.cluster_utils`
inside pytest, checked nothing this one does not, in another 75 s of the suite.)

Nothing is shared with another Ray instance on the machine: every port is picked free, each node has its own
`--temp-dir`, the nodes and the submitting CLI read a token this test writes (RAY_AUTH_TOKEN_PATH; ~/.ray is
neither read nor written), and the test stops only the processes its `ray start` commands started, by pid (never
`ray stop`, which stops every Ray on the machine). On Linux Ray replaces a loopback node address with the
machine's own, so a multi-node `ray start` cluster cannot be loopback-only; the token keeps others out.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from offline_sweeps.datasets import BuildConfig, build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent          # this environment's `ray` CLI, and the `python` a job's entrypoint runs
WORKERS = 2
# Every port a node opens besides the head's GCS, dashboard and client server (workers' ports come from Ray's range).
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                   "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now on every interface (Ray's GCS and raylets listen on all)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def process_tree(root: int) -> dict[int, int]:
    """{pid: start time} of `root` and every process below it now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if (stat := proc_stat(pid)) is not None:
            tree[pid] = stat[1]
            todo.extend(children.get(pid, []))
    return tree


def alive(pid: int, started: int) -> bool:
    """Still the same process: a reused pid has another start time."""
    stat = proc_stat(pid)
    return stat is not None and stat[1] == started


class LocalCluster:
    """A head with no CPUs and worker nodes with one CPU and one `sweeper` slot each, every node a
    `ray start --block` in its own session, so that stopping it leaves other Ray instances alone."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.nodes = root, env, []
        # All picked at once, so that no two of them coincide.
        self.ports = iter(free_ports(3 + len(NODE_PORT_FLAGS) * (1 + WORKERS)))
        self.gcs_port, self.dashboard_port, self.client_port = next(self.ports), next(self.ports), next(self.ports)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        command = [str(BIN / "ray"), "start", "--block", "--temp-dir", str(self.root / name), "--disable-usage-stats",
                   "--object-store-memory", str(100 * 2**20), *args]
        command += [arg for flag in NODE_PORT_FLAGS for arg in (flag, str(next(self.ports)))]
        self.nodes.append((name, subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)))
        log.close()

    def start(self) -> None:
        self.start_node("head", ["--head", "--num-cpus", "0", "--port", str(self.gcs_port),
                                 "--dashboard-port", str(self.dashboard_port),
                                 "--ray-client-server-port", str(self.client_port)])
        for index in range(WORKERS):
            self.start_node(f"worker{index}", ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", "1",
                                               "--resources", json.dumps({"sweeper": 1})])

    def list_nodes(self) -> list[dict]:
        listed = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", self.dashboard, "--format", "json"],
                                env=self.env, capture_output=True, text=True, timeout=60)
        try:        # before the head is up it fails; with no node up yet it prints "No resource in the cluster"
            return json.loads(listed.stdout) if listed.returncode == 0 else []
        except json.JSONDecodeError:
            return []

    def wait_for_nodes(self, timeout: float = 180.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.nodes:
                assert process.poll() is None, f"{name} exited: {self.log_tail(name)}"
            nodes = [node for node in self.list_nodes() if node["state"] == "ALIVE"]
            if len(nodes) == 1 + WORKERS:
                return nodes
            assert time.monotonic() < deadline, f"{len(nodes)} of {1 + WORKERS} nodes up after {timeout:.0f} s"
            time.sleep(2)

    def log_tail(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node's processes), then SIGKILL whatever of the trees
        seen just before is still running: the job's driver runs in a session of its own."""
        trees = {pid: started for _, process in self.nodes for pid, started in process_tree(process.pid).items()}
        for _, process in reversed(self.nodes):         # the workers first, so none retries a vanished head
            process.send_signal(signal.SIGTERM)
        for _, process in self.nodes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid, started) for pid, started in trees.items()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid, started in trees.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ray_cluster(tmp_path):
    """The running cluster and its live nodes (`ray list nodes`); `cluster.env` is what every node's `ray start`
    and the submitting machine set: token authentication with this test's token, this environment's `python`."""
    # A short private root: Ray's socket paths under a node's --temp-dir must stay within the 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    cluster = LocalCluster(root, env)
    try:
        cluster.start()
        yield cluster, cluster.wait_for_nodes()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_study_submitted_as_a_job_runs_on_the_worker_nodes_and_reports(tmp_path, minari_root, ray_cluster):
    cluster, nodes = ray_cluster
    built = build(BuildConfig("Pendulum-v1", kinds=("random",), expert="scripted", transitions=2000, ref_episodes=4),
                  log=lambda _: None)
    dataset = str(minari_root / built[0].dataset_id)
    shared = tmp_path / "shared"                     # "a folder every node sees": here, the same path
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "on-cluster", "algorithm": "iql", "datasets": [dataset], "seeds": [0, 1],
        "search": {"expectile": {"grid": [0.6, 0.9]}},
        "train": {"eval_every": 100, "eval_episodes": 2, "total_updates": 300, "reward_scale": 0.1,
                  "algo": {"hidden": [16, 16], "batch_size": 32}},
        "resources": {"cpu": 1, "custom": {"sweeper": 1}}, "storage": str(shared), "wandb": {"enabled": False}}))
    # README's command, from the repository root.
    submit = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".", "--",
              "python", "launch.py", "sweep", str(study), "--address", "auto"]

    # README: the submitting machine sets RAY_AUTH_MODE=token; a token file alone does not send the token.
    unauthenticated = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_MODE"}
    refused = subprocess.run(submit, cwd=REPO, env=unauthenticated, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "RAY_AUTH_MODE" in refused.stdout + refused.stderr
    assert not shared.exists()

    job = subprocess.run(submit, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-6000:]
    assert "4 finished, 0 failed, 0 unfinished" in output
    assert "must be shared storage mounted at that path on every node" in output   # a local path is flagged

    head = {node["node_id"] for node in nodes if node["is_head_node"]}
    workers = {node["node_id"] for node in nodes} - head
    folder = shared / "on-cluster"
    trials = sorted(path.parent for path in folder.glob("*/result.json"))
    assert len(trials) == 4
    placed = {json.loads(line)["node_id"] for trial in trials
              for line in (trial / "result.json").read_text().splitlines()}
    # Every trial on a worker (the head has no CPUs); both used: Tune starts two trials at once, one per `sweeper`.
    assert placed == workers
    # The code reached each worker by upload: the job's working dir and the package init_ray ships as py_modules.
    for index in range(WORKERS):
        resources = cluster.root / f"worker{index}" / "session_latest" / "runtime_resources"
        assert list(resources.glob("working_dir_files/*/launch.py"))
        assert list(resources.glob("py_modules_files/*/offline_sweeps/sweeps/run.py"))

    # `report` and `export` read the results anew: drop what the sweep wrote at its end first.
    shutil.rmtree(folder / "report")
    shutil.rmtree(folder / "best")
    for command in (["report", str(folder), "--no-wandb"], ["export", str(folder)]):
        done = subprocess.run([sys.executable, str(REPO / "launch.py"), *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    with open(folder / "report" / "report.csv") as table:
        rows = list(csv.DictReader(table))
    assert sorted(float(row["expectile"]) for row in rows) == [0.6, 0.9]
    assert all(row["seeds"] == row["finished"] == "2" for row in rows)
    best = list((folder / "best").glob("*.yaml"))
    assert len(best) == 1 and yaml.safe_load(best[0].read_text())["algo"]["expectile"] in (0.6, 0.9)
