"""Scripted behaviour policies, for envs whose physics admit a short hand-written controller.

Pendulum-v1 (theta = 0 upright, dynamics theta'' = 3g/(2l) sin(theta) + 3/(m l^2) u, g=10, m=l=1):
with the pendulum's energy E = (m l^2 / 6) theta'^2 + (m g l / 2) cos(theta), the gravity terms cancel and
dE/dt = theta' * u. Energy shaping (Astrom & Furuta, 2000) pumps E towards the upright energy m g l / 2
with u = k (E_top - E) theta'; near the top a PD law holds the pendulum up.
"""
from __future__ import annotations

import numpy as np

MAX_TORQUE = 2.0


def pendulum_energy_shaping(obs: np.ndarray, swing_gain: float = 1.0, catch_cos: float = 0.8,
                            kp: float = 12.0, kd: float = 2.5) -> np.ndarray:
    """Torques `[E, 1]` for Pendulum-v1 observations `[E, 3]` = (cos theta, sin theta, theta')."""
    cos, sin, velocity = obs[:, 0], obs[:, 1], obs[:, 2]
    theta = np.arctan2(sin, cos)
    energy = velocity ** 2 / 6.0 + 5.0 * cos
    swing = swing_gain * (5.0 - energy) * velocity
    catch = -(kp * theta + kd * velocity)
    torque = np.where(cos > catch_cos, catch, swing)
    return np.clip(torque, -MAX_TORQUE, MAX_TORQUE)[:, None]


SCRIPTED_CONTROLLERS = {"Pendulum-v1": pendulum_energy_shaping}
