"""Member-updates per second of every algorithm at P = 1 and P = 8, default nets (256x256, batch 256).

Run through `python launch.py bench algorithms`; a measurement, not a test. Compare it with
`../shared/bench/plain_torch_reference.py` run in the same minute (ratios, not absolute figures).
`model_based_report` measures what MOPO and COMBO add: the dynamics ensemble's training time, model
rollout steps per second, and updates per second on mixed real and model minibatches. `compile_report` sets the
eager update beside the compiled one (`train.compile`), with the compile time.
"""
from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch

from ..datasets.benchmark import calls_per_second
from ..datasets.buffer import TransitionBuffer
from ..datasets.loading import OfflineDataset
from . import ALGORITHMS
from .base import DataContext
from .compiled import GraphUpdate
from .dynamics import DynamicsConfig, DynamicsEnsemble, train_ensemble

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
    learner, buffer = benchmark_learner(algorithm, members, obs_dim, act_dim, device, overrides)
    return learner_updates_per_second(learner, buffer, seconds)


def benchmark_learner(algorithm: str, members: int, obs_dim: int, act_dim: int, device: str = "cpu",
                      overrides: dict | None = None):
    """A population of `members` seeds on synthetic data (BRAC and BEAR past their behaviour fit), and its buffer."""
    learner_class = ALGORITHMS[algorithm]
    overrides = dict(overrides or {})
    if "behavior_pretrain_steps" in learner_class.Config.__dataclass_fields__:
        overrides.setdefault("behavior_pretrain_steps", 0)     # time BRAC/BEAR's main phase, not the BC warm-up
    configs = [learner_class.Config(seed=k, **overrides) for k in range(members)]
    learner = learner_class(configs, obs_dim, act_dim, -torch.ones(act_dim), torch.ones(act_dim), device)
    if learner_class.USES_MODEL:
        # Rollout refreshes are amortized into the figure, at the config's rollout_every.
        dataset = synthetic_dataset(obs_dim, act_dim)
        buffer = TransitionBuffer.from_dataset(dataset, device)
        ensemble = train_ensemble(dataset, DynamicsConfig(max_epochs=1), device)
        learner.attach_model(ensemble, DataContext(dataset, buffer))
    else:
        buffer = synthetic_buffer(obs_dim, act_dim, device)
    return learner, buffer


def learner_updates_per_second(learner, buffer, seconds: float, chunk: int = 5, warmup: int = 3) -> float:
    """Updates per second of a built learner on minibatches from `buffer` (its own `sample_batch`): `warmup`
    updates, then chunks of `chunk` until `seconds` have passed."""
    def run(n: int) -> None:
        for _ in range(n):
            metrics = learner.guarded_update(learner.sample_batch(buffer))
        metrics["diverged"].sum().item()      # wait for the device

    return calls_per_second(run, chunk=chunk, seconds=seconds, warmup=warmup)


def report(algorithms=None, members=(1, 8), problems=("hopper", "halfcheetah"), device: str = "cpu",
           seconds: float = 5.0, sampled_q_precision: str = "auto", print_=print) -> dict:
    results = {}
    for name in algorithms or [name for name, learner in ALGORITHMS.items() if not learner.USES_MODEL]:
        overrides = {"sampled_q_precision": sampled_q_precision} if name == "cql" else None
        for problem in problems:
            obs_dim, act_dim = PROBLEMS[problem]
            rates = {P: updates_per_second(name, P, obs_dim, act_dim, device, seconds, overrides) for P in members}
            results[(name, problem)] = rates
            cells = "  ".join(f"P={P}: {rate * P:7.1f}" for P, rate in rates.items())
            speedup = rates[members[-1]] * members[-1] / rates[members[0]] / members[0] if len(members) > 1 else 1
            print_(f"{name:<5} {problem:<11} member-updates/s  {cells}   packing x{speedup:4.2f}")
    return results


# Quickstart-sized (Pendulum, 64x64 nets) and HalfCheetah-sized (the algorithms' default nets, 256x256).
COMPILE_SIZES = {"quickstart": (3, 1, (64, 64)), "halfcheetah": (17, 6, None)}


def compile_report(algorithms=None, members=(1, 8), sizes=("quickstart", "halfcheetah"), device: str = "cpu",
                   seconds: float = 5.0, print_=print) -> dict:
    """Member-updates per second eager and compiled (`GraphUpdate`) side by side, and the compile time (its first
    call: tracing, code generation or an on-disk cache load, and one update). Returns {(algorithm, size, P):
    (eager, compiled, compile seconds)}."""
    results = {}
    print_(f"{'':<6} {'size':<11} {'P':>2} {'eager':>9} {'compiled':>9} {'speed-up':>8} {'compile s':>9}")
    for name in algorithms or [name for name, learner in ALGORITHMS.items() if not learner.USES_MODEL]:
        for size in sizes:
            obs_dim, act_dim, hidden = COMPILE_SIZES[size]
            overrides = {} if hidden is None else {"hidden": hidden}
            if hidden is not None and "critic_hidden" in ALGORITHMS[name].Config.__dataclass_fields__:
                overrides["critic_hidden"] = hidden
            for P in members:
                learner, buffer = benchmark_learner(name, P, obs_dim, act_dim, device, overrides)
                eager = learner_updates_per_second(learner, buffer, seconds) * P
                learner, buffer = benchmark_learner(name, P, obs_dim, act_dim, device, overrides)
                step = GraphUpdate(learner, buffer)

                def run(n: int) -> None:
                    for _ in range(n):
                        metrics = step()
                    metrics["diverged"].sum().item()

                run(1)
                compiled = calls_per_second(run, chunk=5, seconds=seconds, warmup=3) * P
                results[(name, size, P)] = (eager, compiled, step.compile_seconds)
                print_(f"{name:<6} {size:<11} {P:>2} {eager:9.1f} {compiled:9.1f} {compiled / eager:7.2f}x "
                       f"{step.compile_seconds:9.1f}")
    return results


