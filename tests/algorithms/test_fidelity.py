"""Each algorithm computes what its authors' code computes, by default (issue 13); each difference is an option.

Items guarded here: BEAR's MMD on raw pre-tanh samples with the authors' kernels (2), CQL's and COMBO's TD target
without the entropy term (3), BRAC's untrained zero entropy weight and the BRAC/BEAR warm start (4), BEAR's
best-of-10 acting (5), IQL's actor-lr schedule over the run's length (6) and COMBO's push-down states (7).
"""
from __future__ import annotations

import math

import pytest
import torch

from offline_sweeps.algorithms import ALGORITHMS
from offline_sweeps.algorithms.base import ConfigError, DataContext
from offline_sweeps.algorithms.brac import BRACConfig
from offline_sweeps.algorithms.combo import COMBOConfig
from offline_sweeps.algorithms.cql import CQLConfig
from offline_sweeps.algorithms.mopo import MOPOConfig
from offline_sweeps.algorithms.networks import q_at_samples
from offline_sweeps.algorithms.sac import SACConfig
from offline_sweeps.datasets import TransitionBuffer
from offline_sweeps.datasets.buffer import Batch

OBS, ACT = 3, 2
SHARED = {"hidden": (16, 16), "batch_size": 16}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make(name: str, members: list[dict], **shared):
    learner_class = ALGORITHMS[name]
    configs = [learner_class.Config.from_dict({**SHARED, **shared, **member}) for member in members]
    return learner_class(configs, OBS, ACT, -2 * torch.ones(ACT), 2 * torch.ones(ACT))


def train(learner, buffer: TransitionBuffer, updates: int) -> dict:
    metrics = {}
    for _ in range(updates):
        metrics = learner.guarded_update(buffer.sample(learner.config.batch_size, learner.members, learner.generators))
    return metrics


def toy_batch(seed: int = 0) -> Batch:
    return Batch(randn(1, 6, OBS, seed=seed), randn(1, 6, ACT, seed=seed + 1).tanh(), randn(1, 6, seed=seed + 2),
                 randn(1, 6, OBS, seed=seed + 3), torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]), torch.zeros(1, 6))


