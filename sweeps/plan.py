"""What a sweep will do, said before it does it, and how long it has left while it runs.

`make_plan` counts a study's trials, members, member-updates and the datasets it still has to build, checks
the resources it asks for against what is here (`check_resources`: a GPU study on a GPU-less machine stops
at once, not after Tune has waited for a GPU forever), and, on request, times a few updates of each of the
study's algorithms at its net size on this machine (`calibrate`, about a second) for a rough estimate.
`SweepClock` turns the iteration times seen during the sweep into the time left for the whole sweep.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

from .study import Study, StudyError, trial_train_config

RAY_START_SECONDS = 5.0         # embedded Ray's start, once per sweep
TRIAL_START_SECONDS = 2.0       # a trial's setup: dataset load, env check, networks (DESIGN.md section 8)
# train.compile: a cold compile of one update graph on the 2-core CPU took 30 s to 25 min (docs/benchmarks.md); BRAC and
# BEAR compile one graph per phase. An on-disk cache hit is faster; the plan counts the cold cost.
COMPILE_SECONDS = 300.0
COMPILE_GRAPHS = {"brac": 3, "bear": 3}
CALIBRATION_SECONDS = 0.8       # time spent measuring updates, split between the study's algorithms
DEFAULT_DIMS = (11, 3)          # obs and action sizes assumed when neither the dataset nor build.env says


@dataclasses.dataclass
class Plan:
    study: Study
    folder: Path | str
    trials: list[dict]                    # the study's trials (one template per part with searcher: optuna)
    trial_count: int                      # trials Tune will run (num_samples with optuna)
    members: int                          # member runs in all
    iterations: list[int]                 # Tune iterations of each trial Tune will run
    algorithms: list[str]                 # the algorithm of each, in the same order
    member_updates: int
    per_trial: dict                       # resources one trial asks for (non-zero)
    available: dict | None                # resources here (None: a cluster, known once joined)
    problem: str | None                   # what stops the sweep on this machine, one line
    datasets: dict[str, str]              # dataset id -> "local" | "built first ..." | "downloaded ..."
    rates: dict[str, float] = dataclasses.field(default_factory=dict)   # calibration: key -> member-updates/s
    seconds: float | None = None          # estimated wall time, None when not estimated

    @property
    def slots(self) -> int | None:
        """Trials that fit at once on the resources here (0: none fits)."""
        if self.available is None:
            return None
        fits = [math.floor(self.available.get(key, 0) / amount + 1e-9) for key, amount in self.per_trial.items()]
        return min([self.trial_count, *fits])


def tune_resources(study: Study) -> dict:
    """The resources one trial asks Tune for: the study's non-zero ones."""
    return {key: amount for key, amount in study.resources.items() if amount}


