"""Counter-based random streams, one per member, held as tensors: the randomness of a compiled update.

The eager path draws each member's noise and minibatch rows from its own `torch.Generator`; a generator argument
cannot enter a `torch.compile(fullgraph=True)` graph, and a CUDA graph cannot replay host-side generator state. A
counter-based generator (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") needs neither: element i
of draw c of member p is a pure function hash(seed_p, c, i), so a draw is elementwise tensor arithmetic, and the
stream's whole state is the member seeds and one counter tensor on the device (checkpointed).

The hash is Chris Wellons' `lowbias32` integer mixer (github.com/skeeto/hash-prospector, bias 0.17), applied in int64
arithmetic with every product kept below 2^63, so it computes the same bits on every backend (no overflow). Member
p's numbers depend only on its own seed and the draw counter, which every member advances together: member p of a
packed run draws exactly what its solo run draws.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF


def multiply32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for `x` in [0, 2^32), in two 16-bit halves of `constant` so no product passes 2^48."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection of [0, 2^32) with good avalanche; int64 in, int64 out."""
    x = x ^ (x >> 16)
    x = multiply32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = multiply32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """A member's 32-bit stream key from its (any-size, non-negative or negative) integer seed."""
    seed = int(seed) & ((1 << 64) - 1)
    low, high = torch.tensor([seed & MASK32]), torch.tensor([seed >> 32])
    return int(hash32(low ^ hash32(high ^ 0x5BD1E995))[0])


class CounterStreams:
    """P per-member streams keyed on their seeds; every draw advances one shared counter tensor in place.

    `uniform(*shape)`, `normal(*shape)` and `randint(high, shape)` return `[P, *shape]` like the learner's
    generator-backed draws, but from hash(seed_p, counter, element) with no host involvement.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.keys = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64, device=self.device)
        self.counter = torch.zeros((), dtype=torch.int64, device=self.device)

    def bits(self, count: int) -> torch.Tensor:
        """`[P, count]` 32-bit words (int64) of the next draw, and the counter advanced."""
        draw = hash32(self.keys ^ hash32(self.counter & MASK32))                     # [P]
        index = torch.arange(count, dtype=torch.int64, device=self.device)
        words = hash32(draw[:, None] ^ hash32(index ^ 0x68E31DA4)[None])
        self.counter.add_(1)
        return words

    def uniform(self, *shape: int) -> torch.Tensor:
        """`[P, *shape]` float32 in [0, 1) with 24 random bits each."""
        words = self.bits(math.prod(shape))
        return ((words >> 8).float() * 2.0 ** -24).view(-1, *shape)

    def normal(self, *shape: int) -> torch.Tensor:
        """`[P, *shape]` standard normals by Box-Muller from two 24-bit uniforms (the first in (0, 1], so log is finite)."""
        n = math.prod(shape)
        words = self.bits(2 * n)
        radius = ((words[:, :n] >> 8).float() + 1.0).mul(2.0 ** -24).log().mul(-2.0).sqrt()
        angle = (words[:, n:] >> 8).float().mul(2.0 ** -24 * 2 * math.pi)
        return (radius * torch.cos(angle)).view(-1, *shape)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """`[P, *shape]` int64 uniform in [0, high) (modulo bias below high / 2^32, 1e-4 for a million rows)."""
        return (self.bits(math.prod(shape)) % high).view(-1, *shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "counter": self.counter}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.keys.copy_(state["keys"])
        self.counter.copy_(state["counter"])