# --- item 2: BEAR's MMD ------------------------------------------------------------------------------------------
def authors_mmd(samples1: torch.Tensor, samples2: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    """The estimator of aviralkumar2907/BEAR's `mmd_loss_laplacian` / `mmd_loss_gaussian`, written from their
    equations on `[B, N, d]` samples: sqrt(E k(x,x') + E k(y,y') - 2 E k(x,y) + 1e-6)."""
    def mean_kernel(a, b):
        diff = a.unsqueeze(2) - b.unsqueeze(1)
        distance = diff.abs().sum(-1) if kernel == "laplacian" else diff.pow(2).sum(-1)
        return torch.exp(-distance / (2.0 * sigma)).mean(dim=(1, 2))
    return (mean_kernel(samples1, samples1) + mean_kernel(samples2, samples2) - 2.0 * mean_kernel(samples1, samples2)
            + 1e-6).sqrt()


class FixedGaussian:
    """A squashed Gaussian whose pre-tanh mean and std are the same at every state (what `constraint_samples` asks
    of a policy)."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std
        self.action_scale, self.action_bias = 2 * torch.ones(ACT), torch.zeros(ACT)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*obs.shape[:-1], ACT)
        return torch.full(shape, self.mean), torch.full(shape, math.log(self.std))

    def squash(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u) * self.action_scale + self.action_bias


def bear_mmd(learner, policy, behavior, obs) -> torch.Tensor:
    _, x = learner.constraint_samples(policy, obs)
    _, y = learner.constraint_samples(behavior, obs)
    return (learner.mmd(x, y, learner.sigma) + 1e-6).sqrt()


@pytest.mark.parametrize("kernel, sigma", [("laplacian", 10.0), ("gaussian", 20.0)])
def test_bear_mmd_is_the_authors_estimator_on_raw_clipped_samples(kernel, sigma):
    learner = make("bear", [{"seed": 3}], kernel=kernel)
    assert learner.sigma == sigma
    obs = randn(1, 4, OBS)
    policy, behavior = FixedGaussian(2.5, 0.4), FixedGaussian(1.5, 0.4)
    state = learner.generators[0].get_state()
    ours = bear_mmd(learner, policy, behavior, obs)[0]
    learner.generators[0].set_state(state)
    noise_pi, noise_beta = learner.normal(4, 5, ACT)[0], learner.normal(4, 5, ACT)[0]
    raw_pi = 2.5 + 0.4 * noise_pi.clamp(-0.5, 0.5)            # the actor's sample_multiple: raw z, noise clamped
    raw_beta = 1.5 + 0.4 * noise_beta.clamp(-0.5, 0.5)
    torch.testing.assert_close(ours, authors_mmd(raw_pi, raw_beta, kernel, sigma))


def test_bear_mmd_moves_with_a_shift_of_the_mean_near_saturation_as_the_authors_does():
    """Near saturation (pre-tanh mean 1.5) squashed actions barely move with the mean; the raw samples do, so the
    authors' constraint is several times tighter than one on squashed actions (`mmd_samples: squashed`)."""
    obs = randn(1, 64, OBS)
    behavior = FixedGaussian(1.5, 0.3)
    raw, squashed = [], []
    for shift in (0.0, 0.5, 1.0, 2.0):
        policy = FixedGaussian(1.5 + shift, 0.3)
        raw.append(bear_mmd(make("bear", [{"seed": 0}]), policy, behavior, obs).mean().item())
        squashed.append(bear_mmd(make("bear", [{"seed": 0}], mmd_samples="squashed"), policy, behavior, obs).mean().item())
    assert raw == sorted(raw) and raw[1] > 0.25 and raw[0] < 0.1, raw
    for shift in (1, 2, 3):
        assert raw[shift] > 2.5 * squashed[shift], (raw, squashed)


# --- item 3: no entropy in CQL's and COMBO's backup -------------------------------------------------------------
@pytest.mark.parametrize("config, backs_up", [(SACConfig, True), (MOPOConfig, True), (CQLConfig, False),
                                              (COMBOConfig, False)])
def test_entropy_backup_defaults_follow_the_reference_code(config, backs_up):
    assert config().backup_entropy is backs_up


@pytest.mark.parametrize("backup_entropy", [False, True])
def test_cql_target_leaves_the_entropy_out_unless_asked(backup_entropy):
    learner = make("cql", [{"seed": 1}], gamma=0.9, init_temperature=0.5, backup_entropy=backup_entropy)
    batch = toy_batch()
    state = learner.generators[0].get_state()
    target = learner.td_target(batch)
    learner.generators[0].set_state(state)
    with torch.no_grad():
        next_actions, next_log_prob = learner.policy.sample(batch.next_observations, learner.normal(6, ACT))
        next_q = learner.critic_target(batch.next_observations, next_actions).min(dim=1).values
    soft_value = next_q - (0.5 * next_log_prob if backup_entropy else 0.0)
    torch.testing.assert_close(target, batch.rewards + 0.9 * (1 - batch.terminals) * soft_value)


# --- item 4: BRAC's entropy weight, the BRAC and BEAR warm starts ----------------------------------------------------
def test_brac_keeps_the_entropy_weight_at_zero_and_untrained_by_default(toy_buffer):
    assert BRACConfig().entropy_bonus is False
    buffer = toy_buffer()
    learner = make("brac", [{"seed": 0}], behavior_pretrain_steps=0, warm_start_updates=0)
    log_alpha = learner.log_alpha.detach().clone()
    metrics = train(learner, buffer, 5)
    assert torch.equal(learner.log_alpha.detach(), log_alpha)
    assert metrics["train/temperature"].tolist() == [0.0]
    tuned = make("brac", [{"seed": 0}], behavior_pretrain_steps=0, warm_start_updates=0, entropy_bonus=True)
    metrics = train(tuned, buffer, 5)
    assert not torch.equal(tuned.log_alpha.detach(), log_alpha) and metrics["train/temperature"].item() > 0


@pytest.mark.parametrize("name, field, default", [("brac", "warm_start_updates", 20_000),
                                                  ("bear", "warm_start_updates", 40_000)])
def test_warm_start_trains_the_actor_on_the_penalty_alone(name, field, default, toy_buffer):
    """During the warm start the actor's step does not depend on the critic: two learners whose critics differ
    move their actors identically; after it they do not."""
    assert getattr(ALGORITHMS[name].Config(), field) == default
    buffer = toy_buffer()

    def run(perturb: bool, updates: int):
        learner = make(name, [{"seed": 0}], behavior_pretrain_steps=2, warm_start_updates=3)
        if perturb:
            with torch.no_grad():
                for p in learner.critic.parameters():
                    p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
        train(learner, buffer, updates)
        return [p.detach().clone() for p in learner.policy.parameters()]

    for a, b in zip(run(False, 5), run(True, 5)):        # 2 behaviour-fit updates + 3 warm-start updates
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(run(False, 6), run(True, 6)))