def local_resources(num_cpus: int | None = None) -> dict:
    """What the embedded local Ray will have: this machine's CPUs (or --num-cpus) and CUDA GPUs, no custom ones."""
    import torch
    return {"cpu": num_cpus or os.cpu_count() or 1, "gpu": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def cluster_resources() -> dict:
    """What the Ray this process joined has in all, in the study's resource names."""
    import ray
    total = ray.cluster_resources()
    return {"cpu": total.get("CPU", 0), "gpu": total.get("GPU", 0),
            **{k: v for k, v in total.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
               and not k.startswith("node:") and not k.startswith("accelerator_type:")}}


def resource_problem(study: Study, available: dict, local: bool) -> str | None:
    """Why no trial of `study` can start on `available` (one line naming the fix), or None."""
    where = "this machine" if local else "the Ray cluster"
    for key, amount in tune_resources(study).items():
        have = available.get(key, 0)
        if amount <= have + 1e-9:
            continue
        if key == "gpu":
            what = "has no GPU" if not have else f"has {have:g}"
            return (f"resources.gpu: the study asks for {amount:g} GPU per trial and {where} {what}; run it on the "
                    f"CPU with the override resources.gpu=0, or on a GPU cluster with --address")
        if key == "cpu":
            return (f"resources.cpu: the study asks for {amount:g} CPUs per trial and {where} has {have:g}; "
                    f"override resources.cpu={max(1, int(have))}" + (", or give --num-cpus" if local else ""))
        return (f"resources.custom.{key}: the study asks for {amount:g} {key!r} per trial and {where} has "
                f"{'none' if not have else f'{have:g}'}; drop it with the override resources.custom={{}}, or run on "
                f"a cluster whose nodes provide it with --address")
    return None


def check_resources(study: Study, available: dict, local: bool) -> None:
    problem = resource_problem(study, available, local)
    if problem:
        raise StudyError(problem)


def dataset_status(study: Study) -> dict[str, str]:
    """Each dataset of the study: local, or built first from build.env, or downloaded by Minari."""
    from ..datasets.loading import local_dataset_ids
    local = set(local_dataset_ids())
    status = {}
    for dataset in sorted({d for part in study.parts for d in part.datasets}):
        if dataset in local or Path(dataset).exists():
            status[dataset] = "local"
        elif study.build:
            transitions = study.build.get("transitions")
            status[dataset] = (f"missing: built first from {study.build_env(dataset)}"
                               + (f" ({transitions:,} transitions)" if isinstance(transitions, int) else ""))
        else:
            status[dataset] = "missing: downloaded by Minari"
    return status


def memory_problem(trials: list[dict], gpu_share: float = 0.0) -> str | None:
    """A trial whose networks and minibatches cannot fit in this machine's available memory
    (host_memory.training_bytes_floor, a floor), said before Ray starts; None when each fits. `gpu_share`: the
    fraction of a GPU each trial trains on here (0: on the CPU); then the floor, times the trials that share one
    GPU at once, is held against the free memory of this machine's least free visible GPU (gpu_free_bytes)
    instead of the host's."""
    from ..algorithms.host_memory import available_bytes, training_bytes_floor
    from ..algorithms.trainer import TrainConfig
    needs = []
    for trial in trials:
        configs = TrainConfig.from_dict(trial_train_config(trial)).member_configs()
        needs.append((training_bytes_floor(configs, max(c.batch_size for c in configs)), trial, configs))
    if not needs:
        return None
    need, trial, configs = max(needs, key=lambda item: item[0])
    widths = sorted({getattr(c, 'hidden', ()) for c in configs})
    fix = "use smaller hidden sizes, batch_size or fewer packed members"
    if gpu_share > 0:
        free = gpu_free_bytes()
        sharing = min(len(trials), max(1, math.floor(1 / gpu_share + 1e-9)))
        if free is not None and need * sharing > free:
            together = (f", {need * sharing / 2**30:.2f} GiB for the {sharing} trials at once on one GPU at "
                        f"resources.gpu={gpu_share:g}" if sharing > 1 else "")
            return (f"train/search: a {trial['algorithm']} trial of {len(configs)} member(s) needs at least "
                    f"{need / 2**30:.2f} GiB of GPU memory for its networks and minibatches (layer widths {widths})"
                    f"{together}, more than the {free / 2**30:.2f} GiB free on the GPU here; {fix}"
                    f"{', or a larger resources.gpu' if sharing > 1 else ''}")
        return None
    free = available_bytes()
    if free is not None and need > free:
        return (f"train/search: a {trial['algorithm']} trial of {len(configs)} member(s) needs at least "
                f"{need / 2**30:.1f} GiB for its networks and minibatches (layer widths {widths}), more than the "
                f"{free / 2**30:.1f} GiB available here; {fix}")
    return None


def gpu_free_bytes() -> int | None:
    """The free memory of the least free GPU this process may use ($CUDA_VISIBLE_DEVICES's indices, or every GPU
    where it is unset or names UUIDs), as `nvidia-smi` reports it; None without nvidia-smi or a reading. Asked of
    nvidia-smi, not torch.cuda.mem_get_info: that opens a CUDA context, whose memory the driver would then hold on
    the GPU for the whole sweep."""
    import shutil
    import subprocess
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        answer = subprocess.run([smi, "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    free = {}
    for line in answer.stdout.splitlines() if answer.returncode == 0 else []:
        try:
            index, mib = (int(part) for part in line.split(","))
        except ValueError:
            continue
        free[str(index)] = mib * 2**20
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    chosen = [free[d] for d in visible if d in free] or list(free.values())
    return min(chosen) if chosen else None


TRIAL_PROCESS_BYTES = 300 * 2**20    # a trial's process before its data and networks: Python, torch, Ray's worker
                                     # (measured: 368 MiB resident after importing them, so this is a floor)


def processes_problem(plan: Plan) -> str | None:
    """Too many trials at once for this machine's memory: a small resources.cpu lets Ray start a trial process
    for every fraction of a CPU (0.001 CPU per trial: up to 1000 per CPU), each at least TRIAL_PROCESS_BYTES, and
    the machine would swap or kill them instead of running the sweep. None when they fit or it cannot tell."""
    from ..algorithms.host_memory import available_bytes
    free, slots = available_bytes(), plan.slots
    if free is None or not slots or slots * TRIAL_PROCESS_BYTES <= free:
        return None
    fits = max(1, free // TRIAL_PROCESS_BYTES)
    cpus = plan.available.get("cpu", 1)
    return (f"resources.cpu: at {plan.per_trial.get('cpu', 1):g} CPU per trial, {slots} trials would run at once "
            f"here, each a process of at least {TRIAL_PROCESS_BYTES / 2**30:.2f} GiB (Python, torch, Ray), more than "
            f"the {free / 2**30:.1f} GiB available; raise resources.cpu to {math.ceil(100 * cpus / fits) / 100:g} or "
            f"more, or pack members into fewer trials")


def make_plan(study: Study, folder, address: str | None = None, num_cpus: int | None = None,
              estimate: bool = False) -> Plan:
    """The plan of `study`; `estimate` times a few updates of each algorithm here (about a second)."""
    trials = study.trials()
    if study.searcher == "optuna":
        runs = [trials[0]] * study.parts[0].num_samples
    else:
        runs = trials
    iterations = [math.ceil(t["total_updates"] / t["eval_every"]) for t in runs]
    local = not (address or os.environ.get("RAY_ADDRESS"))
    available = None
    if local:
        import ray
        available = cluster_resources() if ray.is_initialized() else local_resources(num_cpus)
    plan = Plan(study=study, folder=folder, trials=trials, trial_count=len(runs),
                members=sum(len(t["members"]) for t in runs), iterations=iterations,
                algorithms=[t["algorithm"] for t in runs],
                member_updates=sum(len(t["members"]) * t["total_updates"] for t in runs),
                per_trial=tune_resources(study), available=available,
                problem=resource_problem(study, available, local=True) if available is not None else None,
                datasets=dataset_status(study))
    if plan.problem is None:
        plan.problem = memory_problem(trials, plan.per_trial.get("gpu", 0) if local else 0)
    if plan.problem is None and local:
        plan.problem = processes_problem(plan)
    if estimate and plan.problem is None:
        plan.rates = calibrate(study, runs)
        plan.seconds = estimate_seconds(plan)
    return plan


def _key(trial: dict) -> str:
    return f"{trial['algorithm']} x{len(trial['members'])}"


def calibrate(study: Study, runs: list[dict], seconds: float = CALIBRATION_SECONDS) -> dict[str, float]:
    """Member-updates per second of each distinct (algorithm, population size) of the study, measured here on
    synthetic data at the study's net sizes and the trial's CPU threads; model-based algorithms are left out
    (their dynamics ensemble's training comes first and dominates)."""
    import torch

    from ..algorithms import ALGORITHMS
    from ..algorithms.benchmark import learner_updates_per_second, synthetic_buffer
    from ..algorithms.trainer import TrainConfig
    distinct = {}
    for trial in runs:
        if not ALGORITHMS[trial["algorithm"]].USES_MODEL:
            distinct.setdefault(_key(trial), trial)
    rates = {}
    threads = torch.get_num_threads()
    gpu = study.resources.get("gpu", 0) > 0 and torch.cuda.is_available()
    torch.set_num_threads(max(1, int(study.resources.get("cpu", 1))))
    try:
        for key, trial in list(distinct.items())[:4]:
            config = TrainConfig.from_dict(trial_train_config(trial))
            learner_class = ALGORITHMS[config.algorithm]
            configs = config.member_configs()
            if "behavior_pretrain_steps" in learner_class.Config.__dataclass_fields__:
                configs = [dataclasses.replace(c, behavior_pretrain_steps=0) for c in configs]
            obs_dim, act_dim = problem_dims(config.dataset, study)
            device = "cuda" if gpu else "cpu"
            learner = learner_class(configs, obs_dim, act_dim, -torch.ones(act_dim), torch.ones(act_dim), device)
            buffer = synthetic_buffer(obs_dim, act_dim, device, transitions=5_000)
            budget = seconds / min(4, len(distinct))
            # two warm-up updates (first calls allocate), then at least three timed ones
            rates[key] = learner_updates_per_second(learner, buffer, budget, chunk=3, warmup=2) * len(configs)
    finally:
        torch.set_num_threads(threads)
    return rates


def problem_dims(dataset: str, study: Study) -> tuple[int, int]:
    """Observation and action sizes of `dataset`: from its Minari metadata when local, else from the env the
    study builds it from, else DEFAULT_DIMS."""
    from ..datasets.loading import datasets_root
    for folder in (datasets_root() / dataset, Path(dataset)):
        try:
            metadata = json.loads((folder / "data" / "metadata.json").read_text())
            spaces = [json.loads(metadata[key]) for key in ("observation_space", "action_space")]
            return tuple(math.prod(space["shape"]) for space in spaces)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if study.build_env(dataset):
        try:
            from ..datasets.rollout import make_env
            env = make_env(study.build_env(dataset))
            dims = (math.prod(env.observation_space.shape), math.prod(env.action_space.shape))
            env.close()
            return dims
        except Exception:           # an env that needs a package not here: the estimate is rough anyway
            pass
    return DEFAULT_DIMS


def estimate_seconds(plan: Plan) -> float | None:
    """Training time of the whole sweep: each trial's updates at the calibrated rate plus its start, the trials
    spread over the slots here, plus Ray's start. None when an algorithm was not calibrated or the slots are
    unknown (a cluster)."""
    runs = [plan.trials[0]] * plan.trial_count if plan.study.searcher == "optuna" else plan.trials
    if not plan.slots or any(_key(t) not in plan.rates for t in runs):
        return None
    per_trial = sorted((len(t["members"]) * t["total_updates"] / plan.rates[_key(t)] + TRIAL_START_SECONDS
                        + compile_seconds(t) for t in runs), reverse=True)
    return RAY_START_SECONDS + max(per_trial[0], sum(per_trial) / plan.slots)


def compile_seconds(trial: dict) -> float:
    """The compile time a trial with `compile: true` pays before its first update (0 without); the calibrated rate
    stays the eager one, an upper bound on the compiled update's time on the CPU."""
    return COMPILE_SECONDS * COMPILE_GRAPHS.get(trial["algorithm"], 1) if trial.get("compile") else 0.0


def format_plan(plan: Plan, log_file: str | None = None) -> list[str]:
    """The plan as a few lines for the console."""
    study = plan.study
    algorithms = sorted({t["algorithm"] for t in plan.trials})
    axes = sorted({axis.key for part in study.parts for axis in part.axes})
    packed = sorted({key for part in study.parts for key in part.pack})
    lines = [f"Study {study.name}: {plan.trial_count} trial(s), {plan.members} member run(s) "
             f"({', '.join(algorithms)}; axes {', '.join(axes) or 'none'}"
             f"{'; packed ' + ', '.join(packed) if packed else ''}) -> {plan.folder}"]
    if study.interpolated:
        lines.append(f"  resolved the interpolations in {', '.join(study.interpolated)}; their values (environment "
                     f"variables included) are written into the study folder")
    budget = f"{plan.member_updates:,} member-updates in {sum(plan.iterations)} iteration(s)"
    if study.scheduler["name"] == "asha":
        budget += " at most (ASHA stops the weaker trials early)"
    lines.append(f"  budget: {budget}")
    resources = ", ".join(f"{amount:g} {key.upper() if key in ('cpu', 'gpu') else key}"
                          for key, amount in plan.per_trial.items())
    if plan.available is None:
        lines.append(f"  per trial: {resources}; trials at a time: as many as the cluster fits")
    else:
        here = ", ".join(f"{amount:g} {key.upper() if key in ('cpu', 'gpu') else key}"
                         for key, amount in plan.available.items())
        fits = f"{plan.slots} trial(s) at a time" if plan.slots else "none fits"
        lines.append(f"  per trial: {resources}; {fits} on the local Ray ({here})")
    for dataset, status in plan.datasets.items():
        lines.append(f"  dataset {dataset}: {status}")
    if plan.problem:
        lines.append(f"  cannot run here: {plan.problem}")
    elif plan.seconds is not None:
        rates = ", ".join(f"{key} {rate:,.0f}" for key, rate in plan.rates.items())
        built = " plus building the missing datasets" if any(s != "local" for s in plan.datasets.values()) else ""
        compiling = sum(map(compile_seconds, plan.trials))
        compiled = f", and {duration(compiling)} of compiles (train.compile)" if compiling else ""
        lines.append(f"  estimate: about {duration(plan.seconds)}{built}, rough: the training updates at the rate "
                     f"timed here just now ({rates} member-updates/s){compiled}; evaluations and other load add to it")
    if log_file and not plan.problem:
        lines.append(f"  Ray's own messages go to {log_file} (--verbose shows them here)")
    return lines


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepClock:
    """The time left for a whole sweep, from the wall time between a trial's results (its first from the
    trial's start, so trial start-up counts) and the iterations still to run: those of running trials, and
    `planned` ones of trials not yet started (Tune makes them in the planned order), spread over as many trials
    at a time as have been seen running.

    `planned` holds (kind, iterations) per trial, the kind its algorithm: iterations are timed per kind, since
    one study's algorithms differ twentyfold in the time an iteration takes (BC against CQL on a CPU). A kind not
    timed yet is counted at the slowest timed kind's pace and named by `untimed`, so an early estimate says what
    it lacks."""

    def __init__(self, planned: list[tuple[str, int]]):
        self.planned = list(planned)
        self.last: dict = {}                 # trial id -> wall time of its start or last result
        self.durations: dict[str, list[float]] = {}
        self.concurrency = 1
        self.untimed: list[str] = []         # kinds with work left and no iteration timed, as of seconds_left

    def started(self, trial_id) -> None:
        self.last[trial_id] = time.monotonic()

    def result(self, trial_id, kind: str) -> None:
        now = time.monotonic()
        if trial_id in self.last:
            self.durations.setdefault(kind, []).append(now - self.last[trial_id])
        self.last[trial_id] = now

    def seconds_left(self, remaining: list[tuple[str, int]], unseen: int, running: int) -> float | None:
        """`remaining`: (kind, iterations left) of each trial Tune has made; `unseen`: trials it has not made
        yet, the last `unseen` of the planned ones."""
        if not self.durations:
            return None
        self.concurrency = max(self.concurrency, running, 1)
        pace = {kind: sum(times) / len(times) for kind, times in self.durations.items()}
        slowest = max(pace.values())
        queued = self.planned[len(self.planned) - unseen:] if unseen > 0 else []
        work = [(kind, left) for kind, left in [*remaining, *queued] if left > 0]
        self.untimed = sorted({kind for kind, _ in work if kind not in pace})
        seconds = [pace.get(kind, slowest) * left for kind, left in work]
        return max(sum(seconds) / self.concurrency, max(seconds, default=0.0))
