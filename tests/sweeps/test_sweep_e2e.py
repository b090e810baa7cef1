"""A tiny study end to end on the embedded Ray: results for every member, report, export, re-run, W&B."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from offline_sweeps.sweeps.export import export_best
from offline_sweeps.sweeps.folder import experiment_dir
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.results import collect
from offline_sweeps.sweeps.run import run_study
from offline_sweeps.sweeps.train import train_from_file
from offline_sweeps.sweeps.wandb_logging import log_report

pytestmark = pytest.mark.slow


def wandb_record_holds(run_dir: Path, needles: list[bytes], timeout: float = 30.0) -> bool:
    """W&B's writer process flushes an offline run's records a little after Tune returns: poll for them."""
    deadline = time.monotonic() + timeout
    while True:
        record = b"".join(path.read_bytes() for path in run_dir.glob("*.wandb"))
        if all(needle in record for needle in needles):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@pytest.mark.parametrize("pack", [["seed"], []], ids=["packed", "unpacked"])
def test_tiny_study_end_to_end(pendulum_datasets, tmp_path, monkeypatch, local_ray, tiny_study, pack, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)          # quiet by itself, not by the environment
    monkeypatch.chdir(tmp_path)
    _, study = tiny_study(f"tiny-{'packed' if pack else 'unpacked'}", pendulum_datasets["medium"],
                          tmp_path / "results", pack, wandb={"enabled": True, "project": "test"})
    lines = []
    results = run_study(study, log=lines.append)
    assert results.num_errors == 0
    assert len(results) == (2 if pack else 4)
    folder = experiment_dir(study)

    # The console: the plan, then one line per result with the sweep's time left; Ray's and W&B's own output
    # went to files, and nothing blocked Tune's loop long enough for its "performance bottleneck" warning.
    console = capfd.readouterr()
    assert lines[0].startswith(f"Study {study.name}: {len(results)} trial(s), 4 member run(s)")
    progress = [line for line in lines if " iter " in line]
    assert len(progress) == 2 * len(results) and len(lines) < 20
    assert "left)" in progress[0] and progress[-1].endswith(f"({len(results)}/{len(results)} trials done)")
    assert "wandb" not in console.out + console.err and "WARNING" not in console.out + console.err
    ray_log = (Path(folder) / "logs" / "ray.log").read_text()
    assert "performance bottleneck" not in ray_log

    _, runs = collect(folder)
    assert sorted((r.knobs["expectile"], r.seed) for r in runs) == [(0.6, 0), (0.6, 1), (0.9, 0), (0.9, 1)]
    assert all(r.iterations == 2 and r.last == r.last for r in runs)      # two evaluations, finite metric
    # The last evaluation's 100 episodes reached result.json and read back, their mean the member's last score.
    assert all(len(r.episodes) == 100 and r.episodes.mean() == pytest.approx(r.last) for r in runs)

    paths = write_report(folder)
    table = paths["markdown"].read_text()
    assert "| iql |" in table and "0.6" in table and "0.9" in table and "last: mean [95% CI]" in table
    assert paths["plot"].stat().st_size > 10_000
    assert len(paths["csv"].read_text().splitlines()) == 3                  # header + one row per expectile
    report_run = log_report(study, paths)                                  # the report in W&B too
    assert wandb_record_holds(report_run, [b"sensitivity/table", b"sensitivity/plot"]), report_run

    exported = export_best(folder)
    assert len(exported) == 1
    config = yaml.safe_load(exported[0].read_text())
    assert config["members"] == [{"seed": 0}, {"seed": 1}] and config["algo"]["expectile"] in (0.6, 0.9)
    best = max((r for r in runs if r.knobs["expectile"] == config["algo"]["expectile"]), key=lambda r: r.seed)
    rerun = train_from_file(exported[0], tmp_path / "rerun", log=lambda _: None)
    for k, seed in enumerate((0, 1)):
        member = next(r for r in runs if r.knobs["expectile"] == config["algo"]["expectile"] and r.seed == seed)
        assert rerun[f"member_{k}/eval/normalized_return"] == pytest.approx(member.last, abs=1e-3)
    assert best.trial_config["total_updates"] == rerun["updates"] == 40

    # Chosen offline: every member reported FQE at its last evaluation; the FQE pick re-runs to its numbers too.
    assert "## Offline model selection" in table and "fqe (`ope/fqe_value`)" in table
    assert "## Expected online performance" in table and "| random |" in table
    assert "## Choosing with a counted online budget (bandit)" in table and "| fqe top 4, then ucb |" in table
    assert "chosen by a UCB bandit" in export_best(folder, select="bandit", episodes=10)[0].read_text()
    by_fqe = export_best(folder, select="fqe")
    assert "chosen offline (from the dataset alone) by fqe" in by_fqe[0].read_text()
    picked = yaml.safe_load(by_fqe[0].read_text())["algo"]["expectile"]
    rerun = train_from_file(by_fqe[0], tmp_path / "rerun-fqe", log=lambda _: None)
    for k, seed in enumerate((0, 1)):
        member = next(r for r in runs if r.knobs["expectile"] == picked and r.seed == seed)
        assert math.isfinite(member.ope["ope/fqe_value"])
        assert rerun[f"member_{k}/eval/normalized_return"] == pytest.approx(member.last, abs=1e-3)
        assert rerun[f"member_{k}/ope/fqe_value"] == pytest.approx(member.ope["ope/fqe_value"], rel=1e-4)

    runs_dirs = sorted(Path(folder).glob("*_iql*/wandb/offline-run-*"))
    assert len(runs_dirs) == 4                                              # one W&B run per member
    for run_dir in runs_dirs:
        assert wandb_record_holds(run_dir, [b"eval/normalized_return", b"expectile", b"seed"]), run_dir
    names = [f"iql expectile={tau} seed={seed}".encode() for tau in (0.6, 0.9) for seed in (0, 1)]
    assert all(any(wandb_record_holds(run_dir, [name], timeout=0) for run_dir in runs_dirs) for name in names)
    assert json.loads((tmp_path / "rerun" / "result.json").read_text().splitlines()[-1])["done"] is True
