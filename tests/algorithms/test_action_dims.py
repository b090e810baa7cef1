"""The computations that several action (or state) dimensions can break, each against a hand computation with at
least three of them: the tanh-Gaussian's log-probability, CQL's importance-weighted log-sum-exp over sampled actions,
BEAR's MMD, the dynamics ensemble's uncertainty, and a model rollout on Hopper's shapes that stops each branch at
the env's termination. Every hand value is summed over dimensions one term at a time in plain Python, so a sum over
dimensions written as a mean (or taken over the wrong axis) changes the code's value and not the hand's.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import DataContext
from offline_sweeps.algorithms.bear import mmd_gaussian, mmd_laplacian
from offline_sweeps.algorithms.cql import CQL, sampled_actions
from offline_sweeps.algorithms.dynamics import (DynamicsConfig, DynamicsEnsemble, disagreement, hopper_terminates,
                                                max_std_norm, rollout)
from offline_sweeps.algorithms.mopo import MOPO
from offline_sweeps.algorithms.networks import GaussianPolicy, TanhGaussianPolicy
from offline_sweeps.datasets import OfflineDataset, TransitionBuffer

LOW, HIGH = [-1.0, -2.0, -0.5, 0.0], [1.0, 2.0, 0.5, 3.0]       # four action dimensions, each its own range


def hand_tanh_gaussian_log_prob(u, mu, log_std, low, high) -> float:
    """log pi(a) of a = scale tanh(u) + bias, dimension by dimension: N(u_i; mu_i, sigma_i) over |da_i/du_i|."""
    total = 0.0
    for u_i, mu_i, log_std_i, low_i, high_i in zip(u, mu, log_std, low, high):
        sigma = math.exp(log_std_i)
        gaussian = -0.5 * ((u_i - mu_i) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        total += gaussian - math.log((high_i - low_i) / 2 * (1 - math.tanh(u_i) ** 2))
    return total


def test_tanh_gaussian_log_prob_of_four_action_dimensions_by_hand():
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 5, 4, (8,), torch.tensor(LOW), torch.tensor(HIGH))
    obs = torch.randn(2, 3, 5)
    noise = torch.randn(2, 3, 4)
    actions, log_prob = policy.sample(obs, noise)
    mu, log_std = policy.distribution(obs)
    u = mu + log_std.exp() * noise
    for p in range(2):
        for b in range(3):
            hand = hand_tanh_gaussian_log_prob(u[p, b].tolist(), mu[p, b].tolist(), log_std[p, b].tolist(), LOW, HIGH)
            assert log_prob[p, b].item() == pytest.approx(hand, rel=1e-5, abs=1e-4)
    # The log-probability of given actions (atanh back to u) agrees.
    torch.testing.assert_close(policy.log_prob(obs, actions), log_prob, atol=2e-3, rtol=1e-4)


def test_gaussian_policy_log_prob_of_three_action_dimensions_by_hand():
    torch.manual_seed(1)
    policy = GaussianPolicy(1, 4, 3, (8,))
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([[[-1.0, 0.0, 0.5]]]))
    obs, actions = torch.randn(1, 2, 4), torch.rand(1, 2, 3) * 2 - 1
    mu = policy.mean(obs)
    for b in range(2):
        hand = sum(-0.5 * ((a - m) / math.exp(s)) ** 2 - s - 0.5 * math.log(2 * math.pi)
                   for a, m, s in zip(actions[0, b].tolist(), mu[0, b].tolist(), [-1.0, 0.0, 0.5]))
        assert policy.log_prob(obs, actions)[0, b].item() == pytest.approx(hand, rel=1e-5)


def test_cql_sampled_action_term_with_three_action_dimensions_by_hand():
    """CQL's gap E_s [ logsumexp_j (Q(s, a_j) - log mu(a_j)) - Q(s, a_data) ] over N uniform actions (density
    1 / |A|, |A| = 2 * 4 * 1 = 8 here), N from pi(.|s) and N from pi(.|s') (their tanh-Gaussian densities)."""
    low, high, n, B = LOW[:3], HIGH[:3], 2, 3
    config = CQL.Config.from_dict({"hidden": (8, 8), "batch_size": B, "num_sampled_actions": n,
                                   "sampled_q_precision": "float32", "seed": 3})
    learner = CQL([config], 4, 3, torch.tensor(low), torch.tensor(high))
    gen = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randn(1, B, 4, generator=gen), torch.randn(1, B, 4, generator=gen)
    data_actions = torch.rand(1, B, 3, generator=gen) * (torch.tensor(high) - torch.tensor(low)) + torch.tensor(low)
    batch = type("Batch", (), {"observations": obs, "next_observations": next_obs, "actions": data_actions})()

    state = learner.generators[0].get_state()
    # The draws of `sampled_actions`, in its order: uniform, then pi(.|s)'s and pi(.|s')'s standard normal noise.
    uniform = torch.tensor(low) + learner.uniform(B, n, 3)[0] * (torch.tensor(high) - torch.tensor(low))
    noise_s, noise_next = learner.normal(B, n, 3)[0], learner.normal(B, n, 3)[0]
    learner.generators[0].set_state(state)
    _, log_density = sampled_actions(learner, obs, next_obs, n)
    learner.generators[0].set_state(state)
    metrics = learner.critic_objective(batch, torch.zeros(1, B))[2]

    def q(e: int, s: torch.Tensor, a: torch.Tensor) -> float:
        """Critic e's Q at one state and action, alone."""
        with torch.no_grad():
            return learner.critic(s.view(1, 1, -1), a.view(1, 1, -1))[0, e, 0].item()

    with torch.no_grad():
        mu_s, log_std_s = (x[0] for x in learner.policy.distribution(obs))
        mu_next, log_std_next = (x[0] for x in learner.policy.distribution(next_obs))
    gaps = []
    for e in range(2):
        total = 0.0
        for b in range(B):
            terms = [q(e, obs[0, b], uniform[b, j]) + math.log(8.0) for j in range(n)]
            for mu, log_std, noise in ((mu_s, log_std_s, noise_s), (mu_next, log_std_next, noise_next)):
                for j in range(n):
                    u = (mu[b] + log_std[b].exp() * noise[b, j]).tolist()
                    action = torch.tensor([(h - l) / 2 * math.tanh(x) + (h + l) / 2 for x, l, h in zip(u, low, high)])
                    log_pi = hand_tanh_gaussian_log_prob(u, mu[b].tolist(), log_std[b].tolist(), low, high)
                    terms.append(q(e, obs[0, b], action) - log_pi)
            top = max(terms)
            total += top + math.log(sum(math.exp(t - top) for t in terms)) - q(e, obs[0, b], data_actions[0, b])
        gaps.append(total / B)
    assert log_density[0, :, :n].flatten().tolist() == pytest.approx([-math.log(8.0)] * (B * n))
    assert metrics["train/cql_gap"].item() == pytest.approx(sum(gaps) / 2, rel=1e-4, abs=1e-4)


def hand_mmd(x: list[list[float]], y: list[list[float]], kernel) -> float:
    def mean_k(a, b):
        return sum(kernel([ai - bi for ai, bi in zip(p, q)]) for p in a for q in b) / (len(a) * len(b))
    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


@pytest.mark.parametrize("name", ["laplacian", "gaussian"])
def test_bear_mmd_of_three_dimensional_samples_by_hand(name):
    """The Laplacian kernel takes the L1 distance summed over the three dimensions, the Gaussian the squared L2."""
    x = [[0.1, -0.4, 0.9], [0.5, 0.2, -0.3], [-0.7, 0.0, 0.4]]
    y = [[0.3, 0.3, 0.3], [-0.2, -0.6, 0.8]]
    sigma = 0.5
    if name == "laplacian":
        mmd, kernel = mmd_laplacian, lambda d: math.exp(-sum(abs(v) for v in d) / (2 * sigma))
    else:
        mmd, kernel = mmd_gaussian, lambda d: math.exp(-sum(v * v for v in d) / (2 * sigma))
    value = mmd(torch.tensor(x).view(1, 1, 3, 3), torch.tensor(y).view(1, 1, 2, 3), sigma=sigma)
    assert value.item() == pytest.approx(hand_mmd(x, y, kernel), rel=1e-5)


def test_ensemble_uncertainty_over_four_output_dimensions_by_hand():
    std = torch.tensor([[[1.0, 2.0, 2.0, 4.0]], [[3.0, 0.0, 0.0, 4.0]], [[0.5, 0.5, 0.5, 0.5]]])   # norms 5, 5, 1
    std[0, 0, 3] = 4.5                                                                      # norm sqrt(29.25)
    assert max_std_norm(std).item() == pytest.approx(math.sqrt(1 + 4 + 4 + 4.5 ** 2))
    means = torch.tensor([[[0.0, 0.0, 0.0]], [[3.0, 0.0, 3.0]], [[0.0, 3.0, 0.0]]])       # centre (1, 1, 1)
    assert disagreement(means).item() == pytest.approx(math.sqrt(4 + 1 + 4))


def test_sample_step_uncertainty_is_the_max_over_all_models_of_the_std_norm_over_state_and_reward():
    """MOPO's u for Hopper's shapes (11 observation, 3 action dimensions): max_i sqrt(sum_d sigma_i,d^2) over
    the 12 predicted dimensions (state change and reward) of all seven models."""
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(DynamicsConfig(ensemble=7, elites=5, hidden=(16, 16)), 11, 3)
    obs, actions = torch.randn(1, 4, 11), torch.rand(1, 4, 3) * 2 - 1
    _, stds = ensemble.predict(obs, actions, torch.arange(7))                              # [7, 1, 4, 12]
    u = ensemble.sample_step(obs, actions, [torch.Generator().manual_seed(0)])[2]
    for b in range(4):
        hand = max(math.sqrt(sum(s * s for s in stds[i, 0, b].tolist())) for i in range(7))
        assert u[0, b].item() == pytest.approx(hand, rel=1e-5)


# --- a model rollout on Hopper that reaches the env's termination ----------------------------------------------
HOPPER_OBS, HOPPER_ACT = 11, 3
FALL = 0.2          # the model's (deterministic) height change per step


def falling_hopper_model() -> DynamicsEnsemble:
    """A Hopper-shaped ensemble whose every model predicts height - 0.2 and reward 1 at every step, with a
    negligible std, and Hopper's termination rule (height <= 0.7 ends the episode)."""
    ensemble = DynamicsEnsemble(DynamicsConfig(ensemble=3, elites=2, hidden=(8, 8)), HOPPER_OBS, HOPPER_ACT)
    with torch.no_grad():
        for parameter in ensemble.net.parameters():
            parameter.zero_()
        ensemble.target_std.fill_(1e-6)
        ensemble.target_mean.zero_()
        ensemble.target_mean[0] = -FALL
        ensemble.target_mean[-1] = 1.0
    ensemble.termination = hopper_terminates
    return ensemble


def hopper_start(heights: list[float]) -> torch.Tensor:
    start = torch.zeros(len(heights), HOPPER_OBS)
    start[:, 0] = torch.tensor(heights)
    return start


def test_a_rollout_stops_each_branch_at_hoppers_termination():
    """From heights 1.25, 1.0 and 5.0: 1.05, 0.85, 0.65 ends the first branch at its third step, 0.8, 0.6 the
    second at its second; the third never falls below 0.7 in five steps."""
    ensemble = falling_hopper_model()
    policy = lambda obs: torch.zeros(*obs.shape[:-1], HOPPER_ACT)
    rolled = rollout(ensemble, policy, hopper_start([1.25, 1.0, 5.0])[None], 5, [torch.Generator().manual_seed(0)])
    assert rolled.valid[:, 0].T.tolist() == [[True] * 3 + [False] * 2, [True] * 2 + [False] * 3, [True] * 5]
    # The terminal flag of each branch's last real step (steps after it are padding, whatever their flags).
    ended = rolled.terminals & rolled.valid
    assert ended[:, 0].T.tolist() == [[False, False, True, False, False], [False, True, False, False, False], [False] * 5]


def test_mopo_stores_a_terminated_branch_up_to_its_terminal_step_and_the_model_return_stops_there():
    """Two five-step episodes, one at height 1.25 (falls on the model's third step), one at 1.0 (on its second):
    MOPO's model buffer holds each branch up to and including its terminal transition, and `eval/model_return`
    (reward 1 per step, episodes as long as the dataset's, 5) counts 3 and 2 steps, not 5."""
    ensemble = falling_hopper_model()
    obs = hopper_start([1.25] * 5 + [1.0] * 5).numpy()
    n = len(obs)
    data = OfflineDataset(
        dataset_id="falling-hopper", observations=obs, actions=np.zeros((n, HOPPER_ACT), np.float32),
        rewards=np.ones(n, np.float32), next_observations=obs, terminals=np.zeros(n, bool),
        timeouts=np.arange(n) % 5 == 4, episode_starts=np.array([0, 5]), episode_lengths=np.array([5, 5]),
        episode_returns=np.array([5.0, 5.0]),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (HOPPER_OBS,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (HOPPER_ACT,), np.float32))
    buffer = TransitionBuffer.from_dataset(data, "cpu")
    config = MOPO.Config.from_dict({"hidden": (8, 8), "batch_size": 4, "rollout_batch_size": 64, "rollout_length": 5,
                                    "rollout_every": 1, "model_retain_rollouts": 1, "penalty": 0.0})
    learner = MOPO([config], HOPPER_OBS, HOPPER_ACT, -torch.ones(HOPPER_ACT), torch.ones(HOPPER_ACT))
    learner.attach_model(ensemble, DataContext(data, buffer, None))
    learner.refresh_rollouts(buffer)
    stored = learner.model_buffer
    rows = stored._layout._split(stored._rows[0, :int(stored.size[0])])
    height = rows.observations[:, 0]
    high = int((height - 1.25).abs().lt(1e-4).sum())               # branches that started at 1.25
    assert 0 < high < 64 and int((height - 1.0).abs().lt(1e-4).sum()) == 64 - high
    assert int(stored.size[0]) == 3 * high + 2 * (64 - high)
    assert rows.terminals.sum().item() == 64
    torch.testing.assert_close(rows.terminals, (rows.next_observations[:, 0] <= 0.7).float())
    assert (height > 0.7).all()                                      # no step taken from a fallen state

    starts = learner.model_start_states(8, seed=0)[:, 0].tolist()
    expected = np.mean([3.0 if h > 1.2 else 2.0 for h in starts])
    assert 2.0 < expected < 3.0
    assert learner.model_return(8, seed=0).item() == pytest.approx(expected, rel=1e-5)
