"""Minari datasets in, flat transition arrays out.

`load(dataset_id)` finds a local Minari dataset (or downloads a hosted one when online), flattens its
episodes into transitions, and caches the flat arrays beside the dataset so later trials skip the
per-episode reading. Terminations and truncations stay apart: a truncated step keeps its real next
observation and bootstraps; a terminal one does not.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

CACHE_NAME = "offline_sweeps_flat.npz"
CACHE_VERSION = 1
ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                "episode_starts", "episode_lengths", "episode_returns")


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; the message says what to do instead."""


@dataclass(frozen=True, eq=False)
class OfflineDataset:
    """A dataset flattened into N transitions from E episodes (arrays on the host, float32 / bool)."""
    dataset_id: str
    observations: np.ndarray          # [N, obs_dim]
    actions: np.ndarray               # [N, act_dim]
    rewards: np.ndarray               # [N]
    next_observations: np.ndarray     # [N, obs_dim]
    terminals: np.ndarray             # [N] bool: the env terminated here (no bootstrap)
    timeouts: np.ndarray              # [N] bool: the episode was truncated here (bootstrap)
    episode_starts: np.ndarray        # [E] index of each episode's first transition
    episode_lengths: np.ndarray       # [E]
    episode_returns: np.ndarray       # [E] undiscounted
    observation_space: gym.Space
    action_space: gym.Space
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def num_transitions(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_lengths)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @functools.cached_property
    def obs_mean(self) -> np.ndarray:
        return self.observations.mean(0)

    @functools.cached_property
    def obs_std(self) -> np.ndarray:
        # The floor keeps constant features (e.g. a fixed goal) from dividing by zero.
        return self.observations.std(0) + 1e-3


def normalized_score(dataset: OfflineDataset, returns) -> np.ndarray:
    """D4RL's normalized score on its 0-100 scale: 100 * (R - ref_min) / (ref_max - ref_min).

    (Minari's own `get_normalized_score` returns the 0-1 fraction.)
    """
    if dataset.ref_min_score is None or dataset.ref_max_score is None:
        raise DatasetError(f"dataset {dataset.dataset_id} has no ref_min_score/ref_max_score, so returns cannot "
                           f"be normalized; rebuild it with `launch.py dataset make` (which records both) or "
                           f"report raw returns")
    return 100.0 * (np.asarray(returns, dtype=np.float64) - dataset.ref_min_score) / (
        dataset.ref_max_score - dataset.ref_min_score)


def datasets_root() -> Path:
    """Where Minari keeps local datasets: MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def local_dataset_ids() -> list[str]:
    """Ids of the complete local datasets (folders with a data/metadata.json), hidden folders skipped."""
    root = datasets_root()
    if not root.is_dir():
        return []
    return sorted(str(p.parent.parent.relative_to(root)) for p in root.rglob("data/metadata.json")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))


def flat_observation(space: gym.Space, observations) -> np.ndarray:
    """`[T, ...]` observations as `[T, d]` float32; a Dict space concatenates its parts in the order of
    gymnasium's `flatten_space`, which is what `gymnasium.wrappers.FlattenObservation` gives an env."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flat_observation(sub, observations[key]) for key, sub in space.spaces.items()], 1)
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(observations, dtype=np.float32)
        return array.reshape(array.shape[0], -1)
    raise DatasetError(f"observation space {space} is not supported: only Box and Dict of Box spaces are")


def flat_dim(space: gym.Space) -> int:
    return int(gym.spaces.flatdim(space))


