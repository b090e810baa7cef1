"""BEAR: the MMD estimators and the target against hand computations, the dual ascent on the Lagrange
multiplier, behaviour pretraining, and packed members equal to solo runs."""
from __future__ import annotations

import math

import pytest
import torch

from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.algorithms.bear import (BEAR, BEARConfig, constrained_actor_loss, lagrange_loss, mmd_gaussian,
                                            mmd_laplacian, soft_clipped_double_q)
from offline_sweeps.algorithms.networks import q_at_samples
from offline_sweeps.datasets import TransitionBuffer
from offline_sweeps.datasets.buffer import Batch

OBS, ACT = 3, 2
SHARED = {"hidden": (16, 16), "behavior_hidden": (16, 16), "batch_size": 16}
MMDS = [mmd_laplacian, mmd_gaussian]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make(members: list[dict], **shared) -> BEAR:
    configs = [BEARConfig.from_dict({**SHARED, **shared, **member}) for member in members]
    return BEAR(configs, OBS, ACT, -2 * torch.ones(ACT), 2 * torch.ones(ACT))


def train(learner: BEAR, buffer: TransitionBuffer, updates: int) -> dict:
    metrics = {}
    for _ in range(updates):
        metrics = learner.guarded_update(buffer.sample(learner.config.batch_size, learner.members, learner.generators))
    return metrics


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[name]) for name, p in module.named_parameters())


@pytest.mark.parametrize("mmd", MMDS)
def test_mmd_of_a_sample_set_with_itself_is_exactly_zero(mmd):
    x = randn(2, 3, 5, ACT)
    assert mmd(x, x, sigma=1.0).shape == (2, 3)
    assert mmd(x, x, sigma=1.0).abs().max().item() == 0.0


@pytest.mark.parametrize("mmd", MMDS)
def test_mmd_of_well_separated_clusters_is_near_two(mmd):
    x = 0.01 * randn(1, 2, 6, ACT, seed=1)
    y = 10.0 + 0.01 * randn(1, 2, 4, ACT, seed=2)
    torch.testing.assert_close(mmd(x, y, sigma=1.0), torch.full((1, 2), 2.0), atol=0.05, rtol=0)
    # A wide kernel cannot tell them apart.
    assert mmd(x, y, sigma=1e7).max() < 1e-3


def test_mmd_on_one_dimensional_points_by_hand():
    """The authors' kernels: Laplacian exp(-|d|_1 / (2 sigma)), Gaussian exp(-d^2 / (2 sigma))."""
    x, y = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1), torch.tensor([2.0]).view(1, 1, 1, 1)
    # Laplacian, sigma 1/2: k = exp(-|d|): E k(x,x') = (2 + 2 e^-1) / 4, E k(y,y') = 1, E k(x,y) = (e^-2 + e^-1) / 2
    assert mmd_laplacian(x, y, sigma=0.5).item() == pytest.approx(1.5 - 0.5 * math.exp(-1) - math.exp(-2), rel=1e-6)
    # Gaussian, sigma 1: k = exp(-d^2 / 2): E k(x,x') = (2 + 2 e^-1/2) / 4, E k(x,y) = (e^-2 + e^-1/2) / 2
    assert mmd_gaussian(x, y, sigma=1.0).item() == pytest.approx(1.5 - 0.5 * math.exp(-0.5) - math.exp(-2), rel=1e-6)
    # In two dimensions the Laplacian kernel uses the L1 distance, the Gaussian the squared L2 distance.
    a, b = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)
    assert mmd_laplacian(a, b, sigma=2.0).item() == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-6)
    assert mmd_gaussian(a, b, sigma=2.0).item() == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-6)
    # The defaults are the authors' sigmas: 10 (Laplacian), 20 (Gaussian).
    assert mmd_laplacian(a, b).item() == pytest.approx(2 - 2 * math.exp(-2 / 20), rel=1e-6)
    assert mmd_gaussian(a, b).item() == pytest.approx(2 - 2 * math.exp(-2 / 40), rel=1e-6)


@pytest.mark.parametrize("mmd", MMDS)
def test_mmd_is_computed_per_member_and_state(mmd):
    x, y = randn(2, 3, 5, ACT, seed=3), randn(2, 3, 4, ACT, seed=4)
    batched = mmd(x, y, sigma=0.7)
    for p in range(2):
        for b in range(3):
            torch.testing.assert_close(batched[p, b], mmd(x[p, b][None, None], y[p, b][None, None], sigma=0.7)[0, 0])


