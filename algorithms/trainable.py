"""The Ray Tune Trainable every algorithm runs as: a thin shell around `TrainRun`.

Only `ray.tune.*` is used here (Ray 2.60 runs Tune trials outside Train V2). Checkpoints are one
`state.pt`, loaded with `weights_only=True`, so nothing in a checkpoint can execute code.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ray import tune

from .trainer import TrainConfig, TrainRun

CHECKPOINT_FILE = "state.pt"
GATE_ENV = "OFFLINE_SWEEPS_TEST_GATE"


class OfflineTrainable(tune.Trainable):
    """One Tune trial: a population of P packed members of one algorithm on one dataset.

    `config` holds TrainConfig's fields (algorithm, dataset, algo, members, eval_every, ...). Each
    `step()` is `eval_every` updates and one evaluation; the result is flat, with `member_k/...` keys
    for packed populations.
    """

    def setup(self, config: dict) -> None:
        self.run = TrainRun(TrainConfig.from_dict(dict(config)))

    def step(self) -> dict:
        wait_at_gate(self.iteration)
        return self.run.train_iteration()

    def save_checkpoint(self, checkpoint_dir: str) -> str:
        self.run.save(Path(checkpoint_dir) / CHECKPOINT_FILE)
        return checkpoint_dir

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.run.load(Path(checkpoint_dir) / CHECKPOINT_FILE)

    def reset_config(self, new_config: dict) -> bool:
        """Lets Tune reuse this actor for the next trial (reuse_actors) instead of starting a process."""
        self.setup(new_config)
        return True


def wait_at_gate(reported: int) -> None:
    """A hook for fault tests, inert unless $OFFLINE_SWEEPS_TEST_GATE names a folder: while
    `<gate>/hold-<n>` exists, a trial that has reported n results waits before its next iteration.

    A test can then kill the trial, or its driver, at a known iteration however slow the machine is,
    instead of racing it. By then Tune has logged result n and saved (and registered) the checkpoint
    due at n: the next `train` is scheduled only after both. Checked once per iteration.
    """
    gate = os.environ.get(GATE_ENV)
    if gate:
        hold = Path(gate) / f"hold-{reported}"
        while hold.exists():
            time.sleep(0.05)
