"""The dynamics ensemble: its losses and uncertainty by hand, a fit to a known linear system, elites, the
termination rules, batched rollouts, and the train-once cache (including two processes asking at once)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.dynamics import (
    DynamicsConfig, DynamicsEnsemble, DynamicsError, ObservationBounds, disagreement, gaussian_nll, hopper_terminates,
    load_or_train, max_std_norm, never_terminates, observation_bounds, register_termination, rollout, soft_bound_logvar,
    split_holdout, termination_fn, cache_key, train_ensemble, walker2d_terminates, TERMINATION_FNS)
from offline_sweeps.datasets import OfflineDataset

# x' = A x + B u + noise, r = c . x: a system whose truth the test knows.
A = np.array([[0.9, 0.1, 0.0], [-0.1, 0.9, 0.2], [0.0, -0.2, 0.8]], np.float32)
B = np.array([[0.5, 0.0], [0.2, -0.3], [0.0, 0.4]], np.float32)
C = np.array([1.0, -0.5, 0.25], np.float32)
NOISE = 0.05
FAST = dict(hidden=(64, 64), max_epochs=200)


def linear_dataset(n: int = 5000, seed: int = 0, noise: float = NOISE, env_id: str | None = None) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    u = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    next_x = x @ A.T + u @ B.T + noise * rng.standard_normal((n, 3)).astype(np.float32)
    box = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    return OfflineDataset(dataset_id="linear", observations=x, actions=u, rewards=x @ C, next_observations=next_x,
                          terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool), episode_starts=np.array([0]),
                          episode_lengths=np.array([n]), episode_returns=np.array([0.0]), observation_space=box,
                          action_space=gym.spaces.Box(-1, 1, (2,), np.float32), env_id=env_id)


def truth(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The noiseless (s' - s, r)."""
    a, b, c = (torch.as_tensor(m) for m in (A, B, C))
    return torch.cat([x @ a.T + u @ b.T - x, (x @ c)[..., None]], -1)


@pytest.fixture(scope="module")
def linear_model() -> DynamicsEnsemble:
    torch.manual_seed(0)
    return train_ensemble(linear_dataset(), DynamicsConfig(**FAST))


# --- pure functions ---------------------------------------------------------------------------------------
def test_uncertainty_functions_by_hand():
    std = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])          # [K=2, N=1, D=2]: norms 5 and 1
    assert max_std_norm(std).tolist() == [5.0]
    means = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[1.0, 3.0]]])   # centre (1, 1): distances sqrt2, sqrt2, 2
    assert disagreement(means).tolist() == pytest.approx([2.0])


def test_gaussian_nll_is_the_gaussian_negative_log_likelihood():
    mean, logvar, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    expected = -torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(target).mean(dim=(1, 2))
    torch.testing.assert_close(gaussian_nll(mean, logvar, target), expected)


def test_logvar_is_softly_bounded():
    raw = torch.tensor([-100.0, -3.0, 0.0, 100.0])
    bounded = soft_bound_logvar(raw, torch.tensor(0.5), torch.tensor(-10.0))
    assert bounded.min() >= -10.0 and bounded.max() <= 0.5 + 1e-4      # softplus overshoots by e^-(max - min)
    assert bounded[1] == pytest.approx(-3.0, abs=0.05)            # well inside the bounds: almost unchanged


# --- fitting ----------------------------------------------------------------------------------------------
def test_ensemble_fits_a_linear_system(linear_model):
    report = linear_model.report
    # Held-out error per output at the noise floor (noise^2 = 0.0025 on s' - s; the reward is noiseless).
    assert max(report["holdout_mse_per_dim"][:3]) < 1.3 * NOISE ** 2, report["holdout_mse_per_dim"]
    assert report["holdout_mse_per_dim"][3] < 1e-3, report["holdout_mse_per_dim"]
    assert report["epochs"] < 200                                  # early stopping ended it
    rng = np.random.default_rng(7)
    x = torch.as_tensor(rng.uniform(-1, 1, (500, 3)).astype(np.float32))
    u = torch.as_tensor(rng.uniform(-1, 1, (500, 2)).astype(np.float32))
    mean, std = linear_model.predict(x, u)                         # [elites, 500, 4]
    assert mean.shape == (5, 500, 4)
    assert (mean.mean(0) - truth(x, u)).pow(2).mean() < 1e-3
    # The learned noise level is the true one (within 30%) on the delta-state outputs.
    assert std[..., :3].mean().item() == pytest.approx(NOISE, rel=0.3)


