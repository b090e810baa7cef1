"""Member-updates per second of every algorithm at P = 1 and P = 8, default nets (256x256, batch 256).

Run through `python launch.py bench algorithms`; a measurement, not a test. Compare it with
`../shared/bench/plain_torch_reference.py` run in the same minute (ratios, not absolute figures).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..datasets.buffer import TransitionBuffer
from . import ALGORITHMS

PROBLEMS = {"hopper": (11, 3), "halfcheetah": (17, 6)}


def synthetic_buffer(obs_dim: int, act_dim: int, device: str, transitions: int = 100_000) -> TransitionBuffer:
    rng = np.random.default_rng(0)
    buffer = TransitionBuffer(transitions, obs_dim, act_dim, device)
    obs = rng.standard_normal((transitions, obs_dim), dtype=np.float32)
    buffer.add(obs, rng.uniform(-1, 1, (transitions, act_dim)).astype(np.float32),
               rng.standard_normal(transitions, dtype=np.float32), np.roll(obs, -1, 0),
               np.zeros(transitions), np.zeros(transitions))
    return buffer


def updates_per_second(algorithm: str, members: int, obs_dim: int, act_dim: int, device: str = "cpu",
                       seconds: float = 5.0, overrides: dict | None = None) -> float:
    """Population updates per second (multiply by `members` for member-updates)."""
    learner_class = ALGORITHMS[algorithm]
    configs = [learner_class.Config(seed=k, **(overrides or {})) for k in range(members)]
    learner = learner_class(configs, obs_dim, act_dim, -torch.ones(act_dim), torch.ones(act_dim), device)
    buffer = synthetic_buffer(obs_dim, act_dim, device)

    def run(n: int) -> None:
        for _ in range(n):
            metrics = learner.guarded_update(buffer.sample(learner.config.batch_size, members, learner.generators))
        metrics["diverged"].sum().item()      # wait for the device

    run(3)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(5)
        count += 5
    return count / (time.perf_counter() - started)


def report(algorithms=None, members=(1, 8), problems=("hopper", "halfcheetah"), device: str = "cpu",
           seconds: float = 5.0, bf16: bool = False, print_=print) -> dict:
    results = {}
    for name in algorithms or ALGORITHMS:
        overrides = {"bf16_sampled_q": True} if bf16 and name == "cql" else None
        for problem in problems:
            obs_dim, act_dim = PROBLEMS[problem]
            rates = {P: updates_per_second(name, P, obs_dim, act_dim, device, seconds, overrides) for P in members}
            results[(name, problem)] = rates
            cells = "  ".join(f"P={P}: {rate * P:7.1f}" for P, rate in rates.items())
            speedup = rates[members[-1]] * members[-1] / rates[members[0]] / members[0] if len(members) > 1 else 1
            print_(f"{name:<5} {problem:<11} member-updates/s  {cells}   packing x{speedup:4.2f}")
    return results
