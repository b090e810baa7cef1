"""BRAC: the KL estimators against hand computations, behaviour pretraining, the value penalty's target,
and packed members equal to solo runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.brac import (BRAC, BRACConfig, clip_inside, gaussian_kl, policy_penalty_actor_loss,
                                            sample_kl)
from offline_sweeps.datasets import TransitionBuffer
from offline_sweeps.datasets.buffer import Batch

OBS, ACT = 3, 2
SHARED = {"hidden": (16, 16), "batch_size": 16}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make(members: list[dict], **shared) -> BRAC:
    configs = [BRACConfig.from_dict({**SHARED, **shared, **member}) for member in members]
    return BRAC(configs, OBS, ACT, -torch.ones(ACT), torch.ones(ACT))


def toy_buffer(n: int = 200) -> TransitionBuffer:
    """Actions a smooth function of the state (plus a little noise), some of them saturated at the bounds."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, OBS)).astype(np.float32)
    actions = np.clip(np.tanh(obs[:, :ACT] * 1.5) + 0.1 * rng.standard_normal((n, ACT)), -1, 1)
    buffer = TransitionBuffer(n, OBS, ACT)
    buffer.add(obs, actions, rng.standard_normal(n), np.roll(obs, 1, 0), rng.random(n) < 0.1, np.zeros(n))
    return buffer


def train(learner: BRAC, buffer: TransitionBuffer, updates: int) -> dict:
    metrics = {}
    for _ in range(updates):
        metrics = learner.guarded_update(buffer.sample(learner.config.batch_size, learner.members, learner.generators))
    return metrics


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[name]) for name, p in module.named_parameters())


def test_sample_kl_is_the_mean_log_ratio():
    log_pi = torch.tensor([[[-1.0, -2.0, -0.5, -3.0]]])
    assert sample_kl(log_pi, log_pi).abs().max().item() == 0.0
    log_beta = torch.tensor([[[-2.0, -2.5, -0.5, -1.0]]])
    # differences 1, 0.5, 0, -2 -> mean -0.125
    torch.testing.assert_close(sample_kl(log_pi, log_beta), torch.tensor([[-0.125]]))


def test_gaussian_kl_by_hand():
    # 1-D: log(1 / 2) + (2^2 + 1^2) / 2 - 1/2 = 2 - log 2
    kl = gaussian_kl(torch.tensor([0.5]), torch.tensor([math.log(2.0)]), torch.tensor([-0.5]), torch.tensor([0.0]))
    assert kl.item() == pytest.approx(2.0 - math.log(2.0), rel=1e-6)
    # Summed over dimensions: the second adds log(2 / 1) + (1 + 0) / (2 * 4) - 1/2 = log 2 - 3/8.
    kl2 = gaussian_kl(torch.tensor([0.5, 0.0]), torch.tensor([math.log(2.0), 0.0]),
                      torch.tensor([-0.5, 0.0]), torch.tensor([0.0, math.log(2.0)]))
    assert kl2.item() == pytest.approx(2.0 - math.log(2.0) + math.log(2.0) - 0.375, rel=1e-6)
    mu, log_std = randn(4, 3, seed=1), randn(4, 3, seed=2)
    torch.testing.assert_close(gaussian_kl(mu, log_std, mu, log_std), torch.zeros(4))


def test_sampled_kl_of_the_squashed_policies_estimates_the_gaussian_kl():
    """The tanh corrections cancel: the learner's estimate matches the closed form on the pre-tanh Gaussians."""
    learner = make([{"seed": 0, "num_kl_samples": 40_000}, {"seed": 3, "num_kl_samples": 40_000}])
    obs = randn(2, 3, OBS)
    with torch.no_grad():
        learner.policy.net.layers[-1].bias[..., :ACT] += 0.5     # move pi's means away from pi_beta-hat's
        _, _, kl = learner.policy_samples(obs)
        expected = gaussian_kl(*learner.policy.distribution(obs), *learner.behavior.distribution(obs))
    assert expected.min() > 0.2
    torch.testing.assert_close(kl, expected, atol=0.02, rtol=0.02)


def test_policy_penalty_adds_alpha_times_kl_to_the_sac_actor_loss():
    q_pi, log_prob = torch.tensor([[1.0, 3.0], [0.0, 2.0]]), torch.tensor([[-1.0, -1.0], [0.5, 0.5]])
    kl, temperature, weight = torch.tensor([[0.2, 0.4], [1.0, 3.0]]), torch.tensor([0.5, 1.0]), torch.tensor([0.1, 2.0])
    # member 0: mean(-0.5 - 1, -0.5 - 3) + 0.1 * 0.3 = -2.47; member 1: mean(0.5 - 0, 0.5 - 2) + 2 * 2 = 3.5
    assert policy_penalty_actor_loss(q_pi, log_prob, kl, temperature, weight).item() == pytest.approx(-2.47 + 3.5)


def test_clip_inside_keeps_actions_off_the_bounds():
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    clipped = clip_inside(torch.tensor([[-2.0, 1.0], [0.5, 0.2]]), low, high, eps=0.01)
    torch.testing.assert_close(clipped, torch.tensor([[-1.98, 0.995], [0.5, 0.2]]))


