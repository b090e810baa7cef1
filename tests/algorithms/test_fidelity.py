"""Each algorithm computes what its authors' code computes, by default (issue 13); each difference is an option.

Items guarded here: BEAR's MMD on raw pre-tanh samples with the authors' kernels (2), CQL's and COMBO's TD target
without the entropy term (3), BRAC's untrained zero entropy weight and the BRAC/BEAR warm start (4), BEAR's
best-of-10 acting (5), IQL's actor-lr schedule over the run's length (6) and COMBO's push-down states (7).
Issue 26's: CQL's temperature at the policy's lr (1), MOPO's authors' lrs and target entropy (2), BRAC's behaviour
fit with its entropy term (3), and (5) each algorithm's data normalization, initialization, policy parameterization
and SAC-family update order as its reference.
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


# --- issue 26: the residue ---------------------------------------------------------------------------------------
# item 1: CQL's temperature learns at the policy's rate (young-geng: alpha_optimizer(lr=policy_lr); CORL the same)
def test_cql_temperature_learns_at_each_members_actor_lr():
    assert CQLConfig().temperature_lr is None
    learner = make("cql", [{"seed": 0}, {"seed": 1, "actor_lr": 1e-4}])
    assert learner.temperature_optimizer.param_groups[0]["lr"].tolist() == pytest.approx([3e-5, 1e-4])
    fixed = make("cql", [{"seed": 0}], temperature_lr=3e-4)
    assert fixed.temperature_optimizer.param_groups[0]["lr"].item() == pytest.approx(3e-4)


# item 2: MOPO's learning rates and target entropy are the MOPO authors'; COMBO keeps OfflineRL-Kit's
def test_mopo_uses_its_authors_learning_rates_and_fixed_target_entropy():
    from offline_sweeps.algorithms.combo import COMBOConfig
    config = MOPOConfig()
    assert (config.actor_lr, config.critic_lr, config.temperature_lr, config.target_entropy) == (3e-4, 3e-4, None, -3.0)
    learner = make("mopo", [{"seed": 0}])
    assert learner.target_entropy == -3.0          # not -|A| (-2 here): base.py fixes -3 for every dataset
    assert learner.temperature_optimizer.param_groups[0]["lr"].item() == pytest.approx(3e-4)
    combo = COMBOConfig()
    assert (combo.actor_lr, combo.temperature_lr, combo.target_entropy) == (1e-4, 1e-4, None)


# item 3: BRAC's behaviour fit keeps the authors' entropy term, and so its std, on near-deterministic data
def near_deterministic_buffer(n: int = 512) -> TransitionBuffer:
    """Actions a fixed function of the state up to noise of 1e-3."""
    rng = torch.Generator().manual_seed(0)
    obs = torch.randn(n, OBS, generator=rng)
    actions = 0.5 * torch.tanh(obs[:, :ACT]) + 1e-3 * torch.randn(n, ACT, generator=rng)
    buffer = TransitionBuffer(n, OBS, ACT)
    buffer.add(obs, actions, torch.randn(n, generator=rng), obs.roll(1, 0), torch.zeros(n), torch.zeros(n))
    return buffer


@pytest.mark.slow
def test_brac_behaviour_fit_keeps_its_std_at_the_entropy_target_where_max_likelihood_collapses():
    """On near-deterministic data pure maximum likelihood drives pi_beta-hat's log-std to its floor (-5), and the KL
    of a policy to it grows by orders of magnitude; the authors' entropy term (its weight tuned towards the entropy
    -|A| = -2, where each log-std sits near -2.4) holds it up. Measured (seeds 0 and 1, 1500 updates): mean log-std
    -1.2 and -2.1 with the entropy term (its weight still swinging about the target), -4.8 without; the initial
    policy's KL to them 3 and 13 against 2803 and 2830."""
    from offline_sweeps.algorithms.brac import BRAC, gaussian_kl
    assert BRACConfig().behavior_entropy is True
    buffer = near_deterministic_buffer()
    obs = randn(2, 256, OBS, seed=5)
    fitted = {}
    for entropy in (True, False):
        configs = [BRACConfig(hidden=(16, 16), batch_size=64, behavior_pretrain_steps=10_000, behavior_lr=1e-2,
                              behavior_entropy=entropy, seed=seed) for seed in (0, 1)]
        learner = BRAC(configs, OBS, ACT, -torch.ones(ACT), torch.ones(ACT))
        train(learner, buffer, 1500)
        with torch.no_grad():
            mu, log_std = learner.behavior.distribution(obs)
            kl = gaussian_kl(*learner.policy.distribution(obs), mu, log_std).mean(-1)
        fitted[entropy] = (log_std.mean(dim=(1, 2)), kl)
    (tuned_log_std, tuned_kl), (plain_log_std, plain_kl) = fitted[True], fitted[False]
    assert ((tuned_log_std > -3.0) & (tuned_log_std < -0.5)).all(), fitted
    assert (plain_log_std < -4.5).all(), fitted
    assert (plain_kl > 50 * tuned_kl).all(), fitted


