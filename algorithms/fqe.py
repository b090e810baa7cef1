"""Offline policy evaluation inside every trial: pick a setting without the test environment.

Fitted Q Evaluation (Le, Voloshin & Yue, 2019, "Batch Policy Learning under Constraints"; the criterion
Paine et al., 2020, "Hyperparameter Selection for Offline Reinforcement Learning", found the most reliable)
fits, for each member's policy pi, a fresh critic on the dataset's transitions by TD learning:

    Q(s, a) <- r + gamma (1 - terminal) Q_target(s', pi(s')),      ope/fqe_value = mean over start states s0 of Q(s0, pi(s0))

pi is the member's evaluation-mode action (`Learner.act`, what the env evaluation runs), s0 the dataset's
episode start states, the value on the env's own reward scale. The choices follow the FQE of Fu et al., 2021
("Benchmarks for Deep Off-Policy Evaluation", google-research/policy_eval/q_fitter.py and train_eval.py): one
256x256 critic, squared TD error (d3rlpy's continuous FQE also uses MSE; Huber only in its discrete one),
Adam at lr 3e-4, batch 256, Polyak target at 0.005, targets clipped to the range of values the rewards allow,
the critic's output scaled by 1 / (1 - gamma). Differences from that code: no weight decay (it uses AdamW at
1e-5), a budget of at most 100k updates instead of 1M (a tenth of a default trial; see `FQEConfig.updates`), and
the clip range [min(0, r_min), max(0, r_max)] / (1 - gamma), which also holds for episodes that terminate.

The fit runs on the original rewards: the buffer's r * reward_scale + reward_bias is undone on every sampled
reward, so a bias changes nothing (no b / (1 - gamma) to subtract). Internally rewards are divided by their mean
magnitude c and the critic outputs (1 - gamma) Q / c, both exact reparametrizations that keep its outputs near 1.
Observations stay as the buffer holds them (normalized when the run normalizes them): the policy reads those.

Two cheaper criteria use the algorithm's own critic (`Learner.q_value`, a min over twins where it has them):
ope/critic_initial_q, Q(s0, pi(s0)) at the same start states, and ope/td_error, its mean squared TD error
r + gamma (1 - d) Q(s', pi(s')) - Q(s, a) on a fixed sample of `TD_SAMPLE` transitions (held-out episodes when
TrainConfig.holdout_fraction > 0, else training transitions). That target approximates each algorithm's own
(IQL bootstraps from V, SAC adds an entropy term, CQL/BEAR use a target network). Both are reported on the env's
reward scale: the TD residual divided by reward_scale; Q minus reward_bias / (1 - gamma), divided by reward_scale,
exact for chains that do not terminate (with terminations a bias b contributes b (1 - gamma^T) / (1 - gamma)).

Nothing here touches a learner's state or randomness: FQE draws its initialization and minibatches from its own
generators (member seed + FQE_SEED, fresh for every fit, so a resumed trial computes the same value), and
acting runs with every generator of the learner put back afterwards (BEAR's max-Q acting draws noise).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .base import CheckedConfig, ConfigError, check_field_types
from .compiled import configure_compiler
from .networks import PackedCritic, init_members, polyak_update
from .optim import PackedAdam, descend
from .streams import CounterStreams

FQE_SEED = 2_000_003         # offset of FQE's generators' seeds from the members' own
HOLDOUT_SEED = 0             # which episodes are held out: a property of the data, the same in every trial
TD_SAMPLE = 10_000           # transitions in ope/td_error's fixed sample
DEFAULT_MAX_UPDATES = 100_000
CHUNK = 4096                 # states per forward pass when acting or scoring many states

Policy = Callable[[torch.Tensor], torch.Tensor]     # [P, N, obs] -> [P, N, act]


@dataclasses.dataclass
class FQEConfig(CheckedConfig):
    """The `fqe:` settings of a training run. Defaults: google-research/policy_eval's FQE (module docstring)."""
    KIND = "fqe"
    enabled: bool = True
    updates: int | None = None        # None: min(100k, total_updates // 10) at the end of the run, and
                                      # min(100k, eval_every // 10) at the other evaluations (every_evaluation)
    every_evaluation: bool = False    # also fit at every evaluation, not only at the run's last
    batch_size: int = 256
    lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)
    critics: int = 1                  # an ensemble whose mean is the estimate (policy_eval and d3rlpy: 1)
    polyak: float = 0.005
    clip_target: bool = True          # targets within [min(0, r_min), max(0, r_max)] / (1 - gamma)
    start_states: int | None = None   # the first this many episodes' start states; None: every episode's

    def __post_init__(self):
        check_field_types(self)
        self.layer_sizes("hidden")
        self.check(self.updates is None or self.updates >= 1, "updates",
                   "a whole number >= 1, or null for min(100000, total_updates // 10)")
        self.check(self.batch_size >= 1, "batch_size", "a whole number >= 1")
        self.check(self.lr > 0, "lr", "positive")
        self.check(self.critics >= 1, "critics", "a whole number >= 1")
        self.check(0.0 < self.polyak <= 1.0, "polyak", "in (0, 1]")
        self.check(self.start_states is None or self.start_states >= 1, "start_states",
                   "a whole number >= 1, or null for every episode's")

    def budget(self, final: bool, eval_every: int, total_updates: int) -> int:
        """FQE updates for one fit: `updates`, or a tenth of the learner's updates it follows (at least 1)."""
        if self.updates is not None:
            return self.updates
        return max(1, min(DEFAULT_MAX_UPDATES, (total_updates if final else eval_every) // 10))


class FQEResult(NamedTuple):
    values: np.ndarray         # [P] ope/fqe_value, NaN for the members not evaluated
    seconds: float
    updates_per_second: float


# --- the math ---------------------------------------------------------------------------------------------
def fqe_target(rewards: torch.Tensor, terminals: torch.Tensor, next_q: torch.Tensor, gamma: float,
               low: float | None = None, high: float | None = None) -> torch.Tensor:
    """r + gamma (1 - terminal) Q_target(s', pi(s')), clamped to [low, high] when given; `[P, B]` each."""
    target = rewards + gamma * (1.0 - terminals) * next_q
    return target if low is None else target.clamp(low, high)


def td_errors(q: torch.Tensor, rewards: torch.Tensor, terminals: torch.Tensor, next_q: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """r + gamma (1 - d) Q(s', pi(s')) - Q(s, a): `[P, N]`."""
    return fqe_target(rewards, terminals, next_q, gamma) - q


def original_rewards(rewards: torch.Tensor, reward_scale: float, reward_bias: float) -> torch.Tensor:
    """The env's rewards back from the buffer's r * reward_scale + reward_bias."""
    return (rewards - reward_bias) / reward_scale


# --- acting without disturbing the learner ------------------------------------------------------------------
@contextlib.contextmanager
def generators_untouched(learner) -> Iterator[None]:
    """Every torch.Generator the learner holds (alone or in a list) is put back as it was on leaving."""
    generators = [g for value in vars(learner).values()
                  for g in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(g, torch.Generator)]
    states = [g.get_state() for g in generators]
    try:
        yield
    finally:
        for generator, state in zip(generators, states):
            generator.set_state(state)


@torch.no_grad()
def policy_actions(policy: Policy, observations: torch.Tensor, members: int) -> torch.Tensor:
    """Each member's action at each of N shared states: `[N, obs]` -> `[P, N, act]`, in chunks of CHUNK states;
    a non-finite action (a broken member's) becomes 0, so it cannot reach the other members' arithmetic."""
    parts = [policy(chunk.unsqueeze(0).expand(members, *chunk.shape)) for chunk in observations.split(CHUNK)]
    return torch.nan_to_num(torch.cat(parts, 1), nan=0.0, posinf=0.0, neginf=0.0)


# --- Fitted Q Evaluation ------------------------------------------------------------------------------------
def fitted_q_evaluation(policy: Policy, buffer, start_observations: torch.Tensor, gamma: float,
                        seeds: Sequence[int], config: FQEConfig, updates: int, reward_scale: float = 1.0,
                        reward_bias: float = 0.0, evaluate: np.ndarray | None = None, compiled: bool = False,
                        compile_mode: str = "default", graph: bool = False) -> FQEResult:
    """ope/fqe_value for P = len(seeds) policies packed: `policy` maps `[P, N, obs]` to `[P, N, act]`, `buffer`
    is the run's TransitionBuffer (rewards r * reward_scale + reward_bias), `start_observations` `[S, obs]` as
    the buffer stores observations. Members with `evaluate[p]` False (diverged) get NaN.

    pi(s') is computed once for every transition (`[P, N, act]`, a table P * act / (2 obs + act + 3) the size of
    the buffer), so the hot loop is one critic update on gathered rows: no policy pass, no host sync."""
    P, device = len(seeds), buffer.device
    started = time.perf_counter()
    size = buffer.size
    data = buffer.gather(torch.arange(size, device=device))
    next_actions = policy_actions(policy, data.next_observations, P)                    # [P, N, act]
    start_actions = policy_actions(policy, start_observations, P)                         # [P, S, act]
    rewards = original_rewards(data.rewards, reward_scale, reward_bias)
    magnitude = float(rewards.abs().mean()) or 1.0
    # Q lies in [min(0, r_min), max(0, r_max)] / (1 - gamma): in the critic's units, [min(0, r_min), max(0, r_max)] / c
    low = min(0.0, float(rewards.min())) / magnitude if config.clip_target else None
    high = max(0.0, float(rewards.max())) / magnitude if config.clip_target else None
    del data

    generators = [torch.Generator(device=device).manual_seed(int(seed) + FQE_SEED) for seed in seeds]
    critic = PackedCritic(P, buffer.obs_dim, buffer.act_dim, config.hidden, config.critics).to(device)
    init_members(critic, generators)
    target = copy.deepcopy(critic).requires_grad_(False)
    optimizer = PackedAdam(critic.parameters(), lr=config.lr)
    act_index = (-1, -1, buffer.act_dim)
    draws = generators
    if compiled or graph:
        draws = CounterStreams([int(seed) + FQE_SEED for seed in seeds], device)
        optimizer.capture()

    def update() -> None:
        index = buffer.sample_indices(config.batch_size, P, draws)                         # [P, B]
        batch = buffer.gather(index)
        with torch.no_grad():
            next_a = next_actions.gather(1, index.unsqueeze(-1).expand(*act_index))
            next_q = target(batch.next_observations, next_a).mean(1)                     # [P, B]
            # the critic's units: (1 - gamma) Q / magnitude, so the reward enters as (1 - gamma) r / magnitude
            scaled = (1 - gamma) * original_rewards(batch.rewards, reward_scale, reward_bias) / magnitude
            y = fqe_target(scaled, batch.terminals, next_q, gamma, low, high)
        q = critic(batch.observations, batch.actions)                                     # [P, E, B]
        loss = (q - y[:, None]).pow(2).mean(-1).sum()
        descend(optimizer, loss)
        polyak_update(target, critic, config.polyak)

    if compiled:
        configure_compiler()
        update = torch.compile(update, fullgraph=True, dynamic=False, mode=compile_mode)
    for _ in range(updates):
        update()
    with torch.no_grad():
        observations = start_observations.unsqueeze(0).expand(P, *start_observations.shape)
        estimate = torch.cat([critic(o, a).mean(1) for o, a in
                              zip(observations.split(CHUNK, 1), start_actions.split(CHUNK, 1))], 1)   # [P, S]
        values = (estimate.mean(1).double() * magnitude / (1 - gamma)).cpu().numpy()
    seconds = time.perf_counter() - started
    if evaluate is not None:
        values = np.where(evaluate, values, np.nan)
    return FQEResult(values, seconds, updates / seconds)


# --- the algorithm's own critic -----------------------------------------------------------------------------
@torch.no_grad()
def critic_initial_q(learner, start_observations: torch.Tensor, reward_scale: float = 1.0,
                     reward_bias: float = 0.0) -> np.ndarray:
    """ope/critic_initial_q `[P]`: mean over start states of the learner's Q(s0, pi(s0)), on the env's scale."""
    P, gamma = learner.members, learner.config.gamma
    with generators_untouched(learner):
        actions = policy_actions(learner.act, start_observations, P)
        observations = start_observations.unsqueeze(0).expand(P, *start_observations.shape)
        q = torch.cat([learner.q_value(o, a) for o, a in zip(observations.split(CHUNK, 1), actions.split(CHUNK, 1))], 1)
    q = q.double().mean(1).cpu().numpy()
    return (q - reward_bias / (1 - gamma)) / reward_scale


@torch.no_grad()
def critic_td_error(learner, sample, reward_scale: float = 1.0) -> np.ndarray:
    """ope/td_error `[P]`: the learner's mean squared TD residual on `sample` (a Batch of N shared transitions,
    `[N, ...]` fields, rewards as the buffer holds them), in squared env reward units."""
    P, gamma = learner.members, learner.config.gamma

    def shared(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(P, *x.shape)

    with generators_untouched(learner):
        next_actions = policy_actions(learner.act, sample.next_observations, P)
        squares = []
        for rows in torch.arange(len(sample.rewards), device=sample.rewards.device).split(CHUNK):
            q = learner.q_value(shared(sample.observations[rows]), shared(sample.actions[rows]))
            next_q = learner.q_value(shared(sample.next_observations[rows]), next_actions[:, rows])
            delta = td_errors(q, shared(sample.rewards[rows]), shared(sample.terminals[rows]), next_q, gamma)
            squares.append(delta.double().pow(2))
    return (torch.cat(squares, 1).mean(1) / reward_scale ** 2).cpu().numpy()


# --- held-out episodes --------------------------------------------------------------------------------------
def split_episodes(dataset, fraction: float):
    """(training, held_out) OfflineDatasets: `fraction` of the episodes (at least one, HOLDOUT_SEED's draw) held
    out whole, so no held-out transition shares an episode with a training one."""
    episodes = dataset.num_episodes
    held = max(1, round(fraction * episodes))
    if held >= episodes:
        raise ConfigError(f"holdout_fraction={fraction} would hold out {held} of {dataset.dataset_id}'s {episodes} "
                          f"episodes and leave none to train on; use a smaller fraction or 0")
    chosen = np.zeros(episodes, bool)
    chosen[np.random.default_rng(HOLDOUT_SEED).permutation(episodes)[:held]] = True
    return subset_episodes(dataset, ~chosen), subset_episodes(dataset, chosen)


def subset_episodes(dataset, keep: np.ndarray):
    """The OfflineDataset of the episodes where `keep` (`[E]` bool) is True, in their order."""
    rows = np.concatenate([np.arange(s, s + n) for s, n in
                           zip(dataset.episode_starts[keep], dataset.episode_lengths[keep])])
    lengths = dataset.episode_lengths[keep]
    return dataclasses.replace(
        dataset, observations=dataset.observations[rows], actions=dataset.actions[rows],
        rewards=dataset.rewards[rows], next_observations=dataset.next_observations[rows],
        terminals=dataset.terminals[rows], timeouts=dataset.timeouts[rows],
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), episode_lengths=lengths,
        episode_returns=dataset.episode_returns[keep])


def fixed_sample(buffer, count: int = TD_SAMPLE):
    """A Batch of `[N, ...]` fields: min(count, size) distinct transitions of `buffer`, the same draw every time."""
    generator = torch.Generator(device=buffer.device).manual_seed(HOLDOUT_SEED)
    rows = torch.randperm(buffer.size, generator=generator, device=buffer.device)[:count]
    return buffer.gather(rows)
