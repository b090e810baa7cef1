"""Offline RL algorithms as packed populations: one Learner class per algorithm, by registry name.

`sac` is naive offline SAC, the failure case (CQL with alpha = 0 computes the same thing).
"""
from .awac import AWAC
from .bc import BC
from .bear import BEAR
from .brac import BRAC
from .cql import CQL
from .iql import IQL
from .sac import SAC

ALGORITHMS = {"bc": BC, "sac": SAC, "brac": BRAC, "bear": BEAR, "awac": AWAC, "iql": IQL, "cql": CQL}

__all__ = ["ALGORITHMS", "AWAC", "BC", "BEAR", "BRAC", "CQL", "IQL", "SAC"]