def test_disagreement_is_higher_far_off_the_data(linear_model):
    rng = np.random.default_rng(8)
    x = torch.as_tensor(rng.uniform(-1, 1, (500, 3)).astype(np.float32))
    u = torch.as_tensor(rng.uniform(-1, 1, (500, 2)).astype(np.float32))
    on_means, _ = linear_model.predict(x, u)
    off_means, _ = linear_model.predict(5 * x.sign() + x, u)          # states 4-6 away; the data span [-1, 1]
    assert disagreement(off_means).mean() > 5 * disagreement(on_means).mean()


def test_observation_bounds_follow_the_env_space_or_the_data_range():
    data = linear_dataset(n=200)                                      # unbounded space, data in about [-1.5, 1.5]
    assert observation_bounds(data, "env") is None and observation_bounds(data, "none") is None
    seen = np.concatenate([data.observations, data.next_observations])
    width = seen.max(0) - seen.min(0)
    low, high = observation_bounds(data, "data", margin=0.1)
    np.testing.assert_allclose(low.numpy(), seen.min(0) - 0.1 * width, rtol=1e-6)
    np.testing.assert_allclose(high.numpy(), seen.max(0) + 0.1 * width, rtol=1e-6)
    # Pendulum's space: cos, sin in [-1, 1], velocity in [-8, 8]; "data" stays inside it.
    data = dataclasses.replace(data, observation_space=gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                                                                      np.array([1, 1, 8], np.float32)))
    low, high = observation_bounds(data, "env")
    assert low.tolist() == [-1, -1, -8] and high.tolist() == [1, 1, 8]
    low, high = observation_bounds(data, "data", margin=1.0)       # data +- its width: past +-1, inside +-8
    np.testing.assert_allclose(low.numpy(), [-1, -1, seen.min(0)[2] - width[2]], rtol=1e-6)
    np.testing.assert_allclose(high.numpy(), [1, 1, seen.max(0)[2] + width[2]], rtol=1e-6)
    with pytest.raises(DynamicsError, match="choose one of env, data, none"):
        observation_bounds(data, "space")


def test_model_steps_are_clamped_into_the_bounds(linear_model):
    bounds = ObservationBounds(torch.tensor([-1.0, -0.5, -math.inf]), torch.tensor([1.0, 0.5, math.inf]))
    start = torch.tensor([[[3.0, -3.0, 4.0], [0.1, 0.2, -4.0]]])               # [P=1, N=2, obs]
    generators = [torch.Generator().manual_seed(0)]
    free, _, _, _ = linear_model.sample_step(start, torch.zeros(1, 2, 2), [torch.Generator().manual_seed(0)])
    clamped, _, _, _ = linear_model.sample_step(start, torch.zeros(1, 2, 2), generators, bounds=bounds)
    torch.testing.assert_close(clamped, torch.maximum(torch.minimum(free, bounds.high), bounds.low))
    assert free[0, 0, 0] > 1.0 and clamped[0, 0, 0] == 1.0 and clamped[0, 0, 1] == -0.5   # x' = 0.9 x: still out
    rolled = rollout(linear_model, lambda obs: torch.ones(*obs.shape[:-1], 2), 5 * start, 4,
                     [torch.Generator().manual_seed(1)], bounds=bounds)
    assert (rolled.next_observations[..., :2].abs() <= torch.tensor([1.0, 0.5])).all()
    assert rolled.next_observations[..., 2].abs().max() > 1.0                    # an infinite bound leaves it free


