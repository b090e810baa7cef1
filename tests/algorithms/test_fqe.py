"""Offline policy evaluation (fqe.py): FQE against Monte-Carlo returns, ranking, the TD target by hand, the reward
scale undone, packed == solo, NaN for diverged members, settings, and the metrics a TrainRun reports."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.evaluation import default_mc_tail_steps, discounted_returns_to_go
from offline_sweeps.algorithms.fqe import (FQEConfig, critic_initial_q, critic_td_error, fitted_q_evaluation,
                                          fqe_target, generators_untouched, split_episodes, td_errors)
from offline_sweeps.algorithms.trainer import TrainConfig, TrainRun
from offline_sweeps.datasets import TransitionBuffer, load, rollout
from offline_sweeps.datasets.buffer import Batch

# Small nets and budgets that converge in seconds: a faster target (polyak) and lr than the defaults.
FAST = {"hidden": (64, 64), "lr": 1e-3, "polyak": 0.05, "batch_size": 256}


class DriftEnv(gym.Env):
    """x' = clip(x + 0.2 a, -2, 2), reward -x^2, start x ~ U(-1, 1), 30 steps: steering to 0 pays, away costs."""
    observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1)
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.2 * float(action[0]), -2, 2))
        return np.array([self.x], np.float32), -self.x ** 2, False, False, {}


gym.register("FQEDrift-v0", entry_point=DriftEnv, max_episode_steps=30)


def buffer_of(episodes, obs_dim: int, act_dim: int, normalize: bool = False, scale: float = 1.0,
              bias: float = 0.0) -> TransitionBuffer:
    """The episodes' transitions, rewards r * scale + bias, observations normalized by their own statistics."""
    observations = np.concatenate([e.observations[:-1] for e in episodes])
    buffer = TransitionBuffer(len(observations), obs_dim, act_dim)
    if normalize:
        buffer.obs_mean = torch.as_tensor(observations.mean(0))
        buffer.obs_std = torch.as_tensor(observations.std(0) + 1e-3)
    buffer.add(observations, np.concatenate([e.actions for e in episodes]),
               np.concatenate([e.rewards for e in episodes]) * scale + bias,
               np.concatenate([e.observations[1:] for e in episodes]),
               np.concatenate([e.terminations for e in episodes]), np.concatenate([e.truncations for e in episodes]))
    return buffer


def discounted_start_values(episodes, gamma: float) -> np.ndarray:
    """Each episode's discounted return from its start, its tail past the time limit included."""
    return np.array([discounted_returns_to_go(np.concatenate([e.rewards, e.tail_rewards]).astype(np.float64)[None],
                                              gamma)[0, 0] for e in episodes])


def starts_of(episodes, buffer: TransitionBuffer) -> torch.Tensor:
    return buffer.normalize(torch.as_tensor(np.stack([e.observations[0] for e in episodes])))


def pendulum_controller(k_angle: float, k_velocity: float):
    """A PD torque on raw Pendulum observations [cos, sin, theta_dot]: numpy for rollouts, torch on [..., obs]."""
    def numpy_policy(obs: np.ndarray) -> np.ndarray:
        return np.clip(-k_angle * obs[:, 1:2] - k_velocity * obs[:, 2:3], -2, 2).astype(np.float32)

    def torch_policy(obs: torch.Tensor) -> torch.Tensor:
        return (-k_angle * obs[..., 1:2] - k_velocity * obs[..., 2:3]).clamp(-2, 2)
    return numpy_policy, torch_policy