def test_pretraining_fits_only_the_behaviour_policy_then_freezes_it():
    buffer = toy_buffer()
    learner = make([{"seed": 0}, {"seed": 1, "kl_weight": 1.0}], behavior_pretrain_steps=40, behavior_lr=1e-2)
    fixed = buffer.sample(64, 2, torch.Generator().manual_seed(7))
    with torch.no_grad():
        nll_before = -learner.behavior_log_prob(fixed).mean(-1)
    actor_critic = [learner.policy, learner.critic, learner.critic_target]
    before = [snapshot(m) for m in actor_critic]
    log_alpha = learner.log_alpha.detach().clone()
    metrics = train(learner, buffer, 40)
    assert set(metrics) == {"train/behavior_nll", "train/behavior_entropy", "train/behavior_entropy_weight", "diverged"}
    with torch.no_grad():
        nll_after = -learner.behavior_log_prob(fixed).mean(-1)
    assert (nll_after < nll_before - 0.5).all(), (nll_before, nll_after)
    assert not any(changed(m, b) for m, b in zip(actor_critic, before))
    torch.testing.assert_close(learner.log_alpha.detach(), log_alpha, rtol=0, atol=0)
    assert learner.pretraining is False and int(learner.updates) == 40

    behavior = snapshot(learner.behavior)
    metrics = train(learner, buffer, 3)
    assert not changed(learner.behavior, behavior)
    assert all(changed(m, b) for m, b in zip(actor_critic, before))
    for key in ("train/kl", "train/behavior_nll", "train/q_data_mean", "train/temperature"):
        assert metrics[key].shape == (2,) and torch.isfinite(metrics[key]).all(), key

    # The phase is part of the checkpoint.
    fresh = make([{"seed": 0}, {"seed": 1, "kl_weight": 1.0}], behavior_pretrain_steps=40, behavior_lr=1e-2)
    fresh.restore(learner.checkpoint())
    assert int(fresh.updates) == 43 and fresh.pretraining is False


def test_value_penalty_lowers_the_target_by_gamma_alpha_kl():
    gamma, weight = 0.9, 0.5
    batch = Batch(randn(1, 6, OBS, seed=1), randn(1, 6, ACT, seed=2).tanh(), randn(1, 6, seed=3),
                  randn(1, 6, OBS, seed=4), torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]), torch.zeros(1, 6))
    targets, kls = {}, {}
    for penalty in ("policy", "value"):
        learner = make([{"seed": 4}], penalty=penalty, kl_weight=weight, gamma=gamma, behavior_pretrain_steps=0)
        states = [g.get_state() for g in learner.generators]
        targets[penalty] = learner.td_target(batch)
        for g, state in zip(learner.generators, states):
            g.set_state(state)
        kls[penalty] = learner.policy_samples(batch.next_observations)[2].detach()
    torch.testing.assert_close(kls["value"], kls["policy"])
    kl = kls["value"]
    assert kl.abs().mean() > 0.1
    torch.testing.assert_close(targets["value"], targets["policy"] - gamma * weight * (1 - batch.terminals) * kl)


def test_a_large_kl_weight_keeps_the_policy_near_the_behaviour_policy():
    """Two members identical but for alpha: the penalized one ends with a much smaller KL."""
    buffer = toy_buffer()
    learner = make([{"seed": 0, "kl_weight": 0.0, "actor_lr": 3e-3}, {"seed": 0, "kl_weight": 10.0, "actor_lr": 3e-3}],
                   behavior_pretrain_steps=5, behavior_lr=1e-2, num_kl_samples=8)
    metrics = train(learner, buffer, 40)
    kl = metrics["train/kl"]
    assert kl[1] < 0.5 * kl[0], kl


@pytest.mark.parametrize("penalty", ["policy", "value"])
def test_packed_member_equals_solo_run(penalty):
    buffer = toy_buffer()
    population = [{"seed": 0, "kl_weight": 0.1}, {"seed": 1, "kl_weight": 1.0, "actor_lr": 1e-3}]
    shared = {"penalty": penalty, "behavior_pretrain_steps": 3}
    packed = make(population, **shared)
    train(packed, buffer, 7)
    packed_params = dict(packed.named_parameters())
    for k, member in enumerate(population):
        solo = make([member], **shared)
        train(solo, buffer, 7)
        for name, value in solo.named_parameters():
            per = packed_params[name].shape[0] // 2
            torch.testing.assert_close(packed_params[name].detach()[k * per:(k + 1) * per], value.detach(),
                                       atol=2e-5, rtol=1e-4, msg=lambda m: f"member {k} {name}: {m}")
    obs = randn(2, 5, OBS)
    assert packed.act(obs).shape == (2, 5, ACT) and packed.act(obs).abs().max() <= 1
    assert packed.q_value(obs, packed.act(obs)).shape == (2, 5)


@pytest.mark.parametrize("field, value", [("kl_weight", -0.1), ("penalty", "both"), ("num_kl_samples", 0),
                                          ("behavior_pretrain_steps", -1), ("behavior_lr", 0.0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"BRACConfig\.{field}="):
        BRACConfig(**{field: value})
