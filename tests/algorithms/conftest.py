"""Pendulum datasets built once per test session by the real builder, loaded by folder path."""
from __future__ import annotations

import pytest

from offline_sweeps.datasets import BuildConfig, build


@pytest.fixture(scope="session")
def pendulum_datasets(tmp_path_factory):
    """{"medium": path, "expert": path}: 10,000 transitions each. Medium comes from a small SAC frozen at an
    eval return of -900 (its own data return about -900, normalized about 30); expert from the scripted
    energy-shaping controller (a narrow, deterministic dataset)."""
    root = tmp_path_factory.mktemp("pendulum-datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        build(BuildConfig("Pendulum-v1", kinds=("medium", "expert"), transitions=10_000, medium_return=-900.0,
                          expert="scripted", sac_steps=10_000, sac_start_steps=1000, eval_every=250,
                          sac_hidden=(64, 64), ref_episodes=10, seed=0), log=lambda _: None)
    return {kind: str(root / "pendulum" / f"{kind}-v0") for kind in ("medium", "expert")}