def test_soft_clipped_double_q_and_the_losses_by_hand():
    q = torch.tensor([[[1.0, 4.0], [3.0, 0.0]]])          # [P=1, E=2, B=2]
    torch.testing.assert_close(soft_clipped_double_q(q, 0.75),
                               torch.tensor([[0.75 * 1 + 0.25 * 3, 0.75 * 0 + 0.25 * 4]]))
    torch.testing.assert_close(soft_clipped_double_q(q, 1.0), q.min(dim=1).values)
    q_pi, mmd = torch.tensor([[2.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.1, 0.3], [0.5, 0.5]])
    # member 0: mean(-2 + 10 * 0.1, -4 + 10 * 0.3) = -1; member 1: -1 + 2 * 0.5 = 0
    assert constrained_actor_loss(q_pi, mmd, torch.tensor([10.0, 2.0])).item() == pytest.approx(-1.0)


def test_dual_ascent_raises_the_multiplier_only_while_the_constraint_is_violated():
    log_lagrange = torch.zeros(2, requires_grad=True)
    mmd = torch.tensor([[0.3, 0.5], [0.01, 0.03]])
    loss = lagrange_loss(log_lagrange, mmd, threshold=torch.tensor([0.05, 0.05]))
    assert loss.item() == pytest.approx(-(0.4 - 0.05) - (0.02 - 0.05))
    loss.backward()
    # Gradient descent on the loss: member 0 (violated) goes up, member 1 (satisfied) goes down.
    assert log_lagrange.grad[0] < 0 < log_lagrange.grad[1]


def test_td_target_is_the_max_over_sampled_actions_of_the_soft_clipped_double_q():
    learner = make([{"seed": 2}], num_target_samples=3, gamma=0.9, behavior_pretrain_steps=0)
    batch = Batch(randn(1, 4, OBS, seed=1), randn(1, 4, ACT, seed=2).tanh(), randn(1, 4, seed=3),
                  randn(1, 4, OBS, seed=4), torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.zeros(1, 4))
    state = learner.generators[0].get_state()
    target = learner.td_target(batch)
    learner.generators[0].set_state(state)
    with torch.no_grad():
        actions, _ = learner.policy.sample(batch.next_observations, learner.normal(4, 3, ACT))
        q = q_at_samples(learner.critic_target, batch.next_observations, actions)[0]      # [E, B, 3]
    value = (0.75 * q.min(dim=0).values + 0.25 * q.max(dim=0).values).max(dim=-1).values
    torch.testing.assert_close(target[0], batch.rewards[0] + 0.9 * (1 - batch.terminals[0]) * value)


def test_the_gaussian_behaviour_model_is_pretrained_alone_then_frozen(toy_buffer):
    buffer = toy_buffer()
    learner = make([{"seed": 0}, {"seed": 1, "mmd_threshold": 0.2}], behavior_model="gaussian",
                   behavior_pretrain_steps=40, behavior_lr=1e-2)
    fixed = buffer.sample(64, 2, torch.Generator().manual_seed(7))
    with torch.no_grad():
        nll_before = -learner.behavior_log_prob(fixed).mean(-1)
    others = [learner.policy, learner.critic, learner.critic_target]
    before = [snapshot(m) for m in others]
    log_lagrange = learner.log_lagrange.detach().clone()
    train(learner, buffer, 40)
    with torch.no_grad():
        nll_after = -learner.behavior_log_prob(fixed).mean(-1)
    assert (nll_after < nll_before - 0.5).all(), (nll_before, nll_after)
    assert not any(changed(m, b) for m, b in zip(others, before))
    assert torch.equal(learner.log_lagrange.detach(), log_lagrange)

    behavior = snapshot(learner.behavior)
    metrics = train(learner, buffer, 3)
    assert not changed(learner.behavior, behavior)
    assert all(changed(m, b) for m, b in zip(others, before))
    assert not torch.equal(learner.log_lagrange.detach(), log_lagrange)
    for key in ("train/mmd", "train/lagrange_multiplier", "train/behavior_nll", "train/q_data_mean"):
        assert metrics[key].shape == (2,) and torch.isfinite(metrics[key]).all(), key


def test_the_multiplier_grows_for_a_tight_threshold_and_shrinks_for_a_loose_one(toy_buffer):
    """Two members identical but for eps; the constrained one also ends closer to pi_beta-hat."""
    buffer = toy_buffer()
    learner = make([{"seed": 0, "mmd_threshold": 1e-3}, {"seed": 0, "mmd_threshold": 10.0}], behavior_pretrain_steps=0,
                   warm_start_updates=0, lagrange_lr=0.1, actor_lr=3e-3)
    metrics = train(learner, buffer, 20)
    multiplier = metrics["train/lagrange_multiplier"]
    assert multiplier[0] > 2.0 and multiplier[1] < 0.5, multiplier
    # Many steps against a violated constraint stop at the clamp, log alpha = 10; the other stays above -5.
    metrics = train(learner, buffer, 150)
    assert metrics["train/lagrange_multiplier"][0].item() == pytest.approx(math.exp(10.0), rel=1e-5)
    assert math.exp(-5.0) * (1 - 1e-6) <= metrics["train/lagrange_multiplier"][1].item() < 0.1
    assert metrics["train/mmd"][0] < metrics["train/mmd"][1] - 0.05, metrics["train/mmd"]


