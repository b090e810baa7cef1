"""Offline RL algorithms as packed populations: one Learner class per algorithm, by registry name.

`sac` is naive offline SAC, the failure case (CQL with alpha = 0 computes the same thing). `mopo` and
`combo` are model-based: they train (or load from a cache) a dynamics ensemble before their first update.
"""
from .awac import AWAC
from .bc import BC
from .bear import BEAR
from .brac import BRAC
from .combo import COMBO
from .cql import CQL
from .iql import IQL
from .mopo import MOPO
from .sac import SAC

ALGORITHMS = {"bc": BC, "sac": SAC, "brac": BRAC, "bear": BEAR, "awac": AWAC, "iql": IQL, "cql": CQL,
              "mopo": MOPO, "combo": COMBO}

__all__ = ["ALGORITHMS", "AWAC", "BC", "BEAR", "BRAC", "COMBO", "CQL", "IQL", "MOPO", "SAC"]
