"""Offline RL algorithms as packed populations (networks, losses, learners)."""