@pytest.mark.parametrize("kernel", ["laplacian", "gaussian"])
def test_packed_member_equals_solo_run(kernel, toy_buffer):
    buffer = toy_buffer()
    population = [{"seed": 0, "mmd_threshold": 0.05}, {"seed": 1, "mmd_threshold": 0.3, "critic_lr": 1e-3}]
    shared = {"kernel": kernel, "behavior_pretrain_steps": 3, "lagrange_lr": 0.05}
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
    actions = packed.act(obs)
    assert actions.shape == (2, 5, ACT) and actions.abs().max() <= 2
    assert packed.q_value(obs, actions).shape == (2, 5)


@pytest.mark.parametrize("field, value", [("mmd_threshold", 0.0), ("mmd_threshold", -0.1), ("kernel", "rbf"),
                                          ("kernel_sigma", 0.0), ("num_samples", 0), ("min_q_weight", 1.5),
                                          ("behavior_pretrain_steps", -1), ("lagrange_lr", 0.0),
                                          ("behavior_model", "flow"), ("behavior_hidden", (0, 8)),
                                          ("behavior_entropy", True)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"BEARConfig\.{field}="):
        BEARConfig(**{field: value})


def test_vae_loss_by_hand():
    """recon + 0.5 KL, each a mean over its elements (BCQ's VAE, both BEAR codebases), actions scaled to [-1, 1]:
    with zero weights the encoder gives mean m, log std l (clamped to [-4, 15]) and the decoder u = b for every input."""
    from offline_sweeps.algorithms.networks import ConditionalVAE
    vae = ConditionalVAE(1, OBS, ACT, (4,), action_low=-2 * torch.ones(ACT), action_high=2 * torch.ones(ACT))
    assert vae.latent_dim == 2 * ACT
    m, l, b = 0.3, -6.0, torch.tensor([0.5, -1.0])
    with torch.no_grad():
        for net, bias in ((vae.encoder, torch.tensor([m] * 4 + [l] * 4)), (vae.decoder, b)):
            net.layers[-1].weight.zero_()
            net.layers[-1].bias.copy_(bias.view(1, 1, -1))
    actions = torch.tensor([[[1.0, 2.0], [-2.0, 0.0]]])                  # [-1, 1]: (0.5, 1) and (-1, 0)
    loss = vae.loss(randn(1, 2, OBS), actions, randn(1, 2, 4, seed=1))
    unit = actions / 2
    recon = (torch.tanh(b) - unit).pow(2).mean()
    kl = -0.5 * (1 + 2 * -4.0 - m ** 2 - math.exp(2 * -4.0))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(recon.item() + 0.5 * kl, rel=1e-6)
    # The decoder's prior samples: latents clipped to +-0.5, the raw output u per sample.
    u = vae.sample_raw(randn(1, 2, OBS), 3 * randn(1, 2, 5, 4, seed=2))
    assert u.shape == (1, 2, 5, ACT)
    torch.testing.assert_close(u, b.expand(1, 2, 5, ACT))


def test_the_vae_behaviour_model_trains_at_every_update_from_the_first(toy_buffer):
    """The default (both codebases): no pretraining phase; every update steps the VAE, the critic and the
    multiplier (the actor on the MMD alone while warming up), and reports the VAE's loss, which falls."""
    buffer = toy_buffer()
    learner = make([{"seed": 0}, {"seed": 1, "mmd_threshold": 0.2}], warm_start_updates=5, behavior_lr=3e-3)
    assert learner.config.behavior_model == "vae" and learner.config.behavior_pretrain_steps == 0
    assert BEARConfig(behavior_model="gaussian").behavior_pretrain_steps == 10_000
    modules = [learner.behavior, learner.policy, learner.critic]
    first = None
    for _ in range(60):
        before = [snapshot(m) for m in modules]
        metrics = train(learner, buffer, 1)
        assert all(changed(m, b) for m, b in zip(modules, before))
        first = metrics["train/behavior_vae_loss"] if first is None else first
    assert "train/behavior_nll" not in metrics and metrics["train/behavior_vae_loss"].shape == (2,)
    assert (metrics["train/behavior_vae_loss"] < 0.7 * first).all(), (first, metrics["train/behavior_vae_loss"])


def test_a_checkpoint_restores_only_into_the_behaviour_model_it_was_written_with():
    vae, gaussian = make([{"seed": 0}]), make([{"seed": 0}], behavior_model="gaussian")
    with pytest.raises(ConfigError, match="behavior_model: gaussian"):
        vae.restore(gaussian.checkpoint())
    with pytest.raises(ConfigError, match="behavior_model: vae"):
        gaussian.restore(vae.checkpoint())
    make([{"seed": 0}]).restore(vae.checkpoint())
