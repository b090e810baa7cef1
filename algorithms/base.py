"""What every packed learner shares: per-member configs, per-member randomness, the divergence guard.

A population is a list of P configs of one algorithm. They may differ only in the fields the
algorithm declares `PACKABLE` (its constraint knob, learning rates, the seed); those become `[P]`
tensors. Member p draws its initialization, its noise and (through the trainer) its minibatches from
its own generator seeded with its own seed, so member p of a packed run is exactly the solo run of
config p.

`use_graphs()` readies a learner for a compiled update (`train.compile`; compiled.py compiles it): its noise and
minibatch rows come from counter-based streams on the device (streams.py) instead of the generators (which still
seed the weights), its optimizers are captured (optim.py) and its divergence guard runs on the device. A learner
that never calls it keeps the generator streams, so the eager path's results are those it always had.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn

from .networks import INITS, init_members
from .streams import CounterStreams


MAX_BATCH_SIZE = 1 << 20    # a minibatch past a million transitions is a typo (batch_size: 1e9 hung)
MAX_SEED = 2**63 - 1        # torch.Generator.manual_seed and numpy take seeds in [0, 2**63) everywhere they meet
MAX_LAYER = 65536           # one 65536-wide square layer is 16 GiB of float32 weights: wider is a typo


class ConfigError(ValueError):
    """A bad algorithm config; the message names the field and what is allowed."""


class CheckedConfig:
    """Validation shared by every config dataclass: `check` names the bad field and what is allowed,
    `from_dict` rejects unknown keys and lists the allowed ones."""
    KIND: ClassVar[str] = ""             # how error messages name the config; default: the class name

    def check(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}.{name}={getattr(self, name)!r} must be {allowed}")

    def layer_sizes(self, name: str) -> None:
        """Field `name` (a list of layer sizes, type-checked already) as a tuple of ints from 1 to MAX_LAYER."""
        setattr(self, name, tuple(int(h) for h in getattr(self, name)))
        sizes = getattr(self, name)
        self.check(bool(sizes) and 0 < min(sizes) and max(sizes) <= MAX_LAYER, name,
                   f"a list of layer sizes from 1 to {MAX_LAYER}")

    def seed_in_range(self, name: str) -> None:
        """Field `name` is a seed torch and numpy both take: 0 to MAX_SEED."""
        self.check(0 <= getattr(self, name) <= MAX_SEED, name, "a whole number from 0 to 2**63 - 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.KIND or cls.__name__} key(s) {unknown}; allowed: {', '.join(sorted(names))}")
        return cls(**values)


def _fits(value, annotation: str) -> bool:
    """Does `value` (from YAML) fit the field annotation `annotation` (a string: annotations are postponed)?"""
    options = [option.strip() for option in annotation.split("|")]
    if "None" in options and value is None:
        return True
    for option in options:
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value)
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "str" and isinstance(value, str):
            return True
        if option == "tuple[int, ...]" and isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return True
        if option in ("dict", "list") and isinstance(value, {"dict": dict, "list": (list, tuple)}[option]):
            return True
        if option not in ("int", "float", "bool", "str", "tuple[int, ...]", "dict", "list", "None"):
            return True            # a type this check does not know: left to the config's own checks
    return False


def check_field_types(config) -> None:
    """Refuse a field whose value has the wrong type (`total_updates: lots`, `expectile: '0.7'`) or a float
    that is NaN or infinite, with a ConfigError naming the field, before any comparison can raise a TypeError."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(field.type, str) and not _fits(value, field.type):
            raise ConfigError(f"{type(config).__name__}.{field.name}={value!r} must be {field.type.replace('|', 'or')}"
                              f"{' (finite)' if 'float' in field.type else ''}")


@dataclasses.dataclass
class LearnerConfig(CheckedConfig):
    """Fields every algorithm has; each algorithm's config extends it with its own knobs."""
    seed: int = 0
    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    gamma: float = 0.99
    divergence_bound: float = 1e6     # |Q| or |loss| past this marks a member diverged
    init: str = "default"             # the networks' weight initialization (networks.INITS): the reference's

    def __post_init__(self):
        check_field_types(self)
        self.layer_sizes("hidden")
        self.seed_in_range("seed")
        self.check(self.init in INITS, "init", " or ".join(INITS))
        self.check(1 <= self.batch_size <= MAX_BATCH_SIZE, "batch_size",
                   f"a whole number from 1 to {MAX_BATCH_SIZE}")
        self.check(0.0 <= self.gamma < 1.0, "gamma", "in [0, 1)")
        self.check(self.divergence_bound > 0, "divergence_bound", "positive")


