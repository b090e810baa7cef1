"""The online agent the dataset builder trains for medium and expert data, as an interface the layer above fills.

datasets/ imports nothing from algorithms/: `build` is handed an `AgentFactory`, and algorithms/ implements one
(`offline_sweeps.algorithms.online_sac.OnlineSAC`, on the SAC learner), which `launch.py dataset make` and a
study's `build:` pass in. Observations and actions are numpy arrays, `[N, obs_dim]` in and `[N, act_dim]` out.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .buffer import TransitionBuffer


class BehaviourPolicy(Protocol):
    def act(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        """Actions `[N, act_dim]` for observations `[N, obs_dim]`: sampled, or the policy's deterministic one."""


class OnlineAgent(BehaviourPolicy, Protocol):
    def update(self, replay: TransitionBuffer) -> None:
        """One gradient step on a minibatch the agent draws from `replay`."""

    def frozen(self) -> BehaviourPolicy:
        """The policy as it is now, untouched by later updates: a snapshot that collects medium or expert data."""


class AgentFactory(Protocol):
    def __call__(self, *, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray, seed: int,
                 hidden: tuple[int, ...], batch_size: int) -> OnlineAgent:
        """A fresh agent for an env of these sizes and action bounds, seeded, with `hidden` layer widths, that
        updates on minibatches of `batch_size` transitions."""
