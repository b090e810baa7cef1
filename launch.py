"""offline-RL sweeps: the command line.

    python launch.py dataset make --env Pendulum-v1 --kinds medium,expert
    python launch.py dataset list
    python launch.py dataset info pendulum/medium-v0
    python launch.py bench buffer
    python launch.py bench algorithms --members 1,8 --threads 2

`python launch.py SUBCOMMAND --help` explains each subcommand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# This folder holds a package directory named `datasets`; keep the folder off the import path so that
# `import datasets` in this process still finds Hugging Face's package. Our code is `offline_sweeps.*`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

try:
    from offline_sweeps import datasets as ds
except ImportError as error:  # pragma: no cover - exercised by hand on a fresh clone
    sys.exit(f"error: the project is not installed ({error}); run `pip install -e .` in {_HERE}")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _csv(text))


def dataset_make(args: argparse.Namespace) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ds.BuildConfig(env_id=args.env, kinds=args.kinds, name=args.name, version=args.version,
                            transitions=args.transitions, medium_return=args.medium_return,
                            expert_return=args.expert_return, expert=args.expert, sac_steps=args.sac_steps,
                            sac_start_steps=args.sac_start_steps, sac_hidden=args.sac_hidden,
                            eval_every=args.eval_every, num_envs=args.num_envs, seed=args.seed,
                            overwrite=args.overwrite)
    ds.build(config)


def dataset_list(args: argparse.Namespace) -> None:
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
    print(json.dumps(ds.describe(ds.load(args.dataset_id, download=not args.no_download)), indent=2))


def dataset_delete(args: argparse.Namespace) -> None:
    import minari
    if args.dataset_id not in ds.local_dataset_ids():
        raise ds.DatasetError(f"no local dataset {args.dataset_id!r} in {ds.datasets_root()}; "
                              f"`python launch.py dataset list` shows what there is")
    minari.delete_dataset(args.dataset_id)
    print(f"deleted {args.dataset_id}")


def bench(args: argparse.Namespace) -> None:
    import torch
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.target == "buffer":
        from offline_sweeps.datasets.benchmark import minibatches_per_second
        print(f"TransitionBuffer sampling on {device}, {args.threads} thread(s), batch {args.batch_size}, "
              f"1M HalfCheetah-sized transitions")
        for members in args.members:
            rate = minibatches_per_second(device, members, args.batch_size)
            print(f"  P={members:<3} {rate:10.0f} [P, B] minibatches/s  ({rate * members:10.0f} member-minibatches/s)")
        return
    from offline_sweeps.algorithms.benchmark import report
    print(f"Updates on {device}, {args.threads} thread(s), default nets (256x256, batch 256)"
          + (", CQL with bf16 sampled actions" if args.bf16 else ""))
    report(args.algorithms, args.members, args.problems, device, args.seconds, bf16=args.bf16)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    dataset = commands.add_parser("dataset", help="build, list and inspect local Minari datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    make = dataset_commands.add_parser(
        "make", help="build D4RL-style datasets offline from a Gymnasium env",
        description="Train a SAC behaviour agent online (when a medium/expert kind needs it), then write "
                    "<name>/<kind>-v<version> Minari datasets with ref_min_score/ref_max_score under "
                    "MINARI_DATASETS_PATH (default ~/.minari/datasets).")
    make.add_argument("--env", required=True, help="Gymnasium env id with continuous actions, e.g. Hopper-v5")
    make.add_argument("--kinds", type=_csv, default=ds.KINDS, help=f"comma-separated subset of {','.join(ds.KINDS)}")
    make.add_argument("--name", help="dataset name (default: the env's name in lower case, e.g. hopper)")
    make.add_argument("--version", type=int, default=0)
    make.add_argument("--transitions", type=int, default=100_000, help="transitions per dataset (whole episodes)")
    make.add_argument("--medium-return", type=float, help="eval return at which the medium policy is frozen")
    make.add_argument("--expert-return", type=float, help="eval return at which the expert policy is frozen")
    make.add_argument("--expert", choices=("sac", "scripted"), default="sac",
                      help="expert behaviour: the SAC agent, or a shipped scripted controller (Pendulum-v1)")
    make.add_argument("--sac-steps", type=int, default=300_000, help="most online steps for the SAC agent")
    make.add_argument("--sac-start-steps", type=int, default=5_000, help="uniform-random steps before learning")
    make.add_argument("--sac-hidden", type=_ints, default=(256, 256), help="SAC hidden sizes, e.g. 256,256")
    make.add_argument("--eval-every", type=int, default=5_000, help="online steps between evaluations")
    make.add_argument("--num-envs", type=int, default=10, help="envs stepped together when collecting")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    make.add_argument("--overwrite", action="store_true", help="replace datasets of the same id")
    make.set_defaults(run=dataset_make)
    listing = dataset_commands.add_parser("list", help="list local datasets with their size and returns")
    listing.set_defaults(run=dataset_list)
    info = dataset_commands.add_parser("info", help="show one dataset: size, spaces, returns, reference scores")
    info.add_argument("dataset_id", help="a Minari id (downloaded if missing and online) or a dataset folder")
    info.add_argument("--no-download", action="store_true", help="only look at local datasets")
    info.set_defaults(run=dataset_info)
    delete = dataset_commands.add_parser("delete", help="delete a local dataset")
    delete.add_argument("dataset_id")
    delete.set_defaults(run=dataset_delete)

    benchmark = commands.add_parser("bench", help="measure throughput (prints figures; not a test)")
    benchmark.add_argument("target", choices=("buffer", "algorithms"),
                           help="buffer: minibatch sampling; algorithms: member-updates/s of each algorithm")
    benchmark.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    benchmark.add_argument("--members", type=_ints, default=(1, 8), help="population sizes P, e.g. 1,8,32")
    benchmark.add_argument("--batch-size", type=int, default=256)
    benchmark.add_argument("--threads", type=int, default=1)
    benchmark.add_argument("--algorithms", type=_csv, help="subset to measure, e.g. iql,cql (default: all)")
    benchmark.add_argument("--problems", type=_csv, default=("hopper", "halfcheetah"),
                           help="hopper (obs 11, act 3) and/or halfcheetah (obs 17, act 6)")
    benchmark.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    benchmark.add_argument("--bf16", action="store_true", help="CQL scores its sampled actions in bfloat16")
    benchmark.set_defaults(run=bench)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except ds.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