def test_entropy_weight_gradient_is_the_authors_relu_v2():
    """relu(w) (H - target): the gradient raising w always passes; the one lowering it only while w > 0."""
    from offline_sweeps.algorithms.brac import entropy_weight_loss
    weight = torch.tensor([0.5, -0.2, -0.2, 0.5], requires_grad=True)
    entropy = torch.tensor([-1.0, -1.0, -3.0, -3.0])      # target -2: above, above, below, below
    loss = entropy_weight_loss(weight, entropy, -2.0)
    assert loss.item() == pytest.approx(0.5 * 1.0 + 0.0 + 0.0 + 0.5 * -1.0)
    loss.backward()
    torch.testing.assert_close(weight.grad, torch.tensor([1.0, 0.0, -1.0, -1.0]))


def test_brac_behaviour_loss_by_hand():
    from offline_sweeps.algorithms.brac import behavior_entropy_loss
    sampled, data = torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[-1.0, -2.0], [0.5, 1.5]])
    # member 0: mean(0.5 * 1 + 1, 0.5 * 3 + 2) = 2.5; member 1: mean(0 * 2 - 0.5, 0 - 1.5) = -1
    value = behavior_entropy_loss(sampled, data, torch.tensor([0.5, 0.0]))
    assert value.item() == pytest.approx(2.5 - 1.0)


# item 5: each algorithm's data pipeline, initialization and policy parameterization as its reference
@pytest.mark.parametrize("name, normalize, rewards", [
    ("bc", True, "none"), ("awac", True, "none"), ("iql", False, "iql"), ("cql", False, "none"),
    ("sac", False, "none"), ("brac", False, "none"), ("bear", False, "none"), ("mopo", False, "none"),
    ("combo", False, "none")])
def test_observation_and_reward_normalization_follow_each_reference_unless_set(name, normalize, rewards):
    from offline_sweeps.algorithms.trainer import TrainConfig
    config = TrainConfig(name, "unused")
    assert (config.normalize_observations, config.reward_normalization) == (normalize, rewards)
    config = TrainConfig(name, "unused", normalize_observations=not normalize, reward_normalization="none")
    assert (config.normalize_observations, config.reward_normalization) == (not normalize, "none")


def gram(weight: torch.Tensor) -> torch.Tensor:
    """W^T W or W W^T, whichever is the smaller: a multiple of the identity for a (semi-)orthogonal W."""
    return weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T


def test_iql_layers_start_orthogonal_with_gain_sqrt2_and_zero_bias():
    learner = make("iql", [{"seed": 0}, {"seed": 1}])
    assert learner.config.init == "orthogonal"
    for net in (learner.critic.net, learner.value, learner.policy.net):
        for layer in net.layers[::2]:
            for k in range(layer.weight.shape[0]):
                w = layer.weight[k].detach()
                torch.testing.assert_close(gram(w), 2.0 * torch.eye(min(w.shape)), atol=1e-5, rtol=1e-5)
            assert not layer.bias.detach().any()
    assert not learner.policy.log_std.detach().any()          # policy.py: log_stds initialized to zeros


def xavier_bound(weight: torch.Tensor, gain: float) -> float:
    return gain * math.sqrt(6.0 / sum(weight.shape))


@pytest.mark.parametrize("name, output_gain, hidden", [("cql", 0.01, "default"), ("brac", 1.0, "glorot"),
                                                       ("mopo", 1.0, "glorot")])
def test_sac_family_layers_start_as_their_references(name, output_gain, hidden):
    """CQL: young-geng's nn.Linear hidden layers with a Xavier(0.01) output layer and zero bias; BRAC and MOPO: Keras
    Dense defaults (glorot-uniform, zero bias) everywhere."""
    learner = make(name, [{"seed": 0}])
    for net in (learner.policy.net, learner.critic.net):
        *hidden_layers, output = net.layers[::2]
        for layer in hidden_layers:
            w = layer.weight[0].detach()
            if hidden == "glorot":
                bound = xavier_bound(w, 1.0)
                assert not layer.bias.detach().any() and w.abs().max() <= bound and w.abs().max() > 0.8 * bound
            else:
                assert layer.bias.detach().abs().max() > 0                      # nn.Linear's uniform bias
        w = output.weight[0].detach()
        assert not output.bias.detach().any() and w.abs().max() <= xavier_bound(w, output_gain)
        assert w.abs().max() > 0.5 * xavier_bound(w, output_gain)


