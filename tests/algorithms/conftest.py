"""Fixtures shared by the algorithm tests (test modules cannot import each other under --import-mode=importlib)."""
from __future__ import annotations

import numpy as np
import pytest

from offline_sweeps.datasets import TransitionBuffer


@pytest.fixture
def toy_buffer():
    """A factory of n transitions with 3-d observations and 2-d actions in [-2, 2] that follow the state (plus a
    little noise), 10% of them terminal."""
    def make(n: int = 200, obs_dim: int = 3, act_dim: int = 2) -> TransitionBuffer:
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
        actions = np.clip(2 * np.tanh(obs[:, :act_dim]) + 0.2 * rng.standard_normal((n, act_dim)), -2, 2)
        buffer = TransitionBuffer(n, obs_dim, act_dim)
        buffer.add(obs, actions, rng.standard_normal(n), np.roll(obs, 1, 0), rng.random(n) < 0.1, np.zeros(n))
        return buffer
    return make