# --- model-based: dynamics training, model rollouts, updates on mixed minibatches ---------------------------------
def synthetic_dataset(obs_dim: int, act_dim: int, transitions: int = 100_000) -> OfflineDataset:
    """Random states and actions under smooth made-up dynamics (something for an ensemble to fit), 1000-step episodes."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((transitions, obs_dim), dtype=np.float32)
    actions = rng.uniform(-1, 1, (transitions, act_dim)).astype(np.float32)
    mixing = rng.standard_normal((act_dim, obs_dim)).astype(np.float32) * 0.1
    next_obs = 0.95 * obs + np.tanh(actions @ mixing) + 0.01 * rng.standard_normal(obs.shape, dtype=np.float32)
    starts = np.arange(0, transitions, 1000)
    return OfflineDataset("synthetic", obs, actions, np.sin(obs).sum(1), next_obs, np.zeros(transitions, bool),
                          np.zeros(transitions, bool), starts, np.full(len(starts), 1000), np.zeros(len(starts)),
                          gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                          gym.spaces.Box(-1, 1, (act_dim,), np.float32))


def model_based_learner(algorithm: str, members: int, dataset: OfflineDataset, ensemble: DynamicsEnsemble,
                        device: str, **overrides):
    """A population of `members` seeds with `ensemble` attached, and the dataset's buffer."""
    learner_class = ALGORITHMS[algorithm]
    configs = [learner_class.Config(seed=k, **overrides) for k in range(members)]
    learner = learner_class(configs, dataset.obs_dim, dataset.act_dim, -torch.ones(dataset.act_dim),
                            torch.ones(dataset.act_dim), device)
    buffer = TransitionBuffer.from_dataset(dataset, device)
    learner.attach_model(ensemble, DataContext(dataset, buffer))
    return learner, buffer


def model_based_report(algorithms=("mopo", "combo"), members=(1, 8), problems=("hopper", "halfcheetah"),
                       device: str = "cpu", seconds: float = 5.0, model_epochs: int = 3, transitions: int = 100_000,
                       rollout_batch_size: int = 10_000, rollout_length: int = 5, sampled_q_precision: str = "auto",
                       print_=print) -> dict:
    """Per problem: seconds per epoch of the default ensemble (7 x 4x200) on `transitions` synthetic transitions,
    model steps per second of rollouts (`rollout_batch_size` start states per member, `rollout_length` steps) and
    member-updates per second of each algorithm on mixed minibatches (rollouts excluded; add
    P * rollout_batch_size * rollout_length / steps_per_second every `rollout_every` updates for the total).
    Returns {(problem, "ensemble"): seconds per epoch, (problem, "rollout"): {P: steps/s},
    (algorithm, problem): {P: member-updates/s}}."""
    results: dict = {}
    rollout_settings = dict(rollout_batch_size=rollout_batch_size, rollout_length=rollout_length,
                            model_retain_rollouts=1)
    for problem in problems:
        obs_dim, act_dim = PROBLEMS[problem]
        dataset = synthetic_dataset(obs_dim, act_dim, transitions)
        started = time.perf_counter()
        ensemble = train_ensemble(dataset, DynamicsConfig(max_epochs=model_epochs, patience=model_epochs), device)
        per_epoch = (time.perf_counter() - started) / ensemble.report["epochs"]
        results[(problem, "ensemble")] = per_epoch
        print_(f"dynamics {problem:<11} ensemble 7 x {ensemble.config.hidden}: {per_epoch:6.1f} s/epoch on "
               f"{dataset.num_transitions} transitions")
        rates = {}
        for P in members:
            learner, buffer = model_based_learner("mopo", P, dataset, ensemble, device, **rollout_settings)
            def refresh(n: int) -> None:
                for _ in range(n):
                    learner.refresh_rollouts(buffer)
                learner.rollout_stats.sum().item()

            refreshes = calls_per_second(refresh, chunk=1, seconds=seconds, warmup=1)
            rates[P] = refreshes * P * rollout_batch_size * rollout_length
        results[(problem, "rollout")] = rates
        print_(f"rollouts {problem:<11} model steps/s     " + "  ".join(f"P={P}: {r:9.0f}" for P, r in rates.items()))
        for name in algorithms:
            rates = {}
            for P in members:
                # rollout_every beyond the measurement: one refresh fills the buffers, then updates only.
                precision = {"sampled_q_precision": sampled_q_precision} if name == "combo" else {}
                learner, buffer = model_based_learner(name, P, dataset, ensemble, device, **rollout_settings,
                                                      **precision, rollout_every=10 ** 9)
                rates[P] = learner_updates_per_second(learner, buffer, seconds) * P
            results[(name, problem)] = rates
            cells = "  ".join(f"P={P}: {rate:7.1f}" for P, rate in rates.items())
            print_(f"{name:<8} {problem:<11} member-updates/s  {cells}")
    return results