def test_td_target_and_residual_by_hand():
    rewards, terminals = torch.tensor([[1.0, 2.0, -3.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    next_q = torch.tensor([[10.0, 10.0, -10.0]])
    # 1 + 0.9 * 10 = 10; 2 (terminal: no bootstrap); -3 + 0.9 * -10 = -12
    torch.testing.assert_close(fqe_target(rewards, terminals, next_q, 0.9), torch.tensor([[10.0, 2.0, -12.0]]))
    torch.testing.assert_close(fqe_target(rewards, terminals, next_q, 0.9, low=-5.0, high=5.0),
                               torch.tensor([[5.0, 2.0, -5.0]]))
    q = torch.tensor([[9.0, 2.5, -12.0]])
    torch.testing.assert_close(td_errors(q, rewards, terminals, next_q, 0.9), torch.tensor([[1.0, -0.5, 0.0]]))


def test_fqe_matches_the_monte_carlo_return_of_the_policy_that_made_the_data():
    """The data come from the evaluated (deterministic) policy on Pendulum, observations normalized and rewards
    scaled and shifted in the buffer: FQE's value at the start states is within 10% of the discounted return."""
    gamma = 0.95
    numpy_policy, torch_policy = pendulum_controller(2.0, 0.5)
    episodes = rollout("Pendulum-v1", numpy_policy, num_envs=20, seed=0, episodes_per_env=1,
                       tail_steps=default_mc_tail_steps(gamma))
    buffer = buffer_of(episodes, 3, 1, normalize=True, scale=0.5, bias=1.0)
    raw = lambda obs: torch_policy(obs * buffer.obs_std + buffer.obs_mean)   # the policy reads normalized obs
    result = fitted_q_evaluation(raw, buffer, starts_of(episodes, buffer), gamma, [0], FQEConfig(**FAST), 1500,
                                 reward_scale=0.5, reward_bias=1.0)
    truth = discounted_start_values(episodes, gamma).mean()
    error = abs(result.values[0] - truth) / abs(truth)
    print(f"FQE {result.values[0]:.2f} vs Monte-Carlo {truth:.2f}: {100 * error:.1f}%")
    assert error < 0.10
    assert result.seconds > 0 and result.updates_per_second > 0


def test_fqe_ranks_policies_other_than_the_behaviour_policy():
    """Random-action data on the drift task; two policies packed as members: steering to 0 (good) and away (bad)."""
    gamma, seeds = 0.9, list(range(30))
    rng = np.random.default_rng(0)
    data = rollout("FQEDrift-v0", lambda obs: rng.uniform(-1, 1, (len(obs), 1)).astype(np.float32), num_envs=30,
                   seed=seeds, episodes_per_env=1)
    buffer = buffer_of(data, 1, 1)
    gains = {"good": -5.0, "bad": 5.0}
    truth = {}
    for name, gain in gains.items():
        runs = rollout("FQEDrift-v0", lambda obs: np.clip(gain * obs, -1, 1).astype(np.float32), num_envs=30,
                       seed=seeds, episodes_per_env=1, tail_steps=default_mc_tail_steps(gamma))
        truth[name] = discounted_start_values(runs, gamma).mean()
    gain = torch.tensor(list(gains.values())).view(2, 1, 1)
    result = fitted_q_evaluation(lambda obs: (gain * obs).clamp(-1, 1), buffer, starts_of(data, buffer), gamma,
                                 [0, 1], FQEConfig(**FAST), 1500)
    print(f"true values {truth}, FQE {dict(zip(gains, result.values.round(2)))}")
    assert truth["good"] > 2 * truth["bad"] / 3          # clearly apart (values are negative)
    assert result.values[0] > result.values[1]


def random_buffer(n: int = 500, scale: float = 1.0, bias: float = 0.0) -> TransitionBuffer:
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((n, 3)).astype(np.float32)
    buffer = TransitionBuffer(n, 3, 2)
    buffer.add(obs, rng.uniform(-1, 1, (n, 2)), rng.standard_normal(n) * scale + bias, np.roll(obs, -1, 0),
               rng.random(n) < 0.05, np.zeros(n))
    return buffer


def linear_policies(*weights: float):
    """Member p acts tanh(w_p * (obs[0], obs[1])): `[P, N, 3]` -> `[P, N, 2]`."""
    w = torch.tensor(weights).view(-1, 1, 1)
    return lambda obs: torch.tanh(w * obs[..., :2])


TINY = FQEConfig(hidden=(16, 16), batch_size=32)


def test_the_buffer_reward_scale_and_bias_are_undone():
    starts = torch.randn(7, 3)
    plain = fitted_q_evaluation(linear_policies(0.5), random_buffer(), starts, 0.99, [0], TINY, 30)
    scaled = fitted_q_evaluation(linear_policies(0.5), random_buffer(scale=3.0, bias=-2.0), starts, 0.99, [0], TINY,
                                 30, reward_scale=3.0, reward_bias=-2.0)
    np.testing.assert_allclose(scaled.values, plain.values, rtol=1e-4)


def test_the_graph_update_keeps_packed_equal_to_solo():
    """FQE's update as train.compile runs it (counter streams, captured Adam), eagerly: members still equal solo runs."""
    buffer, starts = random_buffer(), torch.randn(7, 3)
    packed = fitted_q_evaluation(linear_policies(0.5, -1.0), buffer, starts, 0.99, [0, 3], TINY, 40, graph=True)
    for k, (weight, seed) in enumerate([(0.5, 0), (-1.0, 3)]):
        solo = fitted_q_evaluation(linear_policies(weight), buffer, starts, 0.99, [seed], TINY, 40, graph=True)
        np.testing.assert_allclose(packed.values[k], solo.values[0], rtol=1e-4)


@pytest.mark.slow
def test_the_compiled_update_equals_the_eager_graph_update():
    buffer, starts = random_buffer(), torch.randn(7, 3)
    eager = fitted_q_evaluation(linear_policies(0.5, -1.0), buffer, starts, 0.99, [0, 3], TINY, 200, graph=True)
    compiled = fitted_q_evaluation(linear_policies(0.5, -1.0), buffer, starts, 0.99, [0, 3], TINY, 200, compiled=True)
    np.testing.assert_allclose(compiled.values, eager.values, rtol=1e-3)


def test_packed_equals_solo_and_diverged_members_get_nan():
    buffer, starts = random_buffer(), torch.randn(7, 3)
    packed = fitted_q_evaluation(linear_policies(0.5, -1.0, 2.0), buffer, starts, 0.99, [0, 3, 4], TINY, 40,
                                 evaluate=np.array([True, True, False]))
    for k, (weight, seed) in enumerate([(0.5, 0), (-1.0, 3)]):
        solo = fitted_q_evaluation(linear_policies(weight), buffer, starts, 0.99, [seed], TINY, 40)
        np.testing.assert_allclose(packed.values[k], solo.values[0], rtol=1e-4)
    assert np.isfinite(packed.values[:2]).all() and np.isnan(packed.values[2])
    nan_policy = fitted_q_evaluation(lambda obs: torch.full((*obs.shape[:2], 2), float("nan")), buffer, starts, 0.99,
                                     [0], TINY, 5)
    assert np.isfinite(nan_policy.values).all()         # a broken policy's NaN actions reach no arithmetic


class ConstantCritic:
    """What critic_initial_q and critic_td_error read of a learner: Q = `q` everywhere, acting 0."""
    def __init__(self, q: float, gamma: float):
        self.members, self.config = 1, type("Config", (), {"gamma": gamma})()
        self.q = q
        self.generators = [torch.Generator().manual_seed(0)]

    def act(self, obs):
        torch.rand(3, generator=self.generators[0])        # acting that draws noise, as BEAR's does
        return torch.zeros(*obs.shape[:-1], 2)

    def q_value(self, obs, actions):
        return torch.full(obs.shape[:-1], self.q)


def test_the_learners_own_critic_on_the_env_reward_scale():
    gamma, scale, bias = 0.9, 4.0, -1.0
    learner = ConstantCritic(q=scale * -20.0 + bias / (1 - gamma), gamma=gamma)
    state = learner.generators[0].get_state()
    np.testing.assert_allclose(critic_initial_q(learner, torch.randn(5, 3), scale, bias), [-20.0])
    # r + gamma (1 - d) Q - Q with Q constant: r - Q (terminal) or r - 0.1 Q; divided by the reward scale
    sample = Batch(torch.zeros(2, 3), torch.zeros(2, 2), torch.tensor([1.0, 2.0]), torch.zeros(2, 3),
                   torch.tensor([0.0, 1.0]), torch.zeros(2))
    q = learner.q
    expected = ((1.0 - 0.1 * q) ** 2 + (2.0 - q) ** 2) / 2 / scale ** 2
    np.testing.assert_allclose(critic_td_error(learner, sample, scale), [expected], rtol=1e-6)
    assert torch.equal(learner.generators[0].get_state(), state)     # acting drew noise, and it was put back


def test_generators_untouched_restores_every_generator_the_learner_holds():
    holder = type("Holder", (), {})()
    holder.generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    holder.evaluation_generators = [torch.Generator().manual_seed(3)]
    holder.one = torch.Generator().manual_seed(4)
    expected = [torch.rand(2, generator=g) for g in (*holder.generators, *holder.evaluation_generators, holder.one)]
    for g, seed in zip((*holder.generators, *holder.evaluation_generators, holder.one), (1, 2, 3, 4)):
        g.manual_seed(seed)
    with generators_untouched(holder):
        for g in (*holder.generators, *holder.evaluation_generators, holder.one):
            torch.rand(5, generator=g)
    for g, value in zip((*holder.generators, *holder.evaluation_generators, holder.one), expected):
        torch.testing.assert_close(torch.rand(2, generator=g), value)


def test_budget_scales_with_the_run():
    config = FQEConfig()
    assert config.budget(final=True, eval_every=5_000, total_updates=1_000_000) == 100_000
    assert config.budget(final=True, eval_every=5_000, total_updates=200_000) == 20_000
    assert config.budget(final=False, eval_every=5_000, total_updates=1_000_000) == 500
    assert config.budget(final=True, eval_every=20, total_updates=40) == 4
    assert config.budget(final=True, eval_every=5, total_updates=5) == 1
    assert FQEConfig(updates=7).budget(final=True, eval_every=5, total_updates=10**6) == 7


@pytest.mark.parametrize("values, message", [
    ({"updates": 0}, r"FQEConfig.updates=0 must be a whole number >= 1, or null"),
    ({"lr": -1e-4}, r"FQEConfig.lr=-0.0001 must be positive"),
    ({"polyak": 0.0}, r"FQEConfig.polyak=0.0 must be in \(0, 1\]"),
    ({"critics": 0}, r"FQEConfig.critics=0 must be a whole number >= 1"),
    ({"hidden": []}, r"FQEConfig.hidden=\(\) must be a list of layer sizes from 1 to 65536"),
    ({"batch_size": 0}, r"FQEConfig.batch_size=0 must be"),
    ({"start_states": 0}, r"FQEConfig.start_states=0 must be"),
    ({"enabled": "yes"}, r"FQEConfig.enabled='yes' must be bool"),
    ({"lr": float("nan")}, r"FQEConfig.lr=nan must be float \(finite\)"),
    ({"steps": 10}, r"unknown fqe key\(s\) \['steps'\]; allowed: batch_size, clip_target, critics"),
])
def test_bad_fqe_settings_fail_with_one_line_naming_the_field(values, message):
    for make in (FQEConfig.from_dict, lambda v: TrainConfig(algorithm="iql", dataset="unused", fqe=v)):
        with pytest.raises(ConfigError, match=message) as error:
            make(values)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"holdout_fraction=1.0 must be in \[0, 1\)"):
        TrainConfig(algorithm="iql", dataset="unused", holdout_fraction=1.0)


@pytest.fixture
def small_dataset(write_episodes, pendulum_episodes):
    write_episodes("pendulum/fqe-v0", "Pendulum-v1", pendulum_episodes)
    return "pendulum/fqe-v0"


def run_config(dataset: str, algorithm: str = "iql", **overrides) -> TrainConfig:
    values = dict(algorithm=algorithm, dataset=dataset, algo={"hidden": (16, 16), "batch_size": 32},
                  members=[{"seed": 0}, {"seed": 1}], eval_every=20, eval_episodes=1, total_updates=40, threads=1,
                  fqe={"hidden": [16, 16], "batch_size": 32})
    values.update(overrides)
    return TrainConfig(**values)


def test_a_run_reports_the_criteria_per_member_and_fqe_at_its_end(small_dataset):
    run = TrainRun(run_config(small_dataset))
    first = run.train_iteration()
    for k in (0, 1):
        assert np.isnan(first[f"member_{k}/ope/fqe_value"])      # the column exists from the first result
        assert np.isfinite(first[f"member_{k}/ope/critic_initial_q"]) and first[f"member_{k}/ope/td_error"] > 0
    run.learner.diverged[1] = True
    last = run.train_iteration()
    assert last["done"] is True
    assert np.isfinite(last["member_0/ope/fqe_value"]) and last["ope/fqe_seconds"] > 0
    assert last["ope/fqe_updates_per_second"] > 0
    for key in ("ope/fqe_value", "ope/critic_initial_q", "ope/td_error"):
        assert np.isnan(last[f"member_1/{key}"]), key
        assert last[key] == last[f"member_0/{key}"]           # the population's value is the survivors'

    bc = TrainRun(run_config(small_dataset, "bc", members=[{"seed": 0}], fqe={"enabled": False}))
    bc.train_iteration()
    assert not any(key.startswith("ope/") for key in bc.train_iteration())     # no critic, FQE off


def test_fqe_leaves_training_alone(small_dataset):
    """FQE at every evaluation changes none of the learner's training or evaluations (BEAR: its acting draws
    noise from generators of its own, which FQE's acting must put back)."""
    algo = {"hidden": (16, 16), "batch_size": 32, "warm_start_updates": 0, "behavior_pretrain_steps": 10}
    every = run_config(small_dataset, "bear", algo=algo, fqe={"hidden": [16, 16], "batch_size": 32,
                                                            "every_evaluation": True, "updates": 5})
    without = run_config(small_dataset, "bear", algo=algo, fqe={"enabled": False})
    straight, plain = TrainRun(every), TrainRun(without)
    results = [straight.train_iteration() for _ in range(2)]
    plain_results = [plain.train_iteration() for _ in range(2)]
    assert np.isfinite(results[0]["member_0/ope/fqe_value"])
    for key in ("member_0/eval/return", "member_1/eval/return", "member_1/train/critic_loss"):
        assert results[1][key] == plain_results[1][key], key
    for (name, a), (_, b) in zip(straight.learner.named_parameters(), plain.learner.named_parameters()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")


def test_a_resumed_run_reports_the_same_final_fqe_value(small_dataset, tmp_path):
    config = run_config(small_dataset)
    straight = TrainRun(config)
    expected = [straight.train_iteration() for _ in range(2)][-1]
    first = TrainRun(config)
    first.train_iteration()
    first.save(tmp_path / "state.pt")
    resumed = TrainRun(config)
    resumed.load(tmp_path / "state.pt")
    result = resumed.train_iteration()
    for k in (0, 1):
        assert np.isfinite(result[f"member_{k}/ope/fqe_value"])
        assert result[f"member_{k}/ope/fqe_value"] == pytest.approx(expected[f"member_{k}/ope/fqe_value"], rel=1e-6)


def test_held_out_episodes_leave_the_training_buffer_whole(small_dataset):
    dataset = load(small_dataset)
    training, held_out = split_episodes(dataset, 0.34)
    assert (training.num_episodes, held_out.num_episodes) == (4, 2)
    assert training.num_transitions + held_out.num_transitions == dataset.num_transitions
    starts = {tuple(o) for o in held_out.observations[held_out.episode_starts]}
    assert not starts & {tuple(o) for o in training.observations}       # no held-out episode is partly trained on
    assert training.episode_lengths.sum() == training.num_transitions
    run = TrainRun(run_config(small_dataset, holdout_fraction=0.34, fqe={"enabled": False}))
    assert run.buffer.size == training.num_transitions and len(run.td_sample.rewards) == held_out.num_transitions
    assert np.isfinite(run.train_iteration()["ope/td_error"])
    with pytest.raises(ConfigError, match="would hold out 6 of .* 6 episodes"):
        split_episodes(dataset, 0.99)