def test_elites_are_the_members_with_the_lowest_holdout_mse(linear_model):
    data, config = linear_dataset(), linear_model.config
    _, rows = split_holdout(data.num_transitions, config)
    inputs = torch.as_tensor(np.concatenate([data.observations, data.actions], 1)[rows.numpy()])
    targets = torch.as_tensor(np.concatenate([data.next_observations - data.observations, data.rewards[:, None]],
                                             1)[rows.numpy()])
    with torch.no_grad():
        x = (inputs - linear_model.input_mean) / linear_model.input_std
        mean, _ = linear_model.normalized_forward(x.expand(config.ensemble, *x.shape))
    mse = (mean - (targets - linear_model.target_mean) / linear_model.target_std).pow(2).mean(dim=(1, 2))
    assert mse.tolist() == pytest.approx(linear_model.report["holdout_mse"], rel=1e-4)
    assert linear_model.report["elites"] == sorted(mse.argsort()[:config.elites].tolist())
    assert linear_model.elites.tolist() == linear_model.report["elites"]
    assert len(rows) == 1000                                          # min(1000, 20% of 5000)


def test_training_stops_at_max_epochs(capfd):
    model = train_ensemble(linear_dataset(n=500), DynamicsConfig(hidden=(16,), ensemble=2, elites=1, max_epochs=2))
    assert model.report["epochs"] == 2 and model.report["holdout_transitions"] == 100
    # Progress on stderr against the most epochs, with the held-out loss and the epochs without a gain
    err = capfd.readouterr().err
    assert re.search(r"dynamics ensemble \(2 x 16; stops early after 5 epochs without a 1% gain\): 2/2 epochs in "
                     r"\S+ \(holdout_mse=[\d.e-]+, no_gain=\d/5, max epochs\)", err), err


def test_training_progress_says_when_the_early_stop_ended_it(capfd, monkeypatch):
    from offline_sweeps.datasets import progress
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)       # a line at every tenth of the epochs
    model = train_ensemble(linear_dataset(n=500), DynamicsConfig(hidden=(16,), ensemble=2, elites=1, max_epochs=1000,
                                                                 patience=1, min_improvement=0.5))
    err = capfd.readouterr().err
    assert f"{model.report['epochs']}/1000 epochs in" in err and "early stop)" in err, err


@pytest.mark.parametrize("values, message", [
    ({"elites": 8}, r"DynamicsConfig.elites=8 must be between 1 and ensemble=7"),
    ({"weight_decay": [1e-4, 1e-4]}, r"weight_decay=.* must be null \(MBPO's\), a value >= 0, or 5 values"),
    ({"holdout_fraction": 1.0}, r"holdout_fraction=1.0 must be in \(0, 1\)"),
    ({"ensmble": 7}, r"unknown DynamicsConfig key\(s\) \['ensmble'\]"),
])
def test_bad_dynamics_configs_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        DynamicsConfig.from_dict(values)


def test_weight_decay_defaults_to_mbpos_per_layer_values():
    assert DynamicsConfig().layer_decays() == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4])
    assert DynamicsConfig(hidden=(8,)).layer_decays() == pytest.approx([2.5e-5, 1e-4])
    assert DynamicsConfig(weight_decay=1e-3, hidden=(8, 8)).layer_decays() == [1e-3] * 3


# --- termination and rollouts -------------------------------------------------------------------------------
def test_termination_rules():
    hopper = torch.tensor([[1.2, 0.1, 0.0], [0.6, 0.0, 0.0], [1.2, 0.3, 0.0], [1.2, 0.0, 150.0], [1.2, 0.0, math.nan]])
    assert hopper_terminates(None, None, hopper).tolist() == [False, True, True, True, True]
    walker = torch.tensor([[1.2, 0.5], [0.7, 0.0], [2.1, 0.0], [1.2, -1.2]])
    assert walker2d_terminates(None, None, walker).tolist() == [False, True, True, True]
    assert termination_fn("Hopper-v5") is hopper_terminates and termination_fn("Walker2d-v4") is walker2d_terminates
    assert termination_fn("Pendulum-v1") is never_terminates and termination_fn("HalfCheetah-v5") is never_terminates


