"""Speed of the dataset layer: `[P, B]` minibatches sampled per second from a TransitionBuffer.

Run through `python launch.py bench buffer`; a measurement, not a test.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .buffer import TransitionBuffer


def calls_per_second(run: Callable[[int], None], chunk: int, seconds: float, warmup: int) -> float:
    """Calls per second of the work `run(n)` does n times (it must wait for the device before returning):
    `warmup` calls first, then chunks of `chunk` calls until `seconds` have passed (at least one chunk)."""
    run(warmup)
    count, started = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - started < seconds:
        run(chunk)
        count += chunk
    return count / (time.perf_counter() - started)


def minibatches_per_second(device: str = "cpu", members: int = 1, batch_size: int = 256, transitions: int = 1_000_000,
                           obs_dim: int = 17, act_dim: int = 6, seconds: float = 2.0) -> float:
    """Sample (and touch every field of) minibatches from a HalfCheetah-sized buffer for ~`seconds`."""
    rng = np.random.default_rng(0)
    buffer = TransitionBuffer(transitions, obs_dim, act_dim, device)
    obs = rng.standard_normal((transitions, obs_dim), dtype=np.float32)
    buffer.add(obs, rng.uniform(-1, 1, (transitions, act_dim)).astype(np.float32),
               rng.standard_normal(transitions, dtype=np.float32), obs, np.zeros(transitions), np.zeros(transitions))
    generator = torch.Generator(device=buffer.device).manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            batch = buffer.sample(batch_size, members, generator)
        batch.observations.sum().item()  # wait for the device before stopping the clock

    return calls_per_second(run, chunk=100, seconds=seconds, warmup=20)
