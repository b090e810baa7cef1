"""Each loss and building block against a hand computation or an independent reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from offline_sweeps.algorithms.awac import awr_weights
from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.cql import CQL, CQLConfig, cql_regularizer
from offline_sweeps.algorithms.iql import expectile_loss, value_loss
from offline_sweeps.algorithms.networks import (PackedCritic, PackedLinear, PackedMLP, TanhGaussianPolicy,
                                                has_native_bf16, polyak_update, sampled_q_dtype)
from offline_sweeps.algorithms.optim import PackedAdam
from offline_sweeps.algorithms.sac import critic_loss, soft_bellman_target, temperature_loss
from offline_sweeps.datasets.buffer import Batch


def test_expectile_loss_weights_each_side_of_zero():
    diff = torch.tensor([2.0, -2.0, 0.5])
    # tau = 0.9: positive differences weigh 0.9, negative ones 0.1.
    torch.testing.assert_close(expectile_loss(diff, torch.tensor(0.9)), torch.tensor([0.9 * 4, 0.1 * 4, 0.9 * 0.25]))
    # tau = 0.5 is half the squared error.
    torch.testing.assert_close(expectile_loss(diff, torch.tensor(0.5)), 0.5 * diff ** 2)


def test_value_loss_is_a_per_member_mean_summed_over_members():
    q = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    v = torch.tensor([[1.0, 2.0], [1.0, -1.0]])
    tau = torch.tensor([0.7, 0.5])
    # member 0: diffs (2, -1) -> (0.7*4 + 0.3*1)/2 = 1.55; member 1: diffs (-1, 1) -> 0.5*(1 + 1)/2 = 0.5
    assert value_loss(q, v, tau).item() == pytest.approx(1.55 + 0.5)


def test_cql_regularizer_on_a_tiny_q_table():
    q_sampled = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    q_data = torch.tensor([2.0]).view(1, 1, 1)
    expected = math.log(math.e + math.e ** 2 + math.e ** 3) - 2.0
    assert cql_regularizer(q_sampled, q_data).item() == pytest.approx(expected)
    # At temperature T it is T * logsumexp(Q / T) - Q(data), approaching max_j Q - Q(data) as T -> 0.
    assert cql_regularizer(q_sampled, q_data, temperature=0.01).item() == pytest.approx(1.0, abs=1e-3)
    # Its gradient pushes sampled Q down by their softmax weights and data Q up by one.
    q_sampled.requires_grad_(True)
    q_data.requires_grad_(True)
    cql_regularizer(q_sampled, q_data).sum().backward()
    torch.testing.assert_close(q_sampled.grad.view(3), torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0))
    assert q_data.grad.item() == -1.0


def test_advantage_weights_and_their_clipping():
    advantage = torch.tensor([[0.0, 1.0, 10.0]])
    weights = awr_weights(advantage, torch.tensor([3.0]), max_weight=100.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, math.exp(3.0), 100.0]]))
    # AWAC's lambda = 1/3 is inverse temperature 3: the same weights.
    torch.testing.assert_close(awr_weights(advantage, 1 / torch.tensor([1 / 3]), 100.0), weights)


def test_soft_bellman_target_does_not_bootstrap_terminals():
    target = soft_bellman_target(rewards=torch.tensor([[1.0, 1.0]]), terminals=torch.tensor([[0.0, 1.0]]),
                                 next_q=torch.tensor([[10.0, 10.0]]), next_log_prob=torch.tensor([[-2.0, -2.0]]),
                                 alpha=torch.tensor([0.5]), gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([[1.0 + 0.9 * (10.0 + 1.0), 1.0]]))


def test_temperature_loss_gradient_sign():
    log_alpha = torch.zeros(1, requires_grad=True)
    # Entropy below the target (log_prob + target_entropy > 0) must raise alpha: gradient negative.
    temperature_loss(log_alpha, torch.tensor([[2.0]]), target_entropy=-1.0).backward()
    assert log_alpha.grad.item() == pytest.approx(-1.0)


def test_polyak_update():
    source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in target.parameters()]
    polyak_update(target, source, 0.1)
    for old, new, src in zip(before, target.parameters(), source.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)


def test_packed_linear_is_one_linear_per_member():
    layer = PackedLinear(3, 4, 2)
    x = torch.randn(3, 5, 4)
    for p in range(3):
        torch.testing.assert_close(layer(x)[p], F.linear(x[p], layer.weight[p].T, layer.bias[p, 0]))


def test_critic_ensemble_members_are_independent_networks():
    critic = PackedCritic(members=2, obs_dim=3, act_dim=1, hidden=(8,), ensemble=2)
    obs, act = torch.randn(2, 4, 3), torch.randn(2, 4, 1)
    q = critic(obs, act)
    assert q.shape == (2, 2, 4)
    # Changing member 1's input changes none of member 0's Q-values.
    obs2 = obs.clone()
    obs2[1] += 1.0
    torch.testing.assert_close(critic(obs2, act)[0], q[0])


def test_squashed_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 3, 2, (8,), action_low=torch.tensor([-2.0, -1.0]),
                                action_high=torch.tensor([2.0, 3.0]))
    obs = torch.randn(2, 5, 3)
    actions, log_prob = policy.sample(obs)
    mu, log_std = policy.distribution(obs)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(policy.action_bias, policy.action_scale)])
    torch.testing.assert_close(log_prob, reference.log_prob(actions).sum(-1), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(policy.log_prob(obs, actions), log_prob, atol=1e-3, rtol=1e-4)
    assert (actions[..., 0].abs() <= 2).all() and (actions[..., 1] >= -1).all() and (actions[..., 1] <= 3).all()


@pytest.mark.parametrize("decay", [1.0, 0.5], ids=["constant", "schedule"])
@pytest.mark.parametrize("lrs", [[1e-2, 3e-3, 1e-3], [3e-3, 3e-3, 3e-3]], ids=["per-member", "shared-fused"])
def test_packed_adam_is_p_independent_adams_with_their_own_learning_rates(lrs, decay):
    """Per-member learning rates take the foreach path; one shared rate takes PyTorch's fused kernel. A schedule
    assigns a new `[P]` lr every step (IQL's cosine decay): the per-member path must use it, not a cached copy."""
    torch.manual_seed(0)
    packed = torch.nn.Parameter(torch.randn(3, 4, 2))
    solos = [torch.nn.Parameter(packed.detach()[p].clone()) for p in range(3)]
    packed_opt = PackedAdam([packed], lr=torch.tensor(lrs))
    solo_opts = [torch.optim.Adam([s], lr=lr) for s, lr in zip(solos, lrs)]
    for step in range(5):
        packed_opt.param_groups[0]["lr"] = torch.tensor(lrs) * decay ** step
        for opt, lr in zip(solo_opts, lrs):
            opt.param_groups[0]["lr"] = lr * decay ** step
        target = torch.randn(3, 4, 2)
        packed_opt.zero_grad()
        ((packed - target) ** 3).sum().backward()
        packed_opt.step()
        for p, (solo, opt) in enumerate(zip(solos, solo_opts)):
            opt.zero_grad()
            ((solo - target[p]) ** 3).sum().backward()
            opt.step()
    assert packed_opt.param_groups[0]["lr"].device.type == "cpu"
    for p, solo in enumerate(solos):
        torch.testing.assert_close(packed.detach()[p], solo.detach(), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        PackedAdam([packed], lr=torch.tensor([1e-3, 0.0, 1e-3]))


def test_sampled_q_precision_resolves_per_device():
    cpu = torch.device("cpu")
    assert sampled_q_dtype("float32", cpu) is None
    assert sampled_q_dtype("bfloat16", cpu) is torch.bfloat16
    assert sampled_q_dtype("auto", cpu) is (torch.bfloat16 if has_native_bf16(cpu) else None)
    with pytest.raises(ConfigError, match="sampled_q_precision.*auto or bfloat16 or float32"):
        CQLConfig(sampled_q_precision="float16")


def test_bfloat16_hidden_layers_keep_the_output_in_float32():
    torch.manual_seed(0)
    mlp = PackedMLP(2, 8, 1, (64, 64))
    x = torch.randn(2, 100, 8)
    low = mlp(x, torch.bfloat16)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, mlp(x), atol=0.02, rtol=0.02)


def test_bfloat16_error_in_the_cql_gradient_is_small_against_its_sampling_noise():
    """The regularizer's gradient with the 3N sampled actions scored in bfloat16 differs from float32 by much less
    than two float32 draws of the sampled actions differ from each other (default 256x256 critic, batch 256)."""
    torch.manual_seed(0)
    learner = CQL([CQLConfig(seed=0, sampled_q_precision="float32")], 17, 6, -torch.ones(6), torch.ones(6))
    with torch.no_grad():     # Q-values around 300, Hopper's scale, where rounding the output would cost most
        for critic in (learner.critic, learner.critic_target):
            critic.net.layers[-1].bias += 300.0
    batch = Batch(torch.randn(1, 256, 17), torch.rand(1, 256, 6) * 2 - 1, torch.randn(1, 256),
                  torch.randn(1, 256, 17), torch.zeros(1, 256), torch.zeros(1, 256))

    def regularizer_gradient(dtype, draw: int) -> torch.Tensor:
        learner.sampled_q_dtype = dtype
        learner.generators[0].manual_seed(draw)
        target = learner.td_target(batch)
        loss, q_data, _ = learner.critic_objective(batch, target)
        gradient = torch.autograd.grad(loss - critic_loss(q_data, target), list(learner.critic.parameters()))
        return torch.cat([g.flatten() for g in gradient])

    reference = regularizer_gradient(None, draw=1)
    rounding = (regularizer_gradient(torch.bfloat16, draw=1) - reference).norm()
    sampling = (regularizer_gradient(None, draw=2) - reference).norm()
    assert rounding < 0.25 * sampling, (rounding / reference.norm(), sampling / reference.norm())
