"""What a sweep tells its user when it ends: the trial counts, the report's table and winners on the console, the
best configs exported, W&B's offline runs and how to upload them, and the exit code (0 finished, 1 a trial failed,
3 stopped before the end: resume finishes it). launch.py's `sweep` and `resume` end here."""
from __future__ import annotations

import sys
from pathlib import Path


def log_report(folder, paths, use_wandb: bool, verbose: bool = False) -> None:
    """Logs a written report to the study's W&B group when the study and the command have W&B on."""
    from .study import STUDY_FILE
    from .study_yaml import load_study
    study = load_study(Path(folder) / STUDY_FILE, resolve=False)
    if use_wandb and study.wandb["enabled"]:
        from .wandb_logging import log_report as log_to_wandb
        where = log_to_wandb(study, paths, verbose)
        if verbose or not str(where).startswith(str(folder)):     # an offline one is in _wandb_hint's count
            print(f"report logged to W&B: {where}")


def _wandb_hint(folder) -> None:
    """Where the sweep's offline W&B runs are and how to upload them, once (W&B itself says nothing unless
    --verbose)."""
    runs = sorted(Path(folder).glob("*/wandb/offline-run-*")) if isinstance(folder, Path) else []
    if runs:
        print(f"W&B: {len(runs)} offline run(s) in {folder}/*/wandb; upload them with "
              f"`wandb sync {folder}/*/wandb/offline-run-*`")


def console_summary(markdown: str, path) -> list[str]:
    """The report's table and its winners, for the console; the other sections are named, not printed."""
    table = next((block for block in markdown.split("\n\n") if block.startswith("|")), "")
    sections = markdown.split("\n## ")[1:]
    winners = [line for section in sections if section.startswith("Winners")
               for line in section.splitlines() if line.startswith("- ")]
    others = [section.splitlines()[0] for section in sections if not section.startswith("Winners")]
    return [f"report: {path} (plots beside it{'; also: ' + '; '.join(others) if others else ''})", table,
            *(["winners:", *winners] if winners else [])]


def finish_study(results, folder, use_wandb: bool = True, verbose: bool = False) -> int:
    """After `sweep` or `resume`: counts, the report and best configs when any trial has results, and the exit
    code: 1 when a trial failed (every one failed: the first error's last line), 3 when trials are unfinished."""
    from .export import export_best
    from .report import write_report
    from .run import unfinished_trials
    errors, unfinished = results.num_errors, unfinished_trials(results)
    print(f"\n{len(results)} trial(s): {len(results) - errors - len(unfinished)} finished, {errors} failed, "
          f"{len(unfinished)} unfinished; results in {folder}")
    if any(r.metrics for r in results) and errors < len(results):
        paths = write_report(folder)
        print("\n".join(console_summary(paths["markdown"].read_text(), paths["markdown"])))
        log_report(folder, paths, use_wandb, verbose)
        if use_wandb:
            _wandb_hint(folder)
        for path in export_best(folder):
            print(f"best config: {path}  (re-run: python launch.py train --config {path})")
    if errors and errors == len(results):
        first = next(r.error for r in results if r.error is not None)
        last = next((line.strip() for line in reversed(str(first).splitlines()) if line.strip()), type(first).__name__)
        print(f"error: every trial failed ({errors}); the first: {last}; the rest in {folder}/*/error.txt",
              file=sys.stderr)
        return 1
    if errors:
        print(f"error: {errors} trial(s) failed; see the error.txt files under {folder}", file=sys.stderr)
        return 1
    if unfinished:
        print(f"error: the sweep stopped before {len(unfinished)} trial(s) finished; continue it with "
              f"`python launch.py resume {folder}`", file=sys.stderr)
        return 3
    return 0


def interrupted(folder) -> int:
    """A second Ctrl-C: the resume hint, exit 3."""
    print(f"\nerror: interrupted; continue the sweep with `python launch.py resume {folder}`", file=sys.stderr)
    return 3
