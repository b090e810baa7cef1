"""offline-RL sweeps: the command line.

    python launch.py sweep sweeps/quickstart.yaml [key=value ...] [--address auto] [--dry-run]
    python launch.py resume results/quickstart
    python launch.py report results/quickstart
    python launch.py export results/quickstart [--select online|fqe|critic|td_error | --select bandit --episodes K]
    python launch.py train --config results/quickstart/best/iql-pendulum_medium-v0.yaml [key=value ...]
    python launch.py dataset make --env Pendulum-v1 --kinds medium,expert
    python launch.py dataset list
    python launch.py dataset info pendulum/medium-v0
    python launch.py bench buffer
    python launch.py bench algorithms --members 1,8 --threads 2
    python launch.py bench algorithms --compile --algorithms iql,cql
    python launch.py bench tune
    python launch.py bench model-based --members 1,8
    python launch.py model train pendulum/medium-v0 --seed 0
    python launch.py model list

`python launch.py SUBCOMMAND --help` explains each subcommand. Ray's, Tune's and W&B's own console output goes
to log files (a sweep's to <storage>/<name>/logs/ray.log) unless --verbose.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# This folder holds a package directory named `datasets`; keep the folder off the import path so that
# `import datasets` in this process still finds Hugging Face's package. Our code is `offline_sweeps.*`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]



def _import_from_source_tree() -> None:
    """Make `offline_sweeps.*` importable from this checkout when it is not pip-installed (a Ray job's
    working dir on a cluster head, say): the subpackages are the folders beside this file, the mapping
    pyproject.toml gives setuptools."""
    import types
    for name in [m for m in sys.modules if m == "offline_sweeps" or m.startswith("offline_sweeps.")]:
        del sys.modules[name]
    package = types.ModuleType("offline_sweeps")
    package.__path__ = [str(_HERE)]
    sys.modules["offline_sweeps"] = package


def _load_package() -> None:
    """Find `offline_sweeps` (installed, else this checkout) and import it, with torch and the rest: done once
    the command line is parsed, so that `--help` answers without loading them (about 3 s)."""
    import importlib.util
    try:
        installed = importlib.util.find_spec("offline_sweeps.datasets") is not None
    except ImportError:
        installed = False
    if not installed:
        _import_from_source_tree()
    try:
        import offline_sweeps.datasets  # noqa: F401
        import offline_sweeps.sweeps.study_yaml  # noqa: F401
    except ImportError as error:  # a dependency is missing, not the project
        sys.exit(f"error: {error}; install the project and its dependencies with `pip install -e .` in {_HERE}")


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors that are the user's to fix: said as one line, exit code 2."""
    from offline_sweeps.algorithms.base import ConfigError
    from offline_sweeps.algorithms.dynamics import DynamicsError
    from offline_sweeps.datasets import DatasetError
    from offline_sweeps.sweeps.study import StudyError
    return DatasetError, ConfigError, StudyError, DynamicsError


# Choices the parser offers, written here so that `--help` needs no torch; tests/test_launch.py checks them
# against datasets.KINDS and algorithms.networks.SAMPLED_Q_PRECISIONS.
DATASET_KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
SAMPLED_Q_PRECISIONS = ("auto", "bfloat16", "float32")
SELECT_CRITERIA = ("online", "fqe", "critic", "td_error")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _csv(text))


