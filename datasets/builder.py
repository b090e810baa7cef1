"""Build D4RL-style Minari datasets offline, from any Gymnasium env with continuous actions.

The recipe of D4RL (Fu et al., 2020, section 5): a SAC agent is trained online; "medium" data come
from its policy frozen part-way (here: when its evaluation return first reaches `medium_return`),
"expert" data from the policy trained further (to `expert_return`) or from a scripted controller,
"medium-replay" is the agent's replay buffer up to the medium point, "medium-expert" the union of
medium and expert data, and "random" comes from uniform actions. Every dataset records
ref_min_score and ref_max_score, so normalized scores work, and the behaviour policy's own mean return. For
Hopper, HalfCheetah and Walker2d they are D4RL's reference returns by default (presets.py), so that scores read on
the scale of the published tables; elsewhere (or with `reference_scores="measured"`) the random policy's mean
return and the expert's, acting deterministically, measured here.

Datasets are written under a hidden staging folder and renamed into place once complete, so an
interrupted build never leaves a dataset that looks whole. The HDF5 writing runs in a forked child process,
because h5py can crash the process it runs in (a segfault in File.close after a write fails under a
file-size limit or on a full disk): the build survives it, removes the staging folder and says what
happened. SIGTERM interrupts a build as Ctrl-C does, so a killed build cleans up too.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from .agent import AgentFactory, BehaviourPolicy
from .buffer import TransitionBuffer
from .controllers import SCRIPTED_CONTROLLERS
from .loading import DatasetError, datasets_root, flat_dim, local_dataset_ids
from .presets import PRESETS, REFERENCE_SCORES, d4rl_reference_scores
from .progress import Progress
from .rollout import Episode, Policy, make_env, random_policy, rollout, time_limit

KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")


MAX_NUM_ENVS = 256     # more envs than this in one SyncVectorEnv only costs memory and start-up time


def _safe_name(name) -> bool:
    return isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name) is not None


MAX_COUNT = 10**8       # the most transitions, online steps, episodes or version number a build takes


@dataclass
class BuildConfig:
    env_id: str
    kinds: tuple[str, ...] = KINDS
    name: str | None = None                # dataset ids are "<name>/<kind>-v<version>"; default from env_id
    version: int = 0
    transitions: int = 100_000             # per dataset, at least (medium-expert holds both halves); whole
                                           # episodes, so rounded up: transitions 1 writes one episode
    medium_return: float | None = None     # None: the env's preset
    expert_return: float | None = None
    expert: str = "sac"                    # "sac", or "scripted" where a controller is shipped
    sac_steps: int = 300_000               # the most online steps the behaviour agent may take
    sac_start_steps: int = 5_000           # uniform-random steps before learning starts
    sac_hidden: tuple[int, ...] = (256, 256)
    sac_batch_size: int = 256
    eval_every: int | None = None          # online steps between evaluations; None: the preset, else 5000
    eval_episodes: int = 10
    ref_episodes: int = 20
    num_envs: int = 10                     # envs stepped together when collecting (at most MAX_NUM_ENVS)
    reference_scores: str = "auto"         # "d4rl": D4RL's random/expert returns; "measured": ours; "auto": d4rl
                                           # where D4RL has the robot (Hopper, HalfCheetah, Walker2d), else measured
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        self.sac_hidden = tuple(int(h) for h in self.sac_hidden)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise DatasetError(f"unknown dataset kind(s) {unknown or '(none given)'}; choose from {', '.join(KINDS)}")
        if self.expert not in ("sac", "scripted"):
            raise DatasetError(f"expert={self.expert!r}: choose 'sac' or 'scripted'")
        if self.expert == "scripted" and self.env_id not in SCRIPTED_CONTROLLERS:
            raise DatasetError(f"no scripted controller ships for {self.env_id} (there are: "
                               f"{', '.join(SCRIPTED_CONTROLLERS)}); use expert='sac' with an expert_return")
        preset = PRESETS.get(self.env_id, {})
        if self.eval_every is None:
            self.eval_every = int(preset.get("eval_every", 5_000))
        for key, low in (("transitions", 1), ("sac_steps", 1), ("sac_start_steps", 0), ("eval_every", 1),
                         ("eval_episodes", 1), ("ref_episodes", 1), ("num_envs", 1), ("sac_batch_size", 1),
                         ("version", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value > MAX_COUNT:
                raise DatasetError(f"{key}={value!r} must be a whole number from {low} to {MAX_COUNT:,}")
            if value < low:
                raise DatasetError(f"{key}={value} must be at least {low}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise DatasetError(f"seed={self.seed!r} must be a whole number from 0 to 2**63 - 1")
        for key in ("medium_return", "expert_return"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise DatasetError(f"{key}={value!r} must be a finite number (an evaluation return)")
        if self.num_envs > MAX_NUM_ENVS:
            raise DatasetError(f"num_envs={self.num_envs} must be at most {MAX_NUM_ENVS} (envs stepped together "
                               f"in one process)")
        if self.name is not None and not _safe_name(self.name):
            raise DatasetError(f"name={self.name!r} must be one folder name: letters, digits, '_', '-' and '.', "
                               f"not starting with '.' (dataset ids are <name>/<kind>-v<version>)")
        if self.medium_return is None:
            self.medium_return = preset.get("medium_return")
        if self.expert_return is None and self.expert == "sac":
            self.expert_return = preset.get("expert_return")
        if self.reference_scores not in REFERENCE_SCORES:
            raise DatasetError(f"reference_scores={self.reference_scores!r}: choose one of {', '.join(REFERENCE_SCORES)}")
        if self.reference_scores == "d4rl" and d4rl_reference_scores(self.env_id) is None:
            raise DatasetError(f"D4RL has no reference scores for {self.env_id} (it has Hopper, HalfCheetah, "
                               f"Walker2d): use --reference-scores measured")
        if self.reference_scores == "auto":
            self.reference_scores = "d4rl" if d4rl_reference_scores(self.env_id) is not None else "measured"
        if self.needs_medium and self.medium_return is None:
            raise DatasetError(f"no medium_return known for {self.env_id}: pass --medium-return R, the evaluation "
                               f"return at which the SAC behaviour policy is frozen for medium data")
        if self.needs_expert and self.expert == "sac" and self.expert_return is None:
            raise DatasetError(f"no expert_return known for {self.env_id}: pass --expert-return R (the expert "
                               f"defines ref_max_score for normalized scores)")
        if self.name is None:
            self.name = self.env_id.split("-v")[0].split("/")[-1].lower()

    @property
    def needs_medium(self) -> bool:
        return bool({"medium", "medium-replay", "medium-expert"} & set(self.kinds))

    @property
    def needs_expert(self) -> bool:
        """An expert policy is needed for expert data, or to measure ref_max_score."""
        return bool({"expert", "medium-expert"} & set(self.kinds)) or self.reference_scores == "measured"

    def dataset_id(self, kind: str) -> str:
        return f"{self.name}/{kind}-v{self.version}"


@dataclass
class Snapshot:
    """A frozen behaviour policy and where the online agent stood when it was taken."""
    policy: BehaviourPolicy
    eval_return: float
    step: int
    replay_episodes: list[Episode] = field(default_factory=list)


@dataclass
class BuiltDataset:
    dataset_id: str
    episodes: int
    transitions: int
    behavior_return: float
    ref_min_score: float
    ref_max_score: float
    seconds: float


def sac_policy(policy: BehaviourPolicy, deterministic: bool) -> Policy:
    """A rollout policy from the online agent, or from a policy frozen from it."""
    def act(obs: np.ndarray) -> np.ndarray:
        return policy.act(obs, deterministic)
    return act


def mean_return(env_id: str, policy: Policy, episodes: int, seed: int) -> float:
    return float(np.mean([e.ret for e in rollout(env_id, policy, episodes, seed, episodes_per_env=1)]))


def train_sac(config: BuildConfig, log: Callable[[str], None], trace: bool = True,
              make_agent: AgentFactory | None = None) -> dict[str, Snapshot]:
    """Train the online agent `make_agent` makes (SAC: algorithms/online_sac.py) until its evaluation return
    reaches the targets; snapshot the policy at each.

    Returns {"medium": ..., "expert": ...} for the targets asked for. The replay episodes up to the medium
    snapshot (complete episodes only) are kept for medium-replay.
    """
    if make_agent is None:
        raise DatasetError("medium data and a SAC expert need an online agent to train: pass make_agent="
                           "offline_sweeps.algorithms.online_sac.OnlineSAC, as launch.py dataset make does")
    targets = {}
    if config.needs_medium:
        targets["medium"] = config.medium_return
    if config.expert == "sac" and config.needs_expert:
        targets["expert"] = config.expert_return
    torch.manual_seed(config.seed)
    env = make_env(config.env_id)
    env.action_space.seed(config.seed)
    obs_dim, act_dim = gym.spaces.flatdim(env.observation_space), gym.spaces.flatdim(env.action_space)
    agent = make_agent(obs_dim=obs_dim, act_dim=act_dim, action_low=env.action_space.low,
                       action_high=env.action_space.high, seed=config.seed, hidden=config.sac_hidden,
                       batch_size=config.sac_batch_size)
    replay = TransitionBuffer(config.sac_steps, obs_dim, act_dim)
    snapshots: dict[str, Snapshot] = {}
    episodes: list[Episode] = []
    obs, _ = env.reset(seed=config.seed)
    record: dict[str, list] = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
    best, started = -math.inf, time.perf_counter()
    act = sac_policy(agent, deterministic=False)
    goal = ", then ".join(f"{kind} return {target:g}" for kind, target in targets.items())
    # The ETA is against the whole step budget ("at most"): reaching the targets ends the training sooner.
    with Progress(f"  SAC to {goal}", config.sac_steps, unit="steps", upper_bound=True) as progress:
        for step in range(1, config.sac_steps + 1):
            action = env.action_space.sample() if step <= config.sac_start_steps else act(obs[None])[0]
            next_obs, reward, terminated, truncated, _ = env.step(action)
            replay.add(obs[None], action[None], [reward], next_obs[None], [terminated], [truncated])
            for key, value in zip(("obs", "act", "rew", "term", "trunc"),
                                  (next_obs, action, reward, terminated, truncated)):
                record[key].append(value)
            obs = next_obs
            if terminated or truncated:
                episodes.append(Episode(np.asarray(record["obs"], np.float32), np.asarray(record["act"], np.float32),
                                        np.asarray(record["rew"], np.float32), np.asarray(record["term"], bool),
                                        np.asarray(record["trunc"], bool)))
                obs, _ = env.reset()
                record = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
            if step > config.sac_start_steps:
                agent.update(replay)
            if step % config.eval_every and step != config.sac_steps:
                progress.update(1)
                continue
            score = mean_return(config.env_id, sac_policy(agent, deterministic=True), config.eval_episodes,
                                seed=config.seed + 10_000 + step)
            best = max(best, score)
            progress.update(1, eval_return=f"{score:.1f}", best=f"{best:.1f}")
            if trace:     # a line per evaluation; without it the progress line still shows the last and best
                progress.write(f"  SAC step {step:>7}: eval return {score:9.1f}  "
                               f"({time.perf_counter() - started:6.0f} s)", log)
            for kind, target in targets.items():
                if kind not in snapshots and score >= target:
                    snapshots[kind] = Snapshot(agent.frozen(), score, step,
                                               list(episodes) if kind == "medium" else [])
                    if trace:
                        progress.write(f"  froze the {kind} policy at step {step} (eval return {score:.1f} >= "
                                       f"{target})", log)
                    if kind == "medium" and score >= targets.get("expert", math.inf):
                        progress.write(f"  warning: the medium policy already meets the expert target ({score:.1f} "
                                       f">= {targets['expert']}); a smaller --eval-every catches a policy part-way", log)
            if len(snapshots) == len(targets):
                progress.close(f"target{'s' if len(targets) > 1 else ''} reached")
                return snapshots
    missing = {kind: target for kind, target in targets.items() if kind not in snapshots}
    raise DatasetError(f"the SAC behaviour agent reached an eval return of {best:.1f} in {config.sac_steps} steps, "
                       f"short of the target(s) {missing}: raise --sac-steps or lower the target")


@contextlib.contextmanager
def _staged(dataset_id: str, overwrite: bool):
    """Let Minari write `dataset_id` under a hidden staging root, then move it into place whole.

    Minari places a new dataset by MINARI_DATASETS_PATH alone, so the variable points at the staging
    root while it writes.
    """
    root = datasets_root()
    staging = root / f".staging-{uuid.uuid4().hex[:12]}"
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        yield
        final = root / dataset_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not overwrite:
                raise DatasetError(f"dataset {dataset_id} appeared in {root} during the build; nothing was replaced")
            retired = root / f".retired-{uuid.uuid4().hex[:12]}"
            os.replace(final, retired)
            shutil.rmtree(retired)
        os.replace(staging / dataset_id, final)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(staging, ignore_errors=True)


def check_episodes(episodes: list[Episode], env: gym.Env, dataset_id: str) -> None:
    """Raise a DatasetError naming the first episode and field that does not fit `env` (observation and action
    sizes, actions inside the bounds) or holds a NaN or infinite value."""
    obs_dim, act_dim = flat_dim(env.observation_space), flat_dim(env.action_space)
    low, high = env.action_space.low, env.action_space.high
    slack = 1e-5 * np.where(np.isfinite(high - low), high - low, 1.0)
    if not episodes:
        raise DatasetError(f"writing {dataset_id}: no episodes")
    for index, episode in enumerate(episodes):
        where = f"writing {dataset_id}: episode {index}"
        if episode.observations.shape != (len(episode) + 1, obs_dim):
            raise DatasetError(f"{where} has observations of shape {episode.observations.shape}; {env.spec.id} needs "
                               f"({len(episode) + 1}, {obs_dim}) (one more observation than actions)")
        if episode.actions.shape != (len(episode), act_dim):
            raise DatasetError(f"{where} has actions of shape {episode.actions.shape}; {env.spec.id} needs "
                               f"({len(episode)}, {act_dim})")
        for name in ("observations", "actions", "rewards"):
            if not np.isfinite(getattr(episode, name)).all():
                raise DatasetError(f"{where} has NaN or infinite {name}")
        if ((episode.actions < low - slack) | (episode.actions > high + slack)).any():
            raise DatasetError(f"{where} has actions outside {env.spec.id}'s bounds [{low.tolist()}, {high.tolist()}]")


def write_dataset(dataset_id: str, env_id: str, episodes: list[Episode], ref_min_score: float,
                  ref_max_score: float, metadata: dict, overwrite: bool = False) -> None:
    """Write episodes as a Minari (HDF5) dataset with reference scores and our own metadata; episodes that do not
    fit `env_id`'s spaces or hold non-finite values are refused before anything is written."""
    check_episodes(episodes, make_env(env_id), dataset_id)
    for name, value in (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score)):
        if not math.isfinite(float(value)):
            raise DatasetError(f"writing {dataset_id}: {name}={value} is not finite")
    if not ref_max_score > ref_min_score:
        raise DatasetError(f"writing {dataset_id}: ref_max_score={ref_max_score} must be greater than "
                           f"ref_min_score={ref_min_score}")
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    buffers = [EpisodeBuffer(id=i, seed=e.seed, observations=e.observations, actions=e.actions, rewards=e.rewards,
                             terminations=e.terminations, truncations=e.truncations) for i, e in enumerate(episodes)]

    def write() -> None:
        with warnings.catch_warnings():
            # Minari recommends an author e-mail, which a locally built dataset has no use for.
            warnings.filterwarnings("ignore", message=".*author_email.*", category=UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env_id, eval_env=env_id,
                algorithm_name=metadata.get("behavior_policy", "unknown"),
                author="offline-rl-sweeps dataset builder", code_permalink="offline-rl-sweeps/datasets/builder.py",
                ref_min_score=float(ref_min_score), ref_max_score=float(ref_max_score), data_format="hdf5",
                description=f"Built offline by offline-rl-sweeps from {env_id}: {metadata.get('behavior_policy')}.")
        dataset.storage.update_metadata(metadata)

    with _staged(dataset_id, overwrite):
        failure = _in_child_process(write)
        if failure is not None:
            raise DatasetError(f"writing {dataset_id} failed ({failure}); nothing was written")