@pytest.mark.parametrize("name", ["brac", "bear"])
def test_phases_that_fill_the_whole_budget_are_refused(name):
    from offline_sweeps.algorithms.trainer import TrainConfig
    algo = {"behavior_pretrain_steps": 100, "warm_start_updates": 50}
    with pytest.raises(ConfigError, match=r"behavior_pretrain_steps \(100\) \+ warm_start_updates \(50\) leave no "
                                          r"update.*total_updates \(150\)"):
        TrainConfig(name, "unused", algo=algo, total_updates=150, eval_every=50).member_configs()
    TrainConfig(name, "unused", algo=algo, total_updates=151, eval_every=50).member_configs()


# --- item 5: BEAR acts with the best of 10 sampled actions -------------------------------------------------------
def test_bear_acts_with_the_sampled_action_the_first_critic_scores_highest():
    learner = make("bear", [{"seed": 0}, {"seed": 1}])
    assert learner.config.evaluation_actions == "max_q" and learner.config.num_evaluation_samples == 10
    obs = randn(2, 7, OBS)
    states = [g.get_state() for g in learner.evaluation_generators]
    training_states = [g.get_state() for g in learner.generators]
    actions = learner.act(obs)
    assert all(torch.equal(g.get_state(), s) for g, s in zip(learner.generators, training_states))
    for g, s in zip(learner.evaluation_generators, states):
        g.set_state(s)
    noise = torch.stack([torch.randn((7, 10, ACT), generator=g) for g in learner.evaluation_generators])
    with torch.no_grad():
        candidates = learner.policy.sample(obs, noise)[0]
        q_first = q_at_samples(learner.critic, obs, candidates)[:, 0]
    expected = candidates[torch.arange(2)[:, None], torch.arange(7)[None], q_first.argmax(-1)]
    torch.testing.assert_close(actions, expected)
    assert not torch.allclose(actions, learner.policy.deterministic(obs))
    mean = make("bear", [{"seed": 0}], evaluation_actions="mean")
    torch.testing.assert_close(mean.act(obs[:1]), mean.policy.deterministic(obs[:1]))


# --- item 6: IQL's actor lr decays over the run ----------------------------------------------------------------
def test_iql_actor_lr_decays_to_zero_over_the_runs_total_updates(toy_buffer):
    buffer = toy_buffer()
    learner = make("iql", [{"seed": 0, "actor_lr": 1e-3}])
    learner.attach_data(DataContext(None, buffer, total_updates=8))
    train(learner, buffer, 5)       # the lr of update t is set from t: after update 4 (t = 4) it is half
    assert learner.actor_optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    train(learner, buffer, 4)
    assert learner.actor_optimizer.param_groups[0]["lr"].item() == pytest.approx(0.0, abs=1e-12)
    fixed = make("iql", [{"seed": 0, "actor_lr": 1e-3, "actor_lr_decay_steps": 16}])
    fixed.attach_data(DataContext(None, buffer, total_updates=8))
    train(fixed, buffer, 9)
    assert fixed.actor_optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 2)))