def _finite(text: str) -> float:
    """An argparse type: a finite number, else argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    return value


def _whole(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, else argparse's one-line error."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} must be from {low:,} to {high:,}")
        return value
    return whole


def sweep(args: argparse.Namespace) -> int:
    from offline_sweeps.sweeps.folder import experiment_dir, ray_log_file
    from offline_sweeps.sweeps.outcome import finish_study, interrupted
    from offline_sweeps.sweeps.plan import format_plan, make_plan
    from offline_sweeps.sweeps.run import run_study
    from offline_sweeps.sweeps.study_yaml import load_study
    study = load_study(args.study, args.overrides)
    if args.dry_run:
        folder = experiment_dir(study)
        plan = make_plan(study, folder, args.address, args.num_cpus, estimate=True)
        print("\n".join(format_plan(plan, None if args.verbose else str(ray_log_file(folder, study.name)))))
        print("dry run: nothing started")
        return 0
    try:
        results = run_study(study, args.address, use_wandb=not args.no_wandb, num_cpus=args.num_cpus,
                            overwrite=args.overwrite, verbose=args.verbose, estimate=True)
    except KeyboardInterrupt:          # a second Ctrl-C: Tune stopped at once; the folder was signed on the way out
        return interrupted(experiment_dir(study))
    return finish_study(results, experiment_dir(study), not args.no_wandb, args.verbose)


def resume(args: argparse.Namespace) -> int:
    from offline_sweeps.sweeps.outcome import finish_study, interrupted
    from offline_sweeps.sweeps.run import resume_study
    try:
        results = resume_study(args.folder, args.address, use_wandb=not args.no_wandb, num_cpus=args.num_cpus,
                               trust=args.trust, verbose=args.verbose)
    except KeyboardInterrupt:
        return interrupted(Path(args.folder).expanduser().resolve())
    return finish_study(results, Path(args.folder).expanduser().resolve(), not args.no_wandb, args.verbose)


def report(args: argparse.Namespace) -> None:
    from offline_sweeps.sweeps.outcome import log_report
    from offline_sweeps.sweeps.report import write_report
    paths = write_report(args.folders, args.out)
    print(paths["markdown"].read_text())
    print(f"written: {', '.join(str(path) for key, path in paths.items() if key != 'markdown')}")
    if len(args.folders) == 1:       # a report of several studies belongs to no one study's W&B group
        log_report(args.folders[0], paths, not args.no_wandb, args.verbose)


def export(args: argparse.Namespace) -> None:
    from offline_sweeps.sweeps.export import export_best
    for path in export_best(args.folder, select=args.select, episodes=args.episodes):
        print(f"{path}  (re-run: python launch.py train --config {path})")


def train(args: argparse.Namespace) -> None:
    from offline_sweeps.sweeps.train import train_from_file
    train_from_file(args.config, args.output, overrides=args.overrides)


def dataset_make(args: argparse.Namespace) -> None:
    from offline_sweeps import datasets as ds
    import torch
    from offline_sweeps.algorithms.online_sac import OnlineSAC
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ds.BuildConfig(env_id=args.env, kinds=args.kinds, name=args.name, version=args.version,
                            transitions=args.transitions, medium_return=args.medium_return,
                            expert_return=args.expert_return, expert=args.expert, sac_steps=args.sac_steps,
                            sac_start_steps=args.sac_start_steps, sac_hidden=args.sac_hidden,
                            eval_every=args.eval_every, num_envs=args.num_envs,
                            reference_scores=args.reference_scores, seed=args.seed, overwrite=args.overwrite)
    ds.build(config, make_agent=OnlineSAC)


def dataset_list(args: argparse.Namespace) -> None:
    from offline_sweeps import datasets as ds
    ids = ds.local_dataset_ids()
    print(f"{len(ids)} dataset(s) in {ds.datasets_root()}")
    for dataset_id in ids:
        try:
            info = ds.describe(ds.load(dataset_id, download=False))
        except ds.DatasetError as error:
            print(f"  {dataset_id:<36} unusable: {error}")
            continue
        refs = (f"refs [{info['ref_min_score']:.1f}, {info['ref_max_score']:.1f}]"
                if info["ref_max_score"] is not None else "no refs")
        print(f"  {dataset_id:<36} {info['episodes']:>6} episodes {info['transitions']:>9} transitions  "
              f"return {info['return_mean']:9.1f}  {refs}  {info['size_mb']} MB")


def dataset_info(args: argparse.Namespace) -> None:
    from offline_sweeps import datasets as ds
    print(json.dumps(ds.describe(ds.load(args.dataset_id, download=not args.no_download)), indent=2))


def dataset_delete(args: argparse.Namespace) -> None:
    from offline_sweeps import datasets as ds
    import minari
    if args.dataset_id not in ds.local_dataset_ids():
        raise ds.DatasetError(f"no local dataset {args.dataset_id!r} in {ds.datasets_root()}; "
                              f"`python launch.py dataset list` shows what there is")
    minari.delete_dataset(args.dataset_id)
    print(f"deleted {args.dataset_id}")


def model_train(args: argparse.Namespace) -> None:
    from offline_sweeps import datasets as ds
    import torch
    from offline_sweeps.algorithms.dynamics import DynamicsConfig, load_or_train
    torch.set_num_threads(args.threads)
    settings = {"seed": args.seed, "ensemble": args.ensemble, "elites": args.elites, "max_epochs": args.max_epochs}
    if args.hidden:
        settings["hidden"] = args.hidden
    config = DynamicsConfig(**settings)
    dataset = ds.load(args.dataset_id, download=not args.no_download)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ensemble = load_or_train(dataset, config, args.model_dir, device)
    _print_model_report(ensemble.report, dataset.obs_dim)


def _print_model_report(report: dict, obs_dim: int) -> None:
    origin = "loaded from the cache" if report.get("cached") else f"trained in {report['seconds']:.1f} s"
    print(f"dynamics ensemble {report['key'][:16]} ({origin}): {report['path']}")
    print(f"  epochs {report['epochs']}, {report['train_transitions']} train / {report['holdout_transitions']} held-out transitions")
    print(f"  elites {report['elites']}: held-out NLL {report['elite_holdout_nll']:.4f}, "
          f"MSE {report['elite_holdout_mse']:.5f} (normalized targets)")
    print("  held-out NLL per member: " + ", ".join(f"{v:.3f}" for v in report["holdout_nll"]))
    names = [f"d_obs[{i}]" for i in range(obs_dim)] + ["reward"]
    print("  held-out MSE per output (raw units, elite mean): "
          + ", ".join(f"{n} {v:.3g}" for n, v in zip(names, report["holdout_mse_per_dim"])))


def model_list(args: argparse.Namespace) -> None:
    from offline_sweeps.algorithms.dynamics import default_model_dir
    root = Path(args.model_dir) if args.model_dir else default_model_dir()
    entries = sorted(path for path in root.glob("*/report.json")) if root.is_dir() else []
    print(f"{len(entries)} cached dynamics ensemble(s) in {root}")
    for path in entries:
        entry = json.loads(path.read_text())
        report, config = entry["report"], entry["config"]
        print(f"  {path.parent.name[:16]}  {entry.get('dataset_id')}  seed {config['seed']}  "
              f"{config['ensemble']} x {config['hidden']}  elites {report['elites']}  "
              f"held-out NLL {report['elite_holdout_nll']:.4f}  {report['epochs']} epochs, {report['seconds']:.0f} s")


def bench(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.default_malloc:
        from offline_sweeps.algorithms.host_memory import keep_freed_memory
        keep_freed_memory()         # as a CPU training run does
    if args.target == "buffer":
        from offline_sweeps.datasets.benchmark import minibatches_per_second
        print(f"TransitionBuffer sampling on {device}, {args.threads} thread(s), batch {args.batch_size}, "
              f"1M HalfCheetah-sized transitions")
        for members in args.members:
            rate = minibatches_per_second(device, members, args.batch_size)
            print(f"  P={members:<3} {rate:10.0f} [P, B] minibatches/s  ({rate * members:10.0f} member-minibatches/s)")
        return
    if args.target == "tune":
        from offline_sweeps.sweeps.benchmark import trial_overhead
        timing = trial_overhead(args.trials, log=lambda _: None)
        print(f"Ray Tune per-trial overhead: {args.trials} one-update trials one after another on the embedded Ray, "
              f"from a trial's end to the next one's first training step:")
        for name, values in (("next trials", timing["overhead"]), ("first trial", timing["first"]),
                             ("setup alone", timing["setup"])):
            print(f"  {name:<16} median {np.median(values):6.2f} s   min {values.min():6.2f}   max {values.max():6.2f}")
        print(f"  whole sweep      {timing['wall'][0]:6.1f} s (Ray start, dataset check, {args.trials} trials)")
        return
    if args.target == "model-based":
        from offline_sweeps.algorithms.benchmark import model_based_report
        print(f"Model-based on {device}, {args.threads} thread(s): dynamics ensemble (7 x 4x200) training, "
              f"rollouts, and MOPO/COMBO updates (default nets, batch 256)")
        model_based_report(args.algorithms or ("mopo", "combo"), args.members, args.problems, device, args.seconds,
                           sampled_q_precision=args.sampled_q_precision)
        return
    if args.compile:
        from offline_sweeps.algorithms.benchmark import compile_report
        print(f"Member-updates/s on {device}, {args.threads} thread(s), eager and compiled (train.compile), batch 256; "
              f"compile s: the first compiled call (a warm on-disk cache makes it shorter)")
        compile_report(args.algorithms, args.members, device=device, seconds=args.seconds)
        return
    from offline_sweeps.algorithms.benchmark import report
    print(f"Updates on {device}, {args.threads} thread(s), default nets (256x256, batch 256), "
          f"CQL's sampled actions in {args.sampled_q_precision} precision")
    report(args.algorithms, args.members, args.problems, device, args.seconds, args.sampled_q_precision)


def _command(commands, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its one-line help, a description for its own --help, and --verbose."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                         help="show Ray's, Tune's and W&B's own console output too (by default they go to log files)")
    return commands.add_parser(name, help=help, description=description or f"{help[0].upper()}{help[1:]}.",
                               parents=[verbose])


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--verbose", "-v", action="store_true",
                      help="show Ray's, Tune's and W&B's own console output too (by default they go to log files)")
    commands = root.add_subparsers(dest="command", required=True)

    run = _command(commands, "sweep", "run a study YAML on Ray Tune (embedded local Ray or a cluster)",
                   "Print the study's plan (trials, resources, datasets, an estimated time), then expand the study "
                   "(sweeps/*.yaml) into Tune trials, run them with one progress line per result, and write the "
                   "sensitivity report and the best configs into <storage>/<name>/. Ray's and W&B's own output goes "
                   "to <storage>/<name>/logs/ unless --verbose.")
    run.add_argument("study", help="a study YAML, e.g. sweeps/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1,2] train.total_updates=20000")
    for sub in (run, resume_parser := _command(
            commands, "resume", "continue an interrupted sweep without redoing finished trials",
            "Continue a sweep that stopped (Ctrl-C, SIGTERM, a crash): finished trials stay, unfinished and "
            "failed ones restart from their last checkpoints; then the report and best configs are rewritten.")):
        sub.add_argument("--address", help="join a running Ray cluster (auto or host:port; or set RAY_ADDRESS)")
        sub.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
        sub.add_argument("--num-cpus", type=_whole(1, 4096), help="CPUs of the embedded local Ray (default: all)")
    run.add_argument("--overwrite", action="store_true",
                     help="clear the study folder's earlier results first (a sweep into a non-empty folder is refused; "
                          "only a folder a sweep marked as a study's is ever cleared)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (trials, resources, datasets to build, estimated time) and exit: no Ray, "
                          "no dataset build, no folder")
    run.set_defaults(run=sweep)
    resume_parser.add_argument("folder", help="the study folder, <storage>/<study name>")
    resume_parser.add_argument("--trust", action="store_true",
                               help="resume a folder this installation did not sign (its Ray files are unpickled, "
                                    "which can run code): only one you trust")
    resume_parser.set_defaults(run=resume)
    reporting = _command(commands, "report", "sensitivity table (Markdown, CSV) and plots of one or more studies",
                         "Read the study folders' Tune results (never W&B) and write the sensitivity table per "
                         "knob value (mean, IQM and bootstrap CIs over seeds), the winners and the plots; log them "
                         "to the study's W&B group unless --no-wandb.")
    reporting.add_argument("folders", nargs="+", metavar="folder",
                           help="study folders, <storage>/<study name>; several (of the same metric) share one report")
    reporting.add_argument("--out", help="where the report goes (default: <folder>/report for one study, "
                                         "report-<name>+<name> beside the first for several)")
    reporting.add_argument("--no-wandb", action="store_true", help="do not log the report to Weights & Biases")
    reporting.set_defaults(run=report)
    exporting = _command(commands, "export", "best config per (algorithm, dataset) as a re-runnable YAML",
                         "Write the best setting of each (algorithm, dataset) of a study as a TrainConfig YAML in "
                         "<folder>/best/, which `launch.py train --config` re-runs.")
    exporting.add_argument("folder", help="the study folder, <storage>/<study name>")
    exporting.add_argument("--select", choices=(*SELECT_CRITERIA, "bandit"),
                           help="how to pick the best setting: online (the test env's returns), offline from the "
                                "data alone (fqe, critic, td_error), or bandit (a UCB bandit over the trained "
                                "policies spending --episodes online episodes); default: the study's select: key, "
                                "else online")
    exporting.add_argument("--episodes", type=_whole(1, 10**9), metavar="K",
                           help="with --select bandit: the online budget, in test-environment episodes")
    exporting.set_defaults(run=export)
    training = _command(commands, "train", "run one config YAML to its budget (no Tune search)",
                        "Train one TrainConfig YAML (e.g. one that `export` wrote) to its budget in this process, "
                        "without Ray; key=value overrides change it for this run.")
    training.add_argument("--config", required=True, help="a TrainConfig YAML, e.g. one that `export` wrote")
    training.add_argument("overrides", nargs="*",
                          help="key=value overrides, e.g. total_updates=2000 algo.expectile=0.8 "
                               "'members=[{seed: 3}]' (quoted: a YAML mapping needs the space after the colon)")
    training.add_argument("--output", help="where result.json goes (default results/train/<config name>)")
    training.set_defaults(run=train)

    dataset = _command(commands, "dataset", help="build, list and inspect local Minari datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    make = _command(
        dataset_commands, "make", help="build D4RL-style datasets offline from a Gymnasium env",
        description="Train a SAC behaviour agent online (when a medium/expert kind needs it), then write "
                    "<name>/<kind>-v<version> Minari datasets with ref_min_score/ref_max_score under "
                    "MINARI_DATASETS_PATH (default ~/.minari/datasets).")
    make.add_argument("--env", required=True, help="Gymnasium env id with continuous actions, e.g. Hopper-v5")
    make.add_argument("--kinds", type=_csv, default=DATASET_KINDS,
                      help=f"comma-separated subset of {','.join(DATASET_KINDS)}")
    make.add_argument("--name", help="dataset name (default: the env's name in lower case, e.g. hopper)")
    make.add_argument("--version", type=_whole(0, 10**6), default=0)
    make.add_argument("--transitions", type=_whole(1, 10**8), default=100_000, help="transitions per dataset, at least: whole episodes, so rounded up to the next episode end")
    make.add_argument("--medium-return", type=_finite, help="eval return at which the medium policy is frozen")
    make.add_argument("--expert-return", type=_finite, help="eval return at which the expert policy is frozen")
    make.add_argument("--expert", choices=("sac", "scripted"), default="sac",
                      help="expert behaviour: the SAC agent, or a shipped scripted controller (Pendulum-v1)")
    make.add_argument("--sac-steps", type=_whole(1, 10**8), default=300_000, help="most online steps for the SAC agent")
    make.add_argument("--sac-start-steps", type=_whole(0, 10**8), default=5_000, help="uniform-random steps before learning")
    make.add_argument("--sac-hidden", type=_ints, default=(256, 256), help="SAC hidden sizes, e.g. 256,256")
    make.add_argument("--eval-every", type=_whole(1, 10**8), default=5_000, help="online steps between evaluations")
    make.add_argument("--num-envs", type=_whole(1, 256), default=10, help="envs stepped together when collecting (at most 256)")
    make.add_argument("--reference-scores", choices=("auto", "d4rl", "measured"), default="auto",
                      help="ref_min/ref_max_score: D4RL's random and expert returns (Hopper, HalfCheetah, Walker2d), "
                           "or measured here from the random policy and the expert; auto: d4rl where D4RL has the env")
    make.add_argument("--seed", type=_whole(0, 2**63 - 1), default=0)
    make.add_argument("--threads", type=_whole(0, 1024), default=0, help="torch threads (default: torch's own choice)")
    make.add_argument("--overwrite", action="store_true", help="replace datasets of the same id")
    make.set_defaults(run=dataset_make)
    listing = _command(dataset_commands, "list", help="list local datasets with their size and returns")
    listing.set_defaults(run=dataset_list)
    info = _command(dataset_commands, "info", help="show one dataset: size, spaces, returns, reference scores")
    info.add_argument("dataset_id", help="a Minari id (downloaded if missing and online) or a dataset folder")
    info.add_argument("--no-download", action="store_true", help="only look at local datasets")
    info.set_defaults(run=dataset_info)
    delete = _command(dataset_commands, "delete", help="delete a local dataset")
    delete.add_argument("dataset_id")
    delete.set_defaults(run=dataset_delete)

    model = _command(commands, "model", help="train or list the cached dynamics ensembles of MOPO/COMBO")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    model_make = _command(
        model_commands, "train", help="train (or load from the cache) the ensemble for a dataset and print its held-out fit",
        description="Trains the dynamics ensemble MOPO and COMBO use for DATASET, or loads it from the cache, "
                    "which is keyed by the dataset's contents and every setting below, so a sweep finds it.")
    model_make.add_argument("dataset_id")
    model_make.add_argument("--seed", type=_whole(0, 2**63 - 1), default=0)
    model_make.add_argument("--ensemble", type=int, default=7, help="members E")
    model_make.add_argument("--elites", type=int, default=5)
    model_make.add_argument("--hidden", type=_ints, help="layer sizes, default 200,200,200,200")
    model_make.add_argument("--max-epochs", type=int, default=1000)
    model_make.add_argument("--model-dir", help="cache folder (default $OFFLINE_SWEEPS_MODEL_DIR or "
                                                "~/.cache/offline_sweeps/models)")
    model_make.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    model_make.add_argument("--threads", type=_whole(1, 1024), default=1)
    model_make.add_argument("--no-download", action="store_true", help="only look at local datasets")
    model_make.set_defaults(run=model_train)
    model_listing = _command(model_commands, "list", help="list the cached ensembles and their held-out fit")
    model_listing.add_argument("--model-dir", help="cache folder (default as for train)")
    model_listing.set_defaults(run=model_list)

    benchmark = _command(commands, "bench", help="measure throughput (prints figures; not a test)")
    benchmark.add_argument("target", choices=("buffer", "algorithms", "model-based", "tune"),
                           help="buffer: minibatch sampling; algorithms: member-updates/s of each algorithm")
    benchmark.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    benchmark.add_argument("--members", type=_ints, default=(1, 8), help="population sizes P, e.g. 1,8,32")
    benchmark.add_argument("--batch-size", type=int, default=256)
    benchmark.add_argument("--threads", type=_whole(1, 1024), default=1)
    benchmark.add_argument("--algorithms", type=_csv, help="subset to measure, e.g. iql,cql (default: all)")
    benchmark.add_argument("--problems", type=_csv, default=("hopper", "halfcheetah"),
                           help="hopper (obs 11, act 3) and/or halfcheetah (obs 17, act 6)")
    benchmark.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    benchmark.add_argument("--sampled-q-precision", choices=SAMPLED_Q_PRECISIONS, default="auto",
                           help="CQL and COMBO's sampled_q_precision (auto: bfloat16 where the device has it natively)")
    benchmark.add_argument("--trials", type=_whole(1, 10_000), default=8, help="tune: how many one-update trials")
    benchmark.add_argument("--compile", action="store_true",
                           help="algorithms: eager and compiled updates side by side (quickstart- and HalfCheetah-sized)")
    benchmark.add_argument("--default-malloc", action="store_true",
                           help="keep glibc's default of unmapping large freed blocks (training runs keep them)")
    benchmark.set_defaults(run=bench)
    return root


def main(argv: list[str] | None = None) -> int:
    root = parser()
    args, extra = root.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra            # overrides after an option: `sweep STUDY --dry-run seeds=[0]`
    elif extra:
        root.parse_args(argv)              # argparse's own error for what is left
    _load_package()
    try:
        return args.run(args) or 0
    except OSError as error:
        import errno
        if error.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on the device{f' writing {error.filename}' if error.filename else ''}; free "
              f"space, then `launch.py resume <folder>` continues a sweep", file=sys.stderr)
        return 2
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