def test_unregistered_env_terminates_never_without_terminals_and_fails_with_them():
    data = linear_dataset(n=100, env_id="LunarLanderContinuous-v3")
    assert termination_fn(data.env_id, data) is never_terminates
    with_terminals = dataclasses.replace(data, terminals=np.arange(100) == 50)
    with pytest.raises(DynamicsError, match=r"no termination rule for env 'LunarLanderContinuous-v3'.*"
                                            r"register_termination\('LunarLanderContinuous', fn\)"):
        termination_fn(with_terminals.env_id, with_terminals)
    try:
        register_termination("LunarLanderContinuous", never_terminates)
        assert termination_fn(with_terminals.env_id, with_terminals) is never_terminates
    finally:
        del TERMINATION_FNS["LunarLanderContinuous"]


def test_batched_rollouts_are_per_member_and_stop_at_termination(linear_model):
    linear_model.termination = lambda obs, act, next_obs: next_obs[..., 0] > 0.5
    try:
        start = torch.zeros(3, 64, 3)
        policies = torch.tensor([0.5, -0.5, 1.0]).view(3, 1, 1)     # member p pushes with a constant action
        policy = lambda obs: (policies * torch.ones(*obs.shape[:-1], 2)).clamp(-1, 1)
        generators = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
        rolled = rollout(linear_model, policy, start, 4, generators)
        assert rolled.observations.shape == (4, 3, 64, 3) and rolled.uncertainty.shape == (4, 3, 64)
        assert rolled.valid[0].all()
        # After its first terminal step a trajectory's later steps are padding.
        ended = rolled.terminals.float().cumsum(0) > 0
        assert not (rolled.valid[1:] & ended[:-1]).any() and rolled.terminals.any()
        # Member 1 alone, with its own generator, rolls out exactly what it did inside the batch.
        solo = rollout(linear_model, lambda obs: (-0.5 * torch.ones(*obs.shape[:-1], 2)), start[1:2], 4,
                       [torch.Generator().manual_seed(1)])
        torch.testing.assert_close(solo.next_observations[:, 0], rolled.next_observations[:, 1])
    finally:
        linear_model.termination = never_terminates


# --- the cache ------------------------------------------------------------------------------------------------
TINY = DynamicsConfig(hidden=(16, 16), ensemble=3, elites=2, max_epochs=3)


def test_second_request_loads_from_the_cache(tmp_path):
    tmp_path = tmp_path / "models"
    data = linear_dataset(n=600)
    first = load_or_train(data, TINY, tmp_path)
    second = load_or_train(data, dataclasses.asdict(TINY), tmp_path)
    assert first.report["cached"] is False and second.report["cached"] is True
    assert first.report["key"] == second.report["key"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")
    entry = Path(second.report["path"])
    assert sorted(p.name for p in entry.iterdir()) == ["model.pt", "report.json"]
    assert json.loads((entry / "report.json").read_text())["config"]["seed"] == 0
    torch.load(entry / "model.pt", weights_only=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]       # no temporary left behind


def test_another_seed_or_other_data_trains_again(tmp_path):
    tmp_path = tmp_path / "models"
    data = linear_dataset(n=600)
    assert load_or_train(data, TINY, tmp_path).report["cached"] is False
    assert load_or_train(data, dataclasses.replace(TINY, seed=1), tmp_path).report["cached"] is False
    changed = dataclasses.replace(data, rewards=data.rewards.copy())
    changed.rewards[17] += 1.0
    assert load_or_train(changed, TINY, tmp_path).report["cached"] is False
    assert load_or_train(changed, TINY, tmp_path).report["cached"] is True
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_a_damaged_entry_is_trained_again(tmp_path):
    data = linear_dataset(n=600)
    entry = Path(load_or_train(data, TINY, tmp_path).report["path"])
    (entry / "model.pt").write_bytes(b"truncated")
    again = load_or_train(data, TINY, tmp_path)
    assert again.report["cached"] is False
    assert load_or_train(data, TINY, tmp_path).report["cached"] is True


WORKER = textwrap.dedent("""
    import json, sys, numpy as np, torch
    torch.set_num_threads(1)
    import gymnasium as gym
    from offline_sweeps.algorithms.dynamics import DynamicsConfig, load_or_train
    from offline_sweeps.datasets import OfflineDataset
    arrays = np.load(sys.argv[1])
    box = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    data = OfflineDataset(dataset_id="linear", observation_space=box, action_space=gym.spaces.Box(-1, 1, (2,)),
                          **{k: arrays[k] for k in arrays.files})
    model = load_or_train(data, DynamicsConfig(**json.loads(sys.argv[3])), sys.argv[2])
    print(json.dumps({"cached": model.report["cached"], "key": model.report["key"]}))
""")


def test_two_processes_asking_at_once_train_once(tmp_path):
    data = linear_dataset(n=3000)
    arrays = tmp_path / "data.npz"
    np.savez(arrays, **{f.name: getattr(data, f.name) for f in dataclasses.fields(data)
                        if isinstance(getattr(data, f.name), np.ndarray)})
    # Enough epochs that the first trainer is still at it when the second process asks.
    config = json.dumps({"hidden": [32, 32], "ensemble": 3, "elites": 2, "max_epochs": 30, "patience": 30})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(arrays), str(tmp_path / "models"), config],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["key"] == results[1]["key"]
    assert len([p for p in (tmp_path / "models").iterdir() if p.is_dir()]) == 1