# --- item 7: COMBO's push-down states -----------------------------------------------------------------------------
@pytest.mark.parametrize("states, rows", [("model", 8), ("mixed", 16)])
def test_combo_pushes_q_down_on_model_states_or_on_all(monkeypatch, states, rows):
    from offline_sweeps.algorithms import combo
    seen = {}
    original = combo.sampled_actions

    def recording(learner, observations, next_observations, n):
        seen["observations"] = observations
        return original(learner, observations, next_observations, n)
    monkeypatch.setattr(combo, "sampled_actions", recording)
    learner = make("combo", [{"seed": 0}], real_ratio=0.5, push_down_states=states)
    batch = Batch(randn(1, 16, OBS), randn(1, 16, ACT).tanh(), randn(1, 16, seed=2), randn(1, 16, OBS, seed=3),
                  torch.zeros(1, 16), torch.zeros(1, 16))
    learner.critic_objective(batch, torch.zeros(1, 16))
    torch.testing.assert_close(seen["observations"], batch.observations[:, 16 - rows:])
    assert COMBOConfig().push_down_states == "model"
    with pytest.raises(ConfigError, match="push_down_states"):
        COMBOConfig(push_down_states="real")


# --- item 8: BC as CORL runs it --------------------------------------------------------------------------------------
def test_bc_regresses_the_deterministic_policy_on_the_actions_by_default():
    from offline_sweeps.algorithms.bc import action_mse
    actions, data = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]), torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
    assert action_mse(actions, data).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    learner = make("bc", [{"seed": 0}])
    assert learner.config.loss == "mse" and learner.config.actor_lr == 3e-4
    batch = toy_batch()
    with torch.no_grad():
        expected = (learner.policy.deterministic(batch.observations) - batch.actions).pow(2).mean()
    metrics = learner.update(batch)
    torch.testing.assert_close(metrics["train/actor_loss"], expected.view(1))
    log_std = learner.policy.log_std.detach().clone()
    learner.update(batch)
    assert torch.equal(learner.policy.log_std.detach(), log_std)       # the MSE loss leaves the std alone
    nll = make("bc", [{"seed": 0}], loss="nll")
    nll.update(batch)
    assert not torch.equal(nll.policy.log_std.detach(), log_std)


# --- item 9's MOPO difference, now an option: u over every model, as MOPO's code -------------------------------------
def three_model_ensemble():
    """Three members whose outputs ignore the input: member k predicts reward k with std (0.1 (k + 1), 1e-4) on
    (s' - s, r); members 0 and 1 are the elites, member 2 (std 0.3) is not."""
    from offline_sweeps.algorithms.dynamics import DynamicsConfig, DynamicsEnsemble
    model = DynamicsEnsemble(DynamicsConfig(ensemble=3, elites=2, hidden=(4,)), obs_dim=1, act_dim=1)
    with torch.no_grad():
        for parameter in model.net.parameters():
            parameter.zero_()
        for k in range(3):
            model.net.layers[-1].bias[k, 0] = torch.tensor([0.0, float(k), math.log((0.1 * (k + 1)) ** 2),
                                                            math.log(1e-4 ** 2)])
        model.max_logvar.fill_(30.0)
        model.min_logvar.fill_(-30.0)
    return model


@pytest.mark.parametrize("models, u", [("all", 0.3), ("elites", 0.2)])
def test_mopo_uncertainty_is_taken_over_every_model_by_default(models, u):
    from offline_sweeps.algorithms.model_based import ModelBasedConfig
    assert ModelBasedConfig().uncertainty_models == "all"
    model = three_model_ensemble()
    generators = [torch.Generator().manual_seed(0)]
    _, rewards, uncertainty, _ = model.sample_step(torch.zeros(1, 200, 1), torch.zeros(1, 200, 1), generators,
                                                   uncertainty_models=models)
    torch.testing.assert_close(uncertainty, torch.full((1, 200), u), rtol=1e-3, atol=1e-4)
    drawn = set(rewards.round().long().flatten().tolist())
    assert drawn == {0, 1}, drawn                   # only the elites generate data, either way


def test_cql_lagrange_starts_at_the_reference_log_alpha_prime():
    learner = make("cql", [{"seed": 0}], lagrange=True)
    assert learner.config.target_action_gap == 1.0
    torch.testing.assert_close(learner.log_alpha_prime.detach(), torch.ones(1))
