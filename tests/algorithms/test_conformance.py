"""Member k of a packed population equals a solo run of config k; members never leak into each other."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from offline_sweeps.algorithms import ALGORITHMS
from offline_sweeps.algorithms.base import ConfigError
from offline_sweeps.datasets import TransitionBuffer

OBS, ACT = 5, 2
# Per algorithm: four member configs that differ in the constraint knob, learning rates and seed.
POPULATIONS = {
    "iql": [{"expectile": t, "inverse_temperature": b, "seed": s}
            for t, b, s in ((0.5, 1.0, 0), (0.7, 3.0, 1), (0.9, 10.0, 2), (0.6, 0.5, 3))],
    "cql": [{"conservative_weight": a, "seed": s, "critic_lr": lr}
            for a, s, lr in ((0.0, 0, 3e-4), (1.0, 1, 1e-3), (5.0, 2, 3e-4), (10.0, 3, 1e-4))],
    "awac": [{"awac_lambda": lam, "seed": s} for lam, s in ((0.1, 0), (1 / 3, 1), (1.0, 2), (3.0, 3))],
    "sac": [{"seed": s, "actor_lr": lr} for s, lr in ((0, 3e-4), (1, 1e-3), (2, 1e-4), (3, 3e-4))],
    "bc": [{"seed": s, "actor_lr": lr} for s, lr in ((0, 1e-3), (1, 3e-4), (2, 1e-2), (3, 1e-3))],
    # Three updates fit the behaviour policy, the next three train the actor-critic against it.
    "brac": [{"kl_weight": a, "seed": s, "penalty": "value", "behavior_pretrain_steps": 3}
             for a, s in ((0.0, 0), (0.1, 1), (1.0, 2), (10.0, 3))],
    "bear": [{"mmd_threshold": e, "seed": s, "behavior_pretrain_steps": 3}
             for e, s in ((0.01, 0), (0.05, 1), (0.2, 2), (1.0, 3))],
}
SHARED = {"hidden": (16, 16), "batch_size": 32}


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def toy_buffer(device: str = "cpu") -> TransitionBuffer:
    rng = np.random.default_rng(0)
    n = 500
    obs = rng.standard_normal((n, OBS)).astype(np.float32)
    buffer = TransitionBuffer(n, OBS, ACT, device)
    buffer.add(obs, rng.uniform(-1, 1, (n, ACT)), rng.standard_normal(n), np.roll(obs, 1, 0),
               rng.random(n) < 0.05, np.zeros(n))
    return buffer


def make(name: str, members: list[dict], device: str = "cpu"):
    learner_class = ALGORITHMS[name]
    configs = [learner_class.Config.from_dict({**SHARED, **member}) for member in members]
    return learner_class(configs, OBS, ACT, -torch.ones(ACT), torch.ones(ACT), device)


def train(learner, buffer, updates: int):
    for _ in range(updates):
        learner.guarded_update(buffer.sample(learner.config.batch_size, learner.members, learner.generators))


def member_slice(parameter: torch.Tensor, members: int, k: int) -> torch.Tensor:
    per = parameter.shape[0] // members
    return parameter[k * per:(k + 1) * per]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [*sorted(POPULATIONS), "cql-bfloat16"])
def test_packed_member_equals_solo_run(name, device):
    buffer = toy_buffer(device)
    if name == "cql-bfloat16":      # sampled actions scored in bfloat16, native or emulated
        name, population = "cql", [{**member, "sampled_q_precision": "bfloat16"} for member in POPULATIONS["cql"]]
    else:
        population = POPULATIONS[name]
    packed = make(name, population, device)
    train(packed, buffer, updates=6)
    packed_params = dict(packed.named_parameters())
    for k, member in enumerate(population):
        solo = make(name, [member], device)
        train(solo, buffer, updates=6)
        for param_name, value in solo.named_parameters():
            torch.testing.assert_close(member_slice(packed_params[param_name].detach(), 4, k), value.detach(),
                                       atol=2e-5, rtol=1e-4, msg=lambda m: f"{name} member {k} {param_name}: {m}")


def test_members_may_differ_only_in_packable_fields():
    with pytest.raises(ConfigError, match=r"hidden differs between members.*expectile"):
        make("iql", [{"hidden": (16, 16)}, {"hidden": (32, 32)}])
    with pytest.raises(ConfigError, match=r"IQLConfig.expectile=1.2 must be in \(0, 1\)"):
        make("iql", [{"expectile": 1.2}])
    with pytest.raises(ConfigError, match=r"unknown IQLConfig key\(s\) \['tau'\]"):
        make("iql", [{"tau": 0.7}])
    with pytest.raises(ConfigError, match="conservative_weight"):
        make("cql", [{"conservative_weight": -1.0}])
    with pytest.raises(ConfigError, match="awac_lambda"):
        make("awac", [{"awac_lambda": 0.0}])


@pytest.mark.parametrize("device", DEVICES)
def test_a_diverging_member_is_frozen_and_the_others_go_on(device, tmp_path):
    buffer = toy_buffer(device)
    # Member 1's critic learning rate is absurd: its Q-values blow past the bound within a few updates.
    population = [{"seed": 0}, {"seed": 1, "critic_lr": 1e4}, {"seed": 2}]
    packed = make("iql", [{**m, "divergence_bound": 1e3} for m in population], device)
    train(packed, buffer, updates=20)
    assert packed.diverged.tolist() == [False, True, False]
    torch.save(packed.checkpoint(), tmp_path / "state.pt")
    train(packed, buffer, updates=1)        # the host learns of the divergence one update late
    frozen = {n: member_slice(p.detach(), 3, 1).clone() for n, p in packed.named_parameters()}
    train(packed, buffer, updates=4)
    for n, p in packed.named_parameters():
        torch.testing.assert_close(member_slice(p.detach(), 3, 1), frozen[n], equal_nan=True)
    # A checkpoint holds the frozen state: a restored population continues exactly.
    resumed = make("iql", [{**m, "divergence_bound": 1e3} for m in population], device)
    resumed.restore(torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True))
    train(resumed, buffer, updates=5)
    for (n, a), (_, b) in zip(packed.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, equal_nan=True, msg=lambda m: f"{n}: {m}")
    # The healthy members are exactly what they would have been alone.
    for k in (0, 2):
        solo = make("iql", [{**population[k], "divergence_bound": 1e3}], device)
        train(solo, buffer, updates=25)
        for n, p in solo.named_parameters():
            torch.testing.assert_close(member_slice(dict(packed.named_parameters())[n].detach(), 3, k), p.detach(),
                                       atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_restores_weights_optimizers_and_randomness(device, tmp_path):
    buffer = toy_buffer(device)
    straight = make("cql", POPULATIONS["cql"][:2], device)
    train(straight, buffer, 4)
    resumed = make("cql", POPULATIONS["cql"][:2], device)
    train(resumed, buffer, 2)
    torch.save(resumed.checkpoint(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)   # as TrainRun.load reads it
    fresh = make("cql", POPULATIONS["cql"][:2], device)
    fresh.restore(state)
    train(fresh, buffer, 2)
    for (n, a), (_, b) in zip(straight.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{n}: {m}")
    assert dataclasses.asdict(fresh.config) == dataclasses.asdict(straight.config)


def test_a_checkpoint_restores_only_on_the_device_type_it_was_written_on():
    state = make("iql", POPULATIONS["iql"][:1]).checkpoint()
    state["generator_device"] = "cuda"
    with pytest.raises(ConfigError, match="written on cuda and this run is on cpu: resume it with device: cuda"):
        make("iql", POPULATIONS["iql"][:1]).restore(state)