def _network_unreachable_reason() -> str | None:
    """Why a download cannot work right now, found in at most a few seconds, or None when it may.

    Without this check, Minari retries an unreachable hub for about 23 s before failing.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides reachability; let the download try
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as error:
        return f"{host} is unreachable ({error})"
    return None


def _missing_dataset_error(dataset_id: str, reason: str) -> DatasetError:
    local = local_dataset_ids()
    listing = ", ".join(local[:12]) + (" ..." if len(local) > 12 else "") if local else "none"
    return DatasetError(f"dataset {dataset_id!r} is not in {datasets_root()} and cannot be downloaded: {reason}. "
                        f"Local datasets: {listing}. Build one offline with `python launch.py dataset make`, "
                        f"or download it where there is network (`minari download {dataset_id}`) and set "
                        f"MINARI_DATASETS_PATH to that folder")


def _resolve(dataset_id: str, download: bool) -> Path:
    """The dataset's `data` folder, downloading it first where allowed and possible."""
    path = Path(dataset_id).expanduser()
    if (path / "data" / "metadata.json").is_file():
        return path / "data"
    if (path / "metadata.json").is_file():
        return path
    data_path = datasets_root() / dataset_id / "data"
    if (data_path / "metadata.json").is_file():
        return data_path
    if data_path.is_dir():
        raise DatasetError(f"dataset {dataset_id!r} at {data_path.parent} is incomplete (no metadata.json: an "
                           f"interrupted write or download); delete that folder and build or download it again")
    if not download:
        raise _missing_dataset_error(dataset_id, "downloading is turned off")
    reason = _network_unreachable_reason()
    if reason:
        raise _missing_dataset_error(dataset_id, reason)
    import minari
    try:
        minari.download_dataset(dataset_id)
    except ImportError as error:
        raise _missing_dataset_error(dataset_id, f"{error}") from error
    except Exception as error:  # Minari raises bare ValueError/HTTP errors for unknown or incompatible ids
        raise _missing_dataset_error(dataset_id, f"the download failed: {error}") from error
    return data_path


