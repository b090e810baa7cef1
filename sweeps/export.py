"""`launch.py export`: the best setting per (algorithm, dataset) as a standalone training config, written to
`<study folder>/best/<algorithm>-<dataset>.yaml` for `launch.py train --config`, its header (YAML comments) saying
how it was chosen and what the seeds say about it: by the online oracle (selection.ranking), by an offline
criterion (selection.offline_picks), or by the bandit protocol with a budget of online episodes
(selection.bandit_picks).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import yaml

from .atomic_fs import refuse_links, write_atomic
from .results import collect
from .selection import Setting, bandit_picks, offline_picks, ranking
from .statistics import bootstrap_ci
from .study import SELECT_CRITERIA, SELECTION_METRICS, StudyError
from .summary import winner_comparison


def export_best(folder: str | Path, select: str | None = None, episodes: int | None = None) -> list[Path]:
    """The best knob setting per (algorithm, dataset) as a standalone YAML for `launch.py train --config`, in
    `<folder>/best/`, picked by `select` (None: the study's `select:`, by default "online"):
    - "online": the mean over seeds of the study's metric (its last or best evaluation, as the study says;
      diverged seeds at the failure level; fewer diverged seeds break a tie), chosen with the test
      environment. The header states the winner's 95% CI, its diverged seeds, P(winner beats the
      runner-up) and every setting it cannot be told apart from.
    - "fqe", "critic", "td_error": the mean over seeds of the members' final `SELECTION_METRICS` value,
      from the data alone (see `selection`). The header states the criterion's value, and the setting's
      test-environment score and regret against the online pick for reference. A panel whose members
      reported no value of the criterion is skipped, named on stderr; a StudyError if that is every one.
    - "bandit" (with `episodes` K): the setting of the trained policy a UCB bandit over every seed-level policy
      (Unifloral's protocol, selection.bandit) deploys most often after K online episodes, over 1000 replays of the
      members' recorded final episodes. The header states the episodes spent, how often that setting's policy was
      deployed and the deployed policy's expected true score; the config re-trains the setting with all its seeds,
      which scores the setting's mean, not the deployed seed's."""
    folder = Path(folder).expanduser().resolve()
    study, runs = collect(folder)
    select = study.select if select is None else select
    if select not in (*SELECT_CRITERIA, "bandit"):
        raise StudyError(f"select: {select!r} must be one of {', '.join(SELECT_CRITERIA)} or bandit")
    if (select == "bandit") != (episodes is not None):
        raise StudyError("select bandit needs the online budget, --episodes K (K >= 1), and only it takes one")
    if select == "bandit" and (isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1):
        raise StudyError(f"--episodes {episodes!r} must be a whole number of online episodes >= 1")
    ranked = ranking(study, runs)
    if select == "bandit":
        spent = bandit_picks(study, runs, episodes)
        picks = {panel: (pick["setting"], pick) for panel, pick in spent.items() if panel in ranked}
    else:
        picks = {panel: (winner, score) for panel, (score, winner, _) in ranked.items()} if select == "online" else \
            offline_picks(study, runs, select)
    needs = "recorded final episode returns (train.final_eval_episodes)" if select == "bandit" else \
        SELECTION_METRICS.get(select, ("",))[0]
    for _, algorithm, dataset in sorted(set(ranked) - set(picks)):
        print(f"warning: {algorithm} on {dataset} not exported: no member reported {needs} "
              f"(select: {select}); export it with select online", file=sys.stderr)
    if not picks:
        raise StudyError(f"select: {select} needs {needs}" + (" of a return metric to maximize" if select == "bandit"
                                                              else "") + f", which no member of study {study.name} "
                         f"reported; use select online, or a criterion the algorithms report")
    diverged = {panel for panel, (winner, _) in picks.items() if all(m.diverged for m in winner.members)}
    for _, algorithm, dataset in sorted(diverged):
        print(f"warning: {algorithm} on {dataset} not exported: every seed of every setting diverged",
              file=sys.stderr)
    picks = {panel: pick for panel, pick in picks.items() if panel not in diverged}
    if not picks:
        raise StudyError(f"every seed of every setting of study {study.name} diverged: no config to export; lower the "
                         f"learning rates or strengthen the constraint (the report's diverged_seeds say where)")
    out = folder / "best"
    refuse_links(out, folder, StudyError)          # a planted best/ link must not redirect the writes
    out.mkdir(exist_ok=True)
    written = []
    for (study_name, algorithm, dataset), (winner, estimate) in picks.items():
        score, oracle, others = ranked[(study_name, algorithm, dataset)]
        members = winner.members
        config = {k: v for k, v in members[0].trial_config.items() if k != "members"}
        config["algo"] = {**config.get("algo", {}), **{k: v for k, v in winner.knobs.items()
                                                        if not k.startswith("train.")}}
        for key, value in winner.knobs.items():
            if key.startswith("train."):
                config[key[6:]] = value
        config["members"] = [{"seed": m.seed} for m in members]
        if select == "online":
            header = [f"Best {algorithm} on {dataset} in study {study.name}, chosen with the test environment "
                      f"(online oracle): {winner.label()}", *winner_comparison(study, winner, score, others)]
        elif select == "bandit":
            header = _bandit_header(study, episodes, (algorithm, dataset), estimate, (score, oracle))
        else:
            header = _offline_header(study, select, (algorithm, dataset), winner, estimate, (score, oracle))
        path = out / f"{safe_file_name(f'{algorithm}-{dataset}')}.yaml"
        header.append(f"Re-run: python launch.py train --config {path}")
        write_atomic(path, "".join(f"# {' '.join(line.split())}\n" for line in header)
                     + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def safe_file_name(text: str, limit: int = 120) -> str:
    """`text` (an algorithm and a dataset id read from a folder) as one plain file name: path separators become
    '_', anything but letters, digits, '_', '-', '.' and '=' becomes '_', leading dots go (never '..' or hidden),
    at most `limit` characters (a file name's limit is 255 bytes)."""
    name = re.sub(r"[^A-Za-z0-9_.=-]", "_", text.strip("/").replace("/", "_")).lstrip(".")
    return name[:limit] or "_"


def _offline_header(study, select: str, panel: tuple[str, str], pick: Setting, value: float,
                    online: tuple[float, Setting]) -> list[str]:
    """The export header's lines for a setting picked offline by `select`, its test-environment score beside."""
    key, mode = SELECTION_METRICS[select]
    failure = [m.seed for m in pick.members if m.diverged]
    scores = pick.scores(study.optimize)
    low, high = bootstrap_ci(list(scores.values()))
    oracle_score, oracle = online
    picked = float(np.mean(list(scores.values())))
    return [f"Best {panel[0]} on {panel[1]} in study {study.name}, chosen offline (from the dataset alone) by "
            f"{select}: {pick.label()}",
            f"{select}: mean final {key} = {value:.4g} over seeds {sorted(m.seed for m in pick.members)} "
            f"({'higher' if mode == 'max' else 'lower'} is better; diverged seeds {failure or 'none'} at the "
            f"criterion's failure level)",
            f"for reference, measured in the test environment (not used to choose): mean {study.optimize} "
            f"{study.metric} = {picked:.4g}, 95% bootstrap CI [{low:.4g}, {high:.4g}]; the online oracle picks "
            f"{oracle.label()} at {oracle_score:.4g}, regret "
            f"{(1 if study.mode == 'max' else -1) * (oracle_score - picked):.4g}"]


def _bandit_header(study, episodes: int, panel: tuple[str, str], pick: dict, online: tuple[float, Setting]) -> list[str]:
    """The export header's lines for a setting picked by the bandit with `episodes` online episodes."""
    setting, (low, high) = pick["setting"], pick["ci"]
    scores = setting.scores(study.optimize)
    picked = float(np.mean(list(scores.values())))
    oracle_score, oracle = online
    return [f"Best {panel[0]} on {panel[1]} in study {study.name}, chosen by a UCB bandit (Jackson et al. 2025, "
            f"Unifloral's protocol) spending {episodes} online episodes in the test environment: {setting.label()}",
            f"spent: {episodes} episodes over {pick['arms']} trained policies (every seed of every setting, a diverged "
            f"one at the failure level" + (f"; {pick['left_out']} without recorded episodes left out" if
                                           pick["left_out"] else "") + "), replayed 1000 times from their recorded "
            f"final episodes: a policy of this setting was deployed in {100 * pick['share']:.3g}% of them (seed "
            f"{pick['seed']} most often); the deployed policy's expected true final {study.metric.removesuffix('_best')}"
            f" = {pick['expected']:.4g}, 95% bootstrap CI [{low:.4g}, {high:.4g}]",
            f"this config re-trains the setting with all its seeds: expect its mean {study.optimize} {study.metric} = "
            f"{picked:.4g} over seeds {sorted(scores)}, not the deployed seed's score; the online oracle (every setting "
            f"fully evaluated) picks {oracle.label()} at {oracle_score:.4g}, regret "
            f"{(1 if study.mode == 'max' else -1) * (oracle_score - picked):.4g}"]