@dataclasses.dataclass
class DataContext:
    """What the trainer hands a learner once, before training (`Learner.attach_data`)."""
    dataset: Any                      # the OfflineDataset (raw arrays, env id, episode starts)
    buffer: Any                       # its TransitionBuffer: normalized observations, scaled rewards
    env_id: str | None = None         # the evaluation env
    reward_scale: float = 1.0         # buffer reward = env reward * reward_scale + reward_bias
    reward_bias: float = 0.0
    model: dict = dataclasses.field(default_factory=dict)   # DynamicsConfig fields (model-based learners)
    model_dir: str | None = None      # dynamics cache folder; None: dynamics.default_model_dir()
    total_updates: int | None = None  # the run's training length (IQL's lr schedule follows it); None: unknown


class Learner(nn.Module):
    """P learners of one algorithm packed into one module.

    Subclasses build their networks in `__init__` (then call `self.finish_init()`), and implement
    `update(batch) -> {metric: [P] tensor}`, `act(obs [P, N, obs]) -> [P, N, act]` (deterministic),
    and, for critics, `q_value(obs, actions) -> [P, N]`. Learners that need more than minibatches of the
    dataset (model-based ones) override the hooks `attach_data`, `sample_batch` and `evaluation_metrics`.
    """
    Config: ClassVar[type[LearnerConfig]] = LearnerConfig
    PACKABLE: ClassVar[tuple[str, ...]] = ("seed",)
    # Constraint knob -> the direction that constrains more ("higher" or "lower"); the report orients plots by it.
    CONSTRAINT_KNOBS: ClassVar[dict[str, str]] = {}
    USES_MODEL: ClassVar[bool] = False        # trains or loads a dynamics model in `attach_data`
    # What the training run does to the data when its config leaves it to the algorithm (TrainConfig's
    # `normalize_observations: null`, `reward_normalization: null`): what the algorithm's reference code does.
    NORMALIZE_OBSERVATIONS: ClassVar[bool] = False
    REWARD_NORMALIZATION: ClassVar[str] = "none"
    COUNTS_UPDATES: ClassVar[bool] = False    # keeps a host-side `updates` buffer (phases, schedules): `count_update`

    def __init__(self, configs: Sequence[LearnerConfig], obs_dim: int, act_dim: int,
                 action_low: torch.Tensor, action_high: torch.Tensor, device: torch.device | str = "cpu"):
        super().__init__()
        self.configs = list(configs)
        if not self.configs:
            raise ConfigError("a population needs at least one member config")
        for config in self.configs:
            if not isinstance(config, self.Config):
                raise ConfigError(f"{type(self).__name__} takes {self.Config.__name__}, got {type(config).__name__}")
        shared = [f.name for f in dataclasses.fields(self.Config) if f.name not in self.PACKABLE]
        for name in shared:
            values = {repr(getattr(c, name)) for c in self.configs}
            if len(values) > 1:
                raise ConfigError(f"{name} differs between members ({', '.join(sorted(values))}); only "
                                  f"{', '.join(self.PACKABLE)} may differ inside a population")
        self.config = self.configs[0]
        self.members = len(self.configs)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32).expand(act_dim).clone())
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32).expand(act_dim).clone())
        self.generators = [torch.Generator(device=self.device).manual_seed(int(c.seed)) for c in self.configs]
        self.register_buffer("diverged", torch.zeros(self.members, dtype=torch.bool))
        self._frozen: dict[str, torch.Tensor] = {}       # diverged members' parameters, as they are kept
        self._frozen_mask = torch.zeros_like(self.diverged)  # the members in `_frozen`
        self._frozen_rows: dict[str, torch.Tensor] = {}     # their rows in each parameter
        self._newly_diverged: torch.Tensor | None = None     # did the last update break a member? (read one late)
        self.streams: CounterStreams | None = None           # set by `use_graphs`: the compiled update's randomness
        self.graph_phase = None                              # the host's `phase()` for the update being traced

    def knob(self, name: str) -> torch.Tensor:
        """Field `name` of every member as a `[P]` float tensor on the learner's device."""
        return torch.tensor([float(getattr(c, name)) for c in self.configs], device=self.device)

    def finish_init(self) -> None:
        """Move to the device and seed every member's weights there, from its own generator (which lives on the
        device: a CUDA generator cannot fill a CPU tensor)."""
        self.to(self.device)
        init_members(self, self.generators)

    def normal(self, *shape: int, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """`[P, *shape]` standard normal noise, member p's from its own generator (`generators[p]` when given);
        from its counter stream once `use_graphs` ran."""
        if self.streams is not None and generators is None:
            return self.streams.normal(*shape)
        return torch.stack([torch.randn(shape, generator=g, device=self.device)
                            for g in (self.generators if generators is None else generators)])

    def uniform(self, *shape: int) -> torch.Tensor:
        """`[P, *shape]` uniform noise in [0, 1), member p's from its own generator (counter stream: `use_graphs`)."""
        if self.streams is not None:
            return self.streams.uniform(*shape)
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])

    # --- hooks the trainer calls ---------------------------------------------------------------------
    def attach_data(self, context: DataContext) -> None:
        """Called once by the trainer after construction (and before `restore`); model-free learners need nothing."""

    def sample_batch(self, buffer) -> Any:
        """The next `[P, B, ...]` minibatch; member p's rows drawn by its own generator (counter stream: `use_graphs`)."""
        if self.streams is not None:
            return buffer.gather(self.streams.randint(buffer.size, self.config.batch_size))
        return buffer.sample(self.config.batch_size, self.members, self.generators)

    def prepare_batch(self, buffer) -> None:
        """Host-side work before a compiled update's minibatch is drawn inside its graph (model-based learners:
        rollout refreshes); an eager `sample_batch` does it itself."""

    def evaluation_metrics(self, episodes: int, seed: int) -> dict[str, Any]:
        """Extra `[P]` metrics reported with each evaluation (model-based learners: model and rollout figures)."""
        return {}

    def update(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def q_value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} learns no Q-function")

    @classmethod
    def check_run_length(cls, config: LearnerConfig, total_updates: int) -> None:
        """Raise a ConfigError if a run of `total_updates` cannot train `config` (BRAC and BEAR: their phases)."""

    @property
    def has_critic(self) -> bool:
        return type(self).q_value is not Learner.q_value

    # --- divergence guard -------------------------------------------------------------------------
    def guarded_update(self, batch) -> dict[str, torch.Tensor]:
        """`update`, then mark members whose metrics went non-finite or past the bound as diverged.

        A diverged member is frozen: from the update after the one that broke it, its parameters are put
        back to their values then after every update, so its state stops changing. Members never share
        gradients, so the others are untouched either way.

        The host learns of a divergence one update late: it reads the last update's flag after queueing this
        update's work, so on a GPU the check never leaves the device idle. (Reading the flag at once cost 14%
        of IQL's and 17% of CQL's updates/s at P=1 on an H100.)
        """
        metrics = self.update(batch)
        if self.streams is not None:
            return self._guard_on_device(metrics)
        with torch.no_grad():
            if self._frozen:
                self._restore_frozen()
            if self._newly_diverged is not None and bool(self._newly_diverged):
                self._freeze_diverged()
            values = torch.stack([value.float() for value in metrics.values()])          # [metrics, P]
            broken = (~torch.isfinite(values) | (values.abs() > self.config.divergence_bound)).any(0)
            self._newly_diverged = (broken & ~self.diverged).any()
            self.diverged |= broken
        metrics["diverged"] = self.diverged.float()
        return metrics

    def _guard_on_device(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The guard of `guarded_update` with no host read, for a compiled update: the same freezing, one update
        late, as masked copies. `graph_frozen` holds the members diverged before the last update; their rows are put
        back to `graph_snapshot`, which keeps every other row as it is now."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                rows = self.graph_frozen.repeat_interleave(p.shape[0] // self.members).view(-1, *([1] * (p.dim() - 1)))
                p.copy_(torch.where(rows, self.graph_snapshot[name], p))
                self.graph_snapshot[name].copy_(p)
            self.graph_frozen.copy_(self.diverged)
            values = torch.stack([value.float() for value in metrics.values()])
            self.diverged |= (~torch.isfinite(values) | (values.abs() > self.config.divergence_bound)).any(0)
        metrics["diverged"] = self.diverged.float()
        return metrics

    def _freeze_diverged(self) -> None:
        self._frozen_mask = self.diverged.clone()
        self._index_frozen_rows()
        self._frozen = {name: p.detach().index_select(0, self._frozen_rows[name]).clone()
                        for name, p in self.named_parameters()}

    def _index_frozen_rows(self) -> None:
        """Each parameter's frozen rows (its first axis holds P members or P x E ensemble slices) as an index
        tensor, found once per divergence: a boolean mask would make every later restore wait for the device
        to count its rows."""
        self._frozen_rows = {name: self._frozen_mask.repeat_interleave(p.shape[0] // self.members).nonzero().flatten()
                             for name, p in self.named_parameters()}

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        for name, p in self.named_parameters():
            p.index_copy_(0, self._frozen_rows[name], self._frozen[name])

    # --- compiled updates (train.compile) -------------------------------------------------------------
    def phase(self):
        """What the host knows of the training phase (BRAC and BEAR: pretraining, warming up); a compiled update has
        one graph per phase, traced with `graph_phase` set to it."""
        return None

    def current_phase(self):
        return self.phase() if self.streams is None else self.graph_phase

    def critic_gradients(self, on: bool) -> None:
        """The critic's gradients off around an actor loss (the backward then skips its weights) and on again.
        A compiled update leaves them on: its `descend` differentiates only the stepped optimizer's parameters
        anyway, and a graph cannot flip requires_grad."""
        if self.streams is None:
            self.critic.requires_grad_(on)

    def count_update(self) -> None:
        """One more update on the host's `updates` counter (`COUNTS_UPDATES`): inside the update when eager; after
        each compiled update, outside its graph, when `use_graphs` ran."""
        if self.streams is None:
            self.updates += 1

    def use_graphs(self) -> None:
        """Ready the update for one capturable graph: counter streams, captured optimizers, the guard on the device,
        a device-side update count (`graph_updates`). Call once, after construction, before `restore`."""
        self.streams = CounterStreams([c.seed for c in self.configs], self.device)
        for optimizer in self.optimizers().values():
            optimizer.capture()
        self.graph_snapshot = {name: p.detach().clone() for name, p in self.named_parameters()}
        self.graph_frozen = self.diverged.clone()
        self.graph_updates = torch.zeros((), dtype=torch.long, device=self.device)

    def graph_update(self, buffer) -> dict[str, torch.Tensor]:
        """One whole update, sampling included: the function compiled.py compiles (and runs eagerly to compare)."""
        metrics = self.guarded_update(self.sample_batch(buffer))
        self.graph_updates += 1
        return metrics

    def graph_state(self) -> dict[str, Any]:
        return {"streams": self.streams.state_dict(), "snapshot": self.graph_snapshot, "frozen": self.graph_frozen,
                "updates": self.graph_updates}

    def restore_graph_state(self, state: dict[str, Any]) -> None:
        self.streams.load_state_dict(state["streams"])
        for name, value in state["snapshot"].items():
            self.graph_snapshot[name].copy_(value)
        self.graph_frozen.copy_(state["frozen"])
        self.graph_updates.copy_(state["updates"])
        for optimizer in self.optimizers().values():
            optimizer.capture()

    # --- checkpointing ----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.optim.Optimizer)}

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer and RNG states, frozen members. The tensors
        are the live ones, not copies: write the state out (`torch.save`) before training on."""
        return {"model": self.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
                "generators": [g.get_state() for g in self.generators],
                "generator_device": self.device.type,
                "frozen": self._frozen, "frozen_mask": self._frozen_mask,
                "newly_diverged": bool(self._newly_diverged is not None and self._newly_diverged),
                **({} if self.streams is None else {"graph": self.graph_state()})}

    def restore(self, state: dict[str, Any]) -> None:
        """Load `checkpoint()`'s state, wherever its tensors lie (a checkpoint read onto the CPU restores on a GPU).

        Random-number states differ between CPU and CUDA generators, so a checkpoint restores only on the
        device type it was written on.
        """
        if ("graph" in state) != (self.streams is not None):
            written = "with" if "graph" in state else "without"
            raise ConfigError(f"this checkpoint was written {written} train.compile, whose random streams differ: "
                              f"resume it with compile: {str('graph' in state).lower()}")
        written_on = state.get("generator_device", "cpu")
        if written_on != self.device.type:
            raise ConfigError(f"this checkpoint was written on {written_on} and this run is on {self.device.type}: "
                              f"resume it with device: {written_on} (random-number states do not cross device types)")
        self.load_state_dict(state["model"])
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        for generator, rng_state in zip(self.generators, state["generators"]):
            generator.set_state(rng_state.cpu())
        self._frozen = {name: value.to(self.device) for name, value in state["frozen"].items()}
        self._frozen_mask = state.get("frozen_mask", self.diverged).to(self.device).clone()
        self._index_frozen_rows()
        self._newly_diverged = torch.tensor(bool(state.get("newly_diverged", False)), device=self.device)
        if self.streams is not None:
            self.restore_graph_state(state["graph"])