def _fingerprint(data_path: Path) -> str:
    """Changes whenever any file of the dataset changes (name, size or modification time)."""
    entries = sorted((str(p.relative_to(data_path)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in data_path.rglob("*") if p.is_file() and p.name != CACHE_NAME)
    return hashlib.sha256(json.dumps([CACHE_VERSION, entries]).encode()).hexdigest()


def _read_episodes(data_path: Path, dataset_id: str) -> dict[str, np.ndarray]:
    import minari
    try:
        dataset = minari.MinariDataset(data_path)
        episodes = list(dataset.iterate_episodes())
    except Exception as error:  # h5py/arrow raise many types for a damaged file
        raise DatasetError(f"dataset {dataset_id!r} at {data_path} cannot be read ({type(error).__name__}: "
                           f"{error}); it is corrupt or truncated: delete it and build or download it again") \
            from error
    if not episodes:
        raise DatasetError(f"dataset {dataset_id!r} at {data_path} has no episodes (an interrupted write?); "
                           f"delete it and build or download it again")
    obs_space = dataset.observation_space
    columns: dict[str, list] = {name: [] for name in ARRAY_FIELDS[:6]}
    lengths, returns = [], []
    for episode in episodes:
        observations = flat_observation(obs_space, episode.observations)
        actions = np.asarray(episode.actions, dtype=np.float32).reshape(len(episode.rewards), -1)
        steps = len(episode.rewards)
        if observations.shape[0] != steps + 1 or actions.shape[0] != steps:
            raise DatasetError(f"dataset {dataset_id!r}: episode {episode.id} has {observations.shape[0]} "
                               f"observations for {steps} steps (expected one more); the file is damaged")
        columns["observations"].append(observations[:-1])
        columns["next_observations"].append(observations[1:])
        columns["actions"].append(actions)
        columns["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        columns["terminals"].append(np.asarray(episode.terminations, dtype=bool))
        columns["timeouts"].append(np.asarray(episode.truncations, dtype=bool))
        lengths.append(steps)
        returns.append(float(np.sum(episode.rewards, dtype=np.float64)))
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    arrays["episode_lengths"] = np.asarray(lengths, dtype=np.int64)
    arrays["episode_starts"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    arrays["episode_returns"] = np.asarray(returns, dtype=np.float64)
    return arrays


def _cached_arrays(data_path: Path, dataset_id: str) -> dict[str, np.ndarray]:
    """Flat arrays from the cache beside the dataset, rebuilt (and atomically rewritten) when stale."""
    cache = data_path / CACHE_NAME
    fingerprint = _fingerprint(data_path)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    return {name: stored[name] for name in ARRAY_FIELDS}
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is rebuilt below
    arrays = _read_episodes(data_path, dataset_id)
    temporary = cache.with_name(f".{CACHE_NAME}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, fingerprint=np.array(fingerprint), **arrays)
        os.replace(temporary, cache)
    except OSError:
        temporary.unlink(missing_ok=True)  # a read-only dataset folder: work without the cache
    return arrays


CHECKED_FIELDS = ("observations", "actions", "rewards", "next_observations")


MAX_MAGNITUDE = 1e15    # float32 squares overflow past about 1.8e19; sums over an episode's 1e3-1e4 steps come first


def check_finite(arrays: dict[str, np.ndarray], dataset_id: str) -> None:
    """Raise a DatasetError naming the first transition whose observation, action, reward or next observation is
    NaN or infinite, or finite but beyond MAX_MAGNITUDE (a squared loss or an episode's return would overflow
    float32 training): one such value would otherwise surface later as every member "diverging"."""
    for name in CHECKED_FIELDS:
        values = np.asarray(arrays[name])
        rows = values.reshape(len(values), -1)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            index = int(np.argmax(bad))
            raise DatasetError(f"dataset {dataset_id!r}: {name}[{index}] is not finite ({values[index].tolist()}); "
                               f"{int(bad.sum())} transition(s) have NaN or infinite {name}: clean the data or "
                               f"rebuild the dataset")
        huge = (np.abs(rows) > MAX_MAGNITUDE).any(axis=1)
        if huge.any():
            index = int(np.argmax(huge))
            raise DatasetError(f"dataset {dataset_id!r}: column {name} holds magnitudes up to "
                               f"{float(np.abs(rows).max()):.3g} ({name}[{index}]), beyond {MAX_MAGNITUDE:.0e}: float32 "
                               f"training overflows once they are squared or summed over an episode; rescale the data")


def metadata_env_id(metadata: dict, dataset_id: str) -> str | None:
    """The env id a dataset's metadata names (`env_spec`'s id), checked: None where it names none, a registered
    Gymnasium id (a `module:Env` id is left to Gymnasium's import), else a DatasetError before anything runs."""
    if not metadata.get("env_spec"):
        return None
    try:
        env_id = json.loads(metadata["env_spec"]).get("id")
    except (TypeError, ValueError, AttributeError):
        raise DatasetError(f"dataset {dataset_id!r}: its metadata's env_spec is not a JSON mapping; rebuild the "
                           f"dataset, or set env: to evaluate in") from None
    if env_id is not None and (not isinstance(env_id, str) or (":" not in env_id and env_id not in gym.registry)):
        raise DatasetError(f"dataset {dataset_id!r} names env {str(env_id)[:100]!r}, which is not a registered "
                           f"Gymnasium env; install the package that registers it, or set env: to evaluate in")
    return env_id


def reference_scores(metadata: dict, dataset_id: str) -> tuple[float | None, float | None]:
    """The dataset's (ref_min_score, ref_max_score): both absent, or two finite numbers with max > min."""
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is None and high is None:
        return None, None
    for name, value in (("ref_min_score", low), ("ref_max_score", high)):
        if value is None:
            other = "ref_max_score" if name == "ref_min_score" else "ref_min_score"
            raise DatasetError(f"dataset {dataset_id!r} has {other} but no {name}: give both, or neither")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DatasetError(f"dataset {dataset_id!r}: {name}={value!r} is not a finite number; set it in the "
                               f"dataset's metadata.json (the random and expert policies' mean returns)")
    if not high > low:
        raise DatasetError(f"dataset {dataset_id!r}: ref_max_score={high!r} must be greater than "
                           f"ref_min_score={low!r}, or normalized returns divide by zero or flip sign")
    return float(low), float(high)


def load(dataset_id: str, download: bool = True) -> OfflineDataset:
    """Load a Minari dataset as flat transitions.

    `dataset_id` is a Minari id (`mujoco/hopper/medium-v0`, looked up under MINARI_DATASETS_PATH and
    downloaded when missing, online, and `download` is true) or the path of a local dataset folder.
    """
    data_path = _resolve(dataset_id, download)
    import minari.dataset.minari_storage as storage
    try:
        metadata = storage.MinariStorage.read_raw_metadata(data_path)
        reader = storage.MinariStorage.read(data_path)
    except Exception as error:
        raise DatasetError(f"dataset {dataset_id!r} at {data_path} has unreadable metadata ({error}); delete it "
                           f"and build or download it again") from error
    if int(metadata.get("total_episodes", 0)) == 0:
        raise DatasetError(f"dataset {dataset_id!r} at {data_path} has no episodes (an interrupted write?); "
                           f"delete it and build or download it again")
    arrays = _cached_arrays(data_path, dataset_id)
    check_finite(arrays, dataset_id)
    ref_min, ref_max = reference_scores(metadata, dataset_id)
    env_id = metadata_env_id(metadata, dataset_id)
    extra = {k: v for k, v in metadata.items() if k not in ("observation_space", "action_space", "env_spec")}
    return OfflineDataset(dataset_id=metadata.get("dataset_id", dataset_id),
                          observation_space=reader.observation_space, action_space=reader.action_space,
                          env_id=env_id, ref_min_score=ref_min, ref_max_score=ref_max, metadata=extra, **arrays)


def check_env_compatible(dataset: OfflineDataset, env: gym.Env) -> None:
    """Raise a DatasetError unless `env`'s spaces fit the dataset's (flattened) observations and actions."""
    env_name = env.spec.id if env.spec else type(env.unwrapped).__name__
    problems = []
    if flat_dim(env.observation_space) != dataset.obs_dim:
        problems.append(f"observations of size {flat_dim(env.observation_space)} (dataset: {dataset.obs_dim})")
    if not isinstance(env.action_space, gym.spaces.Box):
        problems.append(f"a {type(env.action_space).__name__} action space (only continuous Box is supported)")
    elif flat_dim(env.action_space) != dataset.act_dim:
        problems.append(f"actions of size {flat_dim(env.action_space)} (dataset: {dataset.act_dim})")
    elif isinstance(dataset.action_space, gym.spaces.Box) and not (
            np.allclose(env.action_space.low, dataset.action_space.low)
            and np.allclose(env.action_space.high, dataset.action_space.high)):
        problems.append("action bounds other than the dataset's")
    if problems:
        raise DatasetError(f"env {env_name} does not fit dataset {dataset.dataset_id}: it has "
                           f"{' and '.join(problems)}; evaluate in the dataset's own env "
                           f"({dataset.env_id or 'see `launch.py dataset info`'}) or pick a dataset built for "
                           f"{env_name}")


def describe(dataset: OfflineDataset) -> dict:
    """What `launch.py dataset info` shows: size, episodes, transitions, spaces, returns, refs."""
    returns = dataset.episode_returns
    folder = Path(datasets_root() / dataset.dataset_id)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != CACHE_NAME) \
        if folder.is_dir() else None
    info = {"dataset_id": dataset.dataset_id, "env_id": dataset.env_id, "episodes": dataset.num_episodes,
            "transitions": dataset.num_transitions, "size_mb": None if size is None else round(size / 1e6, 2),
            "observation_space": str(dataset.observation_space), "action_space": str(dataset.action_space),
            "terminals": int(dataset.terminals.sum()), "timeouts": int(dataset.timeouts.sum()),
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "return_min": float(returns.min()), "return_max": float(returns.max()),
            "ref_min_score": dataset.ref_min_score, "ref_max_score": dataset.ref_max_score,
            "behavior_policy": dataset.metadata.get("behavior_policy")}
    if dataset.ref_min_score is not None and dataset.ref_max_score is not None:
        info["normalized_return_mean"] = float(normalized_score(dataset, returns).mean())
    return info
