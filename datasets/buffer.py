"""Transitions on the trial's device, sampled as `[P, B, ...]` minibatches with no per-sample Python.

All fields of a transition live in one row of a single `[capacity, width]` float tensor, so a
minibatch for P members is one `randint` and one gather; the fields are column views of the result.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """One minibatch per member: shapes `[P, B, obs]`, `[P, B, act]`, and `[P, B]` for the scalars."""
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor       # 1.0 where the episode ended by termination: do not bootstrap
    timeouts: torch.Tensor        # 1.0 where it was cut by a time limit: bootstrap from next_observations


def iql_reward_scale(episode_returns: np.ndarray, scale: float = 1000.0) -> float:
    """IQL's locomotion reward scaling (Kostrikov et al., 2021, appendix B): r * 1000 / (max R - min R)."""
    spread = float(np.max(episode_returns) - np.min(episode_returns))
    if spread <= 0:
        raise ValueError("all episodes have the same return; reward scaling by the return range is undefined")
    return scale / spread


class TransitionBuffer:
    """A fixed-capacity store of transitions (a ring once full) on one device.

    Observations are stored as given; build with `from_dataset(..., normalize_observations=True)` to
    store `(obs - mean) / std` and keep `obs_mean`/`obs_std` for normalizing the env's observations.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.device = torch.device(device)
        o, a = obs_dim, act_dim
        layout = {"observations": slice(0, o), "actions": slice(o, o + a), "rewards": o + a,
                  "next_observations": slice(o + a + 1, 2 * o + a + 1),
                  "terminals": 2 * o + a + 1, "timeouts": 2 * o + a + 2}
        self._slices = tuple(layout[name] for name in Batch._fields)   # column of each Batch field
        self._rows = torch.zeros(capacity, 2 * o + a + 3, device=self.device)
        self.size = 0
        self._next = 0
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)

    @classmethod
    def from_dataset(cls, dataset, device: torch.device | str = "cpu", normalize_observations: bool = False,
                     reward_scale: float = 1.0, reward_bias: float = 0.0,
                     like: "TransitionBuffer | None" = None) -> "TransitionBuffer":
        """A buffer holding exactly the dataset's transitions (an `OfflineDataset`); `like`: normalized with that
        buffer's observation statistics (held-out data seen as the training buffer sees its own)."""
        buffer = cls(dataset.num_transitions, dataset.obs_dim, dataset.act_dim, device)
        if like is not None:
            buffer.obs_mean, buffer.obs_std = like.obs_mean, like.obs_std
        elif normalize_observations:
            buffer.obs_mean = torch.as_tensor(dataset.obs_mean, device=buffer.device)
            buffer.obs_std = torch.as_tensor(dataset.obs_std, device=buffer.device)
        buffer.add(dataset.observations, dataset.actions, dataset.rewards * reward_scale + reward_bias,
                   dataset.next_observations, dataset.terminals, dataset.timeouts)
        return buffer

    def normalize(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.obs_mean) / self.obs_std

    def add(self, observations, actions, rewards, next_observations, terminals, timeouts) -> None:
        """Append a batch of N transitions (arrays or tensors, leading axis N); overwrite the oldest when full."""
        def column(x):
            t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
            return t.to(self.device).reshape(t.shape[0], -1)
        rows = torch.cat([self.normalize(column(observations)), column(actions), column(rewards),
                          self.normalize(column(next_observations)), column(terminals), column(timeouts)], 1)
        if rows.shape[1] != self._rows.shape[1]:
            raise ValueError(f"transitions have {rows.shape[1]} columns, the buffer expects "
                             f"{self._rows.shape[1]} (obs_dim={self.obs_dim}, act_dim={self.act_dim})")
        rows = rows[-self.capacity:]
        index = (self._next + torch.arange(rows.shape[0], device=self.device)) % self.capacity
        self._rows[index] = rows
        self._next = (self._next + rows.shape[0]) % self.capacity
        self.size = min(self.size + rows.shape[0], self.capacity)

    def sample_indices(self, batch_size: int, members: int = 1,
                       generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """`[P, B]` indices drawn uniformly with replacement.

        With a list of P generators, member p draws from generator p alone: member p of a packed run
        then sees exactly the minibatches of a solo run seeded like it. Per-member counter streams (a compiled
        update's: anything with `randint(high, n) -> [P, n]`, as algorithms/streams.py's) serve the same way.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        if is_stream(generator):
            return generator.randint(self.size, batch_size)
        if isinstance(generator, (list, tuple)):
            if len(generator) != members:
                raise ValueError(f"{len(generator)} generators for {members} members")
            return torch.stack([torch.randint(self.size, (batch_size,), generator=g, device=self.device)
                                for g in generator])
        return torch.randint(self.size, (members, batch_size), generator=generator, device=self.device)

    def gather(self, indices: torch.Tensor) -> Batch:
        """The transitions at `indices` (any shape `[...]`), as a Batch of `[..., field]` tensors."""
        # index_select on the flat indices is several times faster than advanced indexing here.
        rows = self._rows.index_select(0, indices.reshape(-1)).view(*indices.shape, -1)
        return self._split(rows)

    def _split(self, rows: torch.Tensor) -> Batch:
        return Batch(*(rows[..., s] for s in self._slices))

    def sample(self, batch_size: int, members: int = 1, generator=None) -> Batch:
        return self.gather(self.sample_indices(batch_size, members, generator))

    def sample_mixed(self, other: "TransitionBuffer", ratio: float, batch_size: int, members: int = 1,
                     generator=None) -> Batch:
        """`round(ratio * B)` transitions from this buffer and the rest from `other`, concatenated on B.

        MOPO and COMBO call it on the real data with the model rollouts as `other` (ratio 0.05 / 0.5).
        """
        own = mixed_rows(ratio, batch_size)
        parts = [buffer._rows.index_select(0, buffer.sample_indices(n, members, generator).reshape(-1))
                 .view(members, n, -1) for buffer, n in ((self, own), (other, batch_size - own)) if n > 0]
        return self._split(torch.cat(parts, dim=1))

    def state_dict(self) -> dict:
        return {"rows": self._rows[: self.size].cpu() if self.size < self.capacity else self._rows.cpu(),
                "next": self._next, "obs_mean": self.obs_mean.cpu(), "obs_std": self.obs_std.cpu()}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"].to(self.device)
        self._rows[: rows.shape[0]] = rows
        self.size, self._next = rows.shape[0], int(state["next"])
        self.obs_mean, self.obs_std = state["obs_mean"].to(self.device), state["obs_std"].to(self.device)


def is_stream(generator) -> bool:
    """Is `generator` per-member counter streams (not a torch.Generator, a list of them, or None)?"""
    return generator is not None and not isinstance(generator, (list, tuple, torch.Generator))


def mixed_rows(ratio: float, batch_size: int) -> int:
    """How many of a mixed minibatch's `batch_size` rows come first, from the first buffer: `round(ratio * B)`."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mixing ratio must lie in [0, 1], got {ratio}")
    return int(round(ratio * batch_size))


def transition_rows(observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    next_observations: torch.Tensor, terminals: torch.Tensor, timeouts: torch.Tensor) -> torch.Tensor:
    """Transitions with any leading shape `[...]` as `[..., width]` rows in TransitionBuffer's layout
    (observations, actions, reward, next observations, terminal, timeout); nothing is normalized here."""
    return torch.cat([observations, actions, rewards.unsqueeze(-1), next_observations,
                      terminals.float().unsqueeze(-1), timeouts.float().unsqueeze(-1)], -1)


class PackedRolloutBuffer:
    """One ring of model-generated transitions per member: `[P, capacity, width]` rows in TransitionBuffer's
    layout, each member with its own size and write position, so member p's model data never mix with
    member q's. Inserts and samples are vectorized over members and rows.
    """

    def __init__(self, members: int, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.members, self.capacity, self.obs_dim, self.act_dim = members, capacity, obs_dim, act_dim
        self.device = torch.device(device)
        self.width = 2 * obs_dim + act_dim + 3
        self._rows = torch.zeros(members, capacity, self.width, device=self.device)
        self.size = torch.zeros(members, dtype=torch.long, device=self.device)
        self._next = torch.zeros(members, dtype=torch.long, device=self.device)
        self._layout = TransitionBuffer(1, obs_dim, act_dim, "cpu")      # only its column slices are used

    def add(self, rows: torch.Tensor, valid: torch.Tensor) -> None:
        """Insert member p's rows `rows[p][valid[p]]` (`rows` `[P, N, width]`, `valid` `[P, N]` bool) into ring p,
        in order; when more than `capacity` are valid, the last `capacity` are kept."""
        if rows.shape[0] != self.members or rows.shape[-1] != self.width:
            raise ValueError(f"rows of shape {tuple(rows.shape)} do not fit [P={self.members}, N, {self.width}]")
        valid = valid.to(torch.bool)
        count = valid.sum(1)                                               # [P]
        skipped = (count - self.capacity).clamp(min=0)                     # oldest valid rows that would be overwritten
        rank = valid.long().cumsum(1) - 1 - skipped[:, None]               # position among the kept rows
        keep = valid & (rank >= 0)
        position = (self._next[:, None] + rank) % self.capacity
        member = torch.arange(self.members, device=self.device)[:, None].expand_as(keep)
        self._rows[member[keep], position[keep]] = rows[keep]
        kept = count - skipped
        self._next = (self._next + kept) % self.capacity
        self.size = (self.size + kept).clamp(max=self.capacity)

    def sample_rows(self, batch_size: int, generators: list[torch.Generator]) -> torch.Tensor:
        """`[P, B, width]`: member p's B rows drawn uniformly (with replacement) from its own ring by
        `generators[p]` (or member p's counter stream, `TransitionBuffer.sample_indices`). The rings must not be empty."""
        if is_stream(generators):
            uniform = generators.uniform(batch_size)
        elif len(generators) != self.members:
            raise ValueError(f"{len(generators)} generators for {self.members} members")
        else:
            uniform = torch.stack([torch.rand(batch_size, generator=g, device=self.device) for g in generators])
        # floor(u * size) keeps the draw on the device (no host sync for the sizes).
        index = torch.minimum((uniform * self.size[:, None]).long(), (self.size[:, None] - 1).clamp(min=0))
        return self._rows.gather(1, index.unsqueeze(-1).expand(-1, -1, self.width))

    def sample_mixed(self, real: TransitionBuffer, real_ratio: float, batch_size: int,
                     generators: list[torch.Generator]) -> Batch:
        """MBPO/MOPO/COMBO's mixed minibatch: `round(real_ratio * B)` rows from the real data first, then the
        rest from each member's own model data, concatenated on B; member p draws both with `generators[p]`."""
        own = mixed_rows(real_ratio, batch_size)
        parts = []
        if own > 0:
            parts.append(real._rows.index_select(0, real.sample_indices(own, self.members, generators).reshape(-1))
                         .view(self.members, own, -1))
        if batch_size - own > 0:
            parts.append(self.sample_rows(batch_size - own, generators))
        return self._layout._split(torch.cat(parts, dim=1))

    def state_dict(self) -> dict:
        filled = int(self.size.max())
        return {"rows": self._rows[:, :filled].cpu(), "size": self.size.cpu(), "next": self._next.cpu()}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"].to(self.device)
        if rows.shape[0] != self.members or rows.shape[1] > self.capacity or rows.shape[2] != self.width:
            raise ValueError(f"stored rollouts of shape {tuple(rows.shape)} do not fit this buffer "
                             f"[{self.members}, {self.capacity}, {self.width}]")
        self._rows.zero_()
        self._rows[:, :rows.shape[1]] = rows
        self.size, self._next = state["size"].to(self.device), state["next"].to(self.device)
