"""Offline RL algorithms as packed populations: one Learner class per algorithm, by registry name.

`sac` is naive offline SAC, the failure case (CQL with alpha = 0 computes the same thing).
"""
from .awac import AWAC
from .bc import BC
from .cql import CQL
from .iql import IQL
from .sac import SAC

ALGORITHMS = {"bc": BC, "sac": SAC, "cql": CQL, "iql": IQL, "awac": AWAC}

__all__ = ["ALGORITHMS", "AWAC", "BC", "CQL", "IQL", "SAC"]
