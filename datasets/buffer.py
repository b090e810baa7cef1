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
                     reward_scale: float = 1.0, reward_bias: float = 0.0) -> "TransitionBuffer":
        """A buffer holding exactly the dataset's transitions (an `OfflineDataset`)."""
        buffer = cls(dataset.num_transitions, dataset.obs_dim, dataset.act_dim, device)
        if normalize_observations:
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
        then sees exactly the minibatches of a solo run seeded like it.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
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
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mixing ratio must lie in [0, 1], got {ratio}")
        own = int(round(ratio * batch_size))
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