def _in_child_process(work: Callable[[], None]) -> str | None:
    """Run `work` in a forked child; None when it succeeded, else what went wrong, in a few words.

    The child's stderr comes back through a pipe: passed on when it succeeded, read for the cause when it
    failed (h5py prints an error for every object that cannot flush as it is freed, each naming HDF5's
    own account, e.g. 'File too large', before the crash that follows). The child leaves with os._exit, so
    nothing of the parent's teardown runs twice; an interrupted parent kills it before its staging folder
    goes. Where there is no fork (Windows), `work` runs in this process.
    """
    if not hasattr(os, "fork"):
        try:
            work()
        except Exception as error:  # Minari and h5py raise assorted types; the caller names the dataset
            return f"{type(error).__name__}: {error}"
        return None
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.dup2(write_end, 2)
            try:
                work()
                status = 0
            except BaseException as error:
                os.write(2, f"\n{_FAILED}{type(error).__name__}: {error}\n".encode(errors="replace"))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            errors = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        sys.stderr.write(errors)
        return None
    raised = [line[len(_FAILED):] for line in errors.splitlines() if line.startswith(_FAILED)]
    named = re.search(r"error message = '([^']*)'", errors)     # HDF5's own account inside h5py's long message
    cause = raised[-1] if raised else named.group(1) if named else errors.strip()[-300:]
    if os.WIFEXITED(status):
        return cause or f"the writer process exited with status {os.WEXITSTATUS(status)}"
    crash = f"the HDF5 writer crashed with {signal.Signals(os.WTERMSIG(status)).name}"
    return f"{crash} after: {cause}" if cause else crash


