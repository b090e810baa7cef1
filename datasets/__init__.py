"""The dataset layer: Minari datasets in, device tensors out, and an offline dataset builder.

Imported as `offline_sweeps.datasets` (never as a top-level `datasets`, which is Hugging Face's).
"""
from .buffer import Batch, TransitionBuffer, iql_reward_scale
from .builder import KINDS, BuildConfig, build
from .loading import (DatasetError, OfflineDataset, check_env_compatible, datasets_root, describe, load,
                      local_dataset_ids, normalized_score)
from .rollout import Episode, make_env, rollout

__all__ = ["Batch", "BuildConfig", "DatasetError", "Episode", "KINDS", "OfflineDataset", "TransitionBuffer",
           "build", "check_env_compatible", "datasets_root", "describe", "iql_reward_scale", "load", "local_dataset_ids",
           "make_env", "normalized_score", "rollout"]