def test_awac_mean_is_unbounded_as_corls_and_acting_clips_it():
    assert ALGORITHMS["awac"].Config().tanh_mean is False
    learner = make("awac", [{"seed": 0}])
    with torch.no_grad():
        learner.policy.net.layers[-1].bias.fill_(3.0)             # raw output 3 + ...: past the bound (scale 2)
        obs = randn(1, 8, OBS)
        mean = learner.policy.mean(obs)
        assert mean.min() > 2.0
        torch.testing.assert_close(learner.act(obs), torch.full_like(mean, 2.0))
        actions = torch.zeros(1, 8, ACT)
        log_std = learner.policy.log_std.clamp(-20, 2)
        expected = (-0.5 * (mean / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        torch.testing.assert_close(learner.policy.log_prob(obs, actions), expected)
        learner.policy.log_std.fill_(-30.0)
        assert learner.policy.log_std.clamp(*learner.policy.log_std_bounds).min().item() == -20.0   # CORL's floor
    squashed = make("awac", [{"seed": 0}], tanh_mean=True)
    with torch.no_grad():
        squashed.policy.net.layers[-1].bias.fill_(3.0)
        assert squashed.policy.mean(obs).max() < 2.0


def test_cql_policy_log_std_is_young_gengs_learned_affine_of_the_network_output():
    """log std = m f(s) + b, m and b learned from 1 and -1 and clamped to [-20, 2]; log_std_offset: null is f(s)."""
    learner = make("cql", [{"seed": 0}, {"seed": 1}])
    assert learner.config.log_std_offset == -1.0
    obs = randn(2, 5, OBS)
    with torch.no_grad():
        raw = learner.policy.net(obs).chunk(2, dim=-1)[1]
        torch.testing.assert_close(learner.policy.distribution(obs)[1], raw - 1.0)
        learner.policy.log_std_multiplier.fill_(30.0)
        assert learner.policy.distribution(obs)[1].min().item() >= -20.0
    assert any(p is learner.policy.log_std_shift for p in learner.actor_optimizer.param_groups[0]["params"])
    before = learner.policy.log_std_shift.detach().clone()
    learner.update(toy_batch().__class__(*(x.expand(2, *x.shape[1:]) for x in toy_batch())))
    assert not torch.equal(learner.policy.log_std_shift.detach(), before)
    plain = make("cql", [{"seed": 0}], log_std_offset=None)
    assert plain.policy.log_std_multiplier is None
    with torch.no_grad():
        torch.testing.assert_close(plain.policy.distribution(obs[:1])[1],
                                   plain.policy.net(obs[:1]).chunk(2, dim=-1)[1].clamp(-20, 2))


def test_brac_log_std_is_squashed_into_the_authors_range():
    """networks.py: log_std = LOG_STD_MIN + 0.5 (LOG_STD_MAX - LOG_STD_MIN) (tanh(f) + 1), with -5 and 0."""
    learner = make("brac", [{"seed": 0}])
    obs = randn(1, 5, OBS)
    for policy in (learner.policy, learner.behavior):
        with torch.no_grad():
            raw = policy.net(obs).chunk(2, dim=-1)[1]
            torch.testing.assert_close(policy.distribution(obs)[1], -5.0 + 2.5 * (torch.tanh(raw) + 1))


def test_mopo_policy_log_std_floor_is_softlearnings():
    learner = make("mopo", [{"seed": 0}])
    with torch.no_grad():
        learner.policy.net.layers[-1].bias[..., ACT:] = -30.0
        assert learner.policy.distribution(randn(1, 3, OBS))[1].min().item() == pytest.approx(-20.0)


# item 5: the SAC family's update order, per reference
def one_update(name: str, frozen: str, **shared) -> dict[str, torch.Tensor]:
    """Parameters after one update of a fresh learner whose `frozen` optimizer ("critic", "actor" with the
    temperature's, or "none") does not step: what the other networks' step saw of it."""
    learner = make(name, [{"seed": 0}], **shared)
    silent = {"critic": [learner.critic_optimizer], "actor": [learner.actor_optimizer, learner.temperature_optimizer],
              "none": []}[frozen]
    for optimizer in silent:
        optimizer.step = lambda closure=None: None
    learner.update(toy_batch())
    return {"policy": [p.detach().clone() for p in learner.policy.parameters()],
            "critic": [p.detach().clone() for p in learner.critic.parameters()]}


def moved_the_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("order, actor_sees_new_critic, critic_sees_new_actor", [
    ("critic_first", True, False), ("simultaneous", False, False), ("actor_first", False, True)])
def test_update_order_decides_which_networks_each_loss_sees(order, actor_sees_new_critic, critic_sees_new_actor):
    base = one_update("cql", "none", update_order=order)
    without_critic_step = one_update("cql", "critic", update_order=order)
    without_actor_step = one_update("cql", "actor", update_order=order)
    assert moved_the_same(base["policy"], without_critic_step["policy"]) is not actor_sees_new_critic
    assert moved_the_same(base["critic"], without_actor_step["critic"]) is not critic_sees_new_actor


@pytest.mark.parametrize("name, order", [("sac", "critic_first"), ("cql", "simultaneous"), ("brac", "critic_first"),
                                         ("mopo", "simultaneous"), ("combo", "actor_first")])
def test_update_order_defaults_follow_each_reference(name, order):
    assert ALGORITHMS[name].Config().update_order == order