_FAILED = "offline-sweeps writer failed: "


class BuildInterrupted(DatasetError, KeyboardInterrupt):
    """A build stopped by SIGTERM or Ctrl-C: a KeyboardInterrupt to code that stops on one, and a DatasetError
    whose one line (what was written whole, what was not) the command line prints."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a build runs in the main thread, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the `finally`
    clauses run (a staging folder removed, a writer process stopped) instead of the process dying on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def build(config: BuildConfig, log: Callable[[str], None] = print, trace: bool = True,
          make_agent: AgentFactory | None = None) -> list[BuiltDataset]:
    """Build every dataset kind in `config.kinds`; returns what was written. Interrupted (SIGTERM, Ctrl-C), it
    raises BuildInterrupted once the dataset being written is gone; those written before it stay, whole.
    `trace`: a line per evaluation of the SAC behaviour agent, the reference scores and the total time (else
    only the progress lines and what was written). `make_agent`: the online agent for medium data and a SAC
    expert (offline_sweeps.algorithms.online_sac.OnlineSAC); random and scripted-expert builds need none."""
    built: list[BuiltDataset] = []
    with _sigterm_interrupts():
        try:
            _build(config, log, built, trace, make_agent)
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, BuildInterrupted):
                raise
            written = [b.dataset_id for b in built]
            rest = [config.dataset_id(k) for k in config.kinds if config.dataset_id(k) not in written]
            raise BuildInterrupted(f"dataset build interrupted by {str(interrupt) or 'Ctrl-C'}: "
                                   f"{', '.join(written) or 'no dataset'} written whole, {', '.join(rest)} "
                                   f"not written (nothing of {'it' if len(rest) == 1 else 'them'} left behind)") from None
    return built


def _build(config: BuildConfig, log: Callable[[str], None], built: list[BuiltDataset], trace: bool = True,
           make_agent: AgentFactory | None = None) -> None:
    existing = set(local_dataset_ids())
    clashes = [config.dataset_id(k) for k in config.kinds if config.dataset_id(k) in existing]
    if clashes and not config.overwrite:
        raise DatasetError(f"dataset(s) {', '.join(clashes)} already exist in {datasets_root()}: pass --overwrite, "
                           f"a new --version, or another --name")
    env = make_env(config.env_id)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise DatasetError(f"{config.env_id} has a {type(env.action_space).__name__} action space; the builder "
                           f"and the algorithms need continuous (Box) actions")
    started = time.perf_counter()
    log(f"Building {', '.join(config.dataset_id(k) for k in config.kinds)} from {config.env_id}")
    random_act = random_policy(env.action_space, config.seed)
    measured = config.reference_scores == "measured"
    if measured:
        ref_min = mean_return(config.env_id, random_act, config.ref_episodes, config.seed + 20_000)
        if trace:
            log(f"  random policy: mean return {ref_min:.1f} over {config.ref_episodes} episodes (ref_min_score)")
    else:
        ref_min, ref_max = d4rl_reference_scores(config.env_id)
        if trace:
            log(f"  D4RL's reference returns (d4rl infos.py): random {ref_min}, expert {ref_max}")

    needs_sac = config.needs_medium or (config.expert == "sac" and config.needs_expert)
    snapshots = train_sac(config, log, trace, make_agent) if needs_sac else {}
    expert_act = expert_data_act = None
    expert_name = "no expert"
    if config.expert == "scripted":
        expert_act = expert_data_act = SCRIPTED_CONTROLLERS[config.env_id]
        expert_name = f"scripted controller ({expert_act.__name__})"
    elif config.needs_expert:
        expert_act = sac_policy(snapshots["expert"].policy, deterministic=True)
        expert_data_act = sac_policy(snapshots["expert"].policy, deterministic=False)
        expert_name = f"SAC frozen at step {snapshots['expert'].step}"
    if measured:
        ref_max = mean_return(config.env_id, expert_act, config.ref_episodes, config.seed + 30_000)
        if trace:
            log(f"  expert ({expert_name}): mean return {ref_max:.1f} (ref_max_score)")

    # Whole episodes: each env finishes its last one. Fewer envs for a small request, so `transitions`
    # is rounded up to the next whole episode or so, not to one episode per env (transitions 1 wrote 2000).
    episode_steps = time_limit(config.env_id) or 1
    num_envs = max(1, min(config.num_envs, math.ceil(config.transitions / episode_steps)))
    per_env = math.ceil(config.transitions / num_envs)
    collected: dict[str, list[Episode]] = {}

    def collect(kind: str, act: Policy, seed_offset: int) -> list[Episode]:
        if kind not in collected:
            with Progress(f"  collecting {kind} data", num_envs * per_env, unit="transitions") as progress:
                collected[kind] = rollout(config.env_id, act, num_envs, config.seed + seed_offset,
                                          transitions_per_env=per_env, on_progress=progress.update)
        return collected[kind]

    behaviours: dict[str, tuple[str, Callable[[], list[Episode]]]] = {
        "random": ("uniform random actions", lambda: collect("random", random_act, 40_000)),
        "expert": (expert_name, lambda: collect("expert", expert_data_act, 50_000)),
    }
    if "medium" in snapshots:
        medium = snapshots["medium"]
        medium_name = f"SAC frozen at step {medium.step} (eval return {medium.eval_return:.1f})"
        medium_act = sac_policy(medium.policy, deterministic=False)
        behaviours["medium"] = (medium_name, lambda: collect("medium", medium_act, 60_000))
        behaviours["medium-replay"] = (f"SAC replay buffer up to step {medium.step}", lambda: medium.replay_episodes)
        behaviours["medium-expert"] = (f"{medium_name} + {expert_name}",
                                       lambda: behaviours["medium"][1]() + behaviours["expert"][1]())
    for kind in config.kinds:
        kind_started = time.perf_counter()
        name, episodes_of = behaviours[kind]
        episodes = episodes_of()
        if not episodes:
            raise DatasetError(f"{kind}: no complete episode was collected; raise --transitions")
        returns = np.array([e.ret for e in episodes])
        dataset_id = config.dataset_id(kind)
        metadata = {"behavior_policy": name, "behavior_mean_return": float(returns.mean()),
                    "behavior_std_return": float(returns.std()), "reference_scores": config.reference_scores,
                    "builder_config": asdict(config)}
        write_dataset(dataset_id, config.env_id, episodes, ref_min, ref_max, metadata, config.overwrite)
        seconds = time.perf_counter() - kind_started
        built.append(BuiltDataset(dataset_id, len(episodes), int(sum(len(e) for e in episodes)), float(returns.mean()),
                                  ref_min, ref_max, seconds))
        log(f"  wrote {dataset_id}: {len(episodes)} episodes, {built[-1].transitions} transitions, "
            f"behaviour return {returns.mean():.1f}")
    if trace:
        log(f"Done in {time.perf_counter() - started:.0f} s")