def test_a_trial_waiting_for_anothers_training_says_so(tmp_path, capfd):
    from filelock import FileLock
    data, config = linear_dataset(n=500), DynamicsConfig(hidden=(16,), ensemble=2, elites=1, max_epochs=2)
    root = tmp_path / "models"
    root.mkdir()
    key = cache_key(data, config)
    holding, held = threading.Event(), 1.5

    def train_elsewhere():
        with FileLock(str(root / f"{key}.lock")):
            holding.set()
            time.sleep(held)
    other = threading.Thread(target=train_elsewhere)
    other.start()
    holding.wait()
    started = time.perf_counter()
    model = load_or_train(data, config, root)
    other.join()
    assert time.perf_counter() - started >= held - 0.5 and model.report["cached"] is False
    err = capfd.readouterr().err
    assert f"waiting for dynamics ensemble {key} being trained by another trial ..." in err, err
    assert re.search(rf"waiting for dynamics ensemble {key[:16]}: \S+ elapsed \(its training finished\)", err), err


def test_no_waiting_message_without_a_wait(tmp_path, capfd):
    load_or_train(linear_dataset(n=500), DynamicsConfig(hidden=(16,), ensemble=2, elites=1, max_epochs=2), tmp_path)
    assert "waiting" not in capfd.readouterr().err


@pytest.mark.slow
def test_the_compiled_training_step_equals_the_eager_one_and_keeps_the_old_cache_keys(tmp_path):
    """`compile: true` (train.compile) trains the ensemble with each step one `torch.compile(fullgraph=True)` graph
    (a graph break fails the compile) and PackedAdam's captured step: the same weights as torch's Adam eagerly,
    to float tolerance, after 3 epochs of 4 full minibatches and a remainder; one graph per minibatch shape. The
    cache keeps the eager keys that entries had before the field existed, and gives a compiled model its own."""
    data = linear_dataset(n=600)                       # 480 train rows: batches of 128, 128, 128, 96
    config = DynamicsConfig(hidden=(16, 16), ensemble=3, elites=2, batch_size=128, max_epochs=3, patience=3)
    eager = train_ensemble(data, config)
    compiled = train_ensemble(data, dataclasses.replace(config, compile=True))
    assert compiled.report["epochs"] == eager.report["epochs"] == 3 and compiled.report["compile_seconds"] > 0
    assert eager.report["compile_seconds"] == 0.0
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert cache_key(data, config) == cache_key(data, dataclasses.replace(config, compile=False))
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "compile"}
    import hashlib
    from offline_sweeps.algorithms.dynamics import FORMAT_VERSION, dataset_fingerprint
    old_key = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "data": dataset_fingerprint(data),
                                         "config": fields}, sort_keys=True).encode()).hexdigest()[:32]
    assert cache_key(data, config) == old_key
    assert cache_key(data, dataclasses.replace(config, compile=True)) != old_key
