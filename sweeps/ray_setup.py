"""Ray for a sweep's driver: joining a running cluster (shipping this code to its workers) or starting an embedded
local Ray, where Ray's and Tune's own console output goes while a sweep runs quietly, and SIGTERM (what a cluster
scheduler sends) handled as SIGINT, so that Tune saves its state and the sweep can be resumed.
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import signal
from pathlib import Path
from typing import Callable

import ray

from .folder import experiment_dir
from .study import Study


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = True) -> None:
    """Join `address` (or RAY_ADDRESS), shipping this code to the workers; else start an embedded local Ray.
    The workers' output reaches this console only when `verbose` on a cluster (never from the embedded Ray:
    a trial's failure is in its error.txt and said in one progress line)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(stage_package())]}, log_to_driver=verbose)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def stage_package() -> Path:
    """This code as one importable `offline_sweeps/` folder, for Ray's runtime_env `py_modules`.

    The repository keeps datasets/, algorithms/ and sweeps/ at its top and installs them as
    `offline_sweeps.*`; a plain working_dir upload would not import under that name. A folder in
    py_modules is zipped, sent once to every node and put on the workers' path, with no pip run there
    (a wheel would be pip-installed with all its dependencies on every node): the nodes' own environment
    provides torch, Ray and the rest.
    """
    import shutil
    import tempfile
    root = Path(__file__).resolve().parents[1]
    package = Path(tempfile.mkdtemp(prefix="offline-sweeps-code-")) / "offline_sweeps"
    for name in ("datasets", "algorithms", "sweeps"):
        shutil.copytree(root / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return package


@contextlib.contextmanager
def ray_messages_to(log_file: Path | None):
    """Ray's start-up notes (token authentication, the local instance), Tune's warnings and its experiment
    banner go to `log_file` instead of the console; None leaves them on the console. The driver's "ray" logger
    gets the file as its one handler (ray.init keeps a logger's handlers, setting only their format), stray
    writes to sys.stderr go there too, and Tune's banner and TensorBoard hint, its "new output", are off
    (RAY_AIR_NEW_OUTPUT=0: its old reporter at verbose 0 prints nothing)."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray")
    handlers = logger.handlers[:]
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    with contextlib.closing(_SparingLog(log_file)) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(filename)s:%(lineno)d -- %(message)s"))
        logger.handlers[:] = [handler]
        try:
            with contextlib.redirect_stderr(stream):
                yield
        finally:
            logger.handlers[:] = handlers
            if previous is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = previous


class _SparingLog(io.TextIOBase):
    """Ray's log file, whose writes never stop the sweep: on a full disk a message is lost, not the sweep (the
    close that flushed the last buffered line used to raise ENOSPC out of a sweep that had ended)."""

    def __init__(self, path: Path):
        try:
            self._file = open(path, "a", buffering=1)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            self._file = open(os.devnull, "w")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):       # ValueError: already closed
            pass

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        super().close()


@contextlib.contextmanager
def sigterm_as_sigint():
    """While Tune runs, SIGTERM (what a cluster scheduler sends) is SIGINT: Tune stops the trials, saves the
    experiment state and `fit` returns, so the driver prints the resume hint and exits 3. (Without this, Ray's
    own SIGTERM handler aborts the driver with no message.) A second signal makes Tune stop at once."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum, frame):
        signal.raise_signal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_cluster_storage(study: Study, log: Callable[[str], None]) -> None:
    """On a multi-node cluster every node writes checkpoints to the storage path: a local path works only
    when it is shared (NFS) and mounted at the same place everywhere, which no check here can see."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in study.storage:
        log(f"Note: storage {experiment_dir(study)} is a local path and the cluster has {len(nodes)} nodes; it "
            f"must be shared storage mounted at that path on every node (NFS), else set storage: s3://... or gs://...")
