"""Issue 23 item 2: a study's `reference:` block (published scores, with their source, dataset, knob value and
budget) is validated, and the report and the sensitivity plot show it beside the measured scores."""
from __future__ import annotations

import csv
import math

import pytest

from offline_sweeps.sweeps.reference import Reference, published_columns
from offline_sweeps.sweeps.report import write_report
from offline_sweeps.sweeps.study import StudyError
from offline_sweeps.sweeps.study_yaml import parse_study

from .test_report import DATASET, curves_of, flat, iql_study

IQL_PAPER = "Kostrikov et al. 2022 (IQL), Table 1"


def study_with(reference) -> dict:
    return {"name": "refs", "algorithm": "iql", "datasets": [DATASET], "search": {"expectile": {"grid": [0.7, 0.9]}},
            "wandb": {"enabled": False}, "reference": reference}


def test_entries_are_read_with_their_knob_budget_and_source():
    study = parse_study(study_with([{"algorithm": "iql", "dataset": DATASET, "value": 66, "knob": {"expectile": 0.7},
                                     "budget": 1_000_000, "published_dataset": "hopper-medium-v2",
                                     "source": IQL_PAPER}]))
    assert study.reference == (Reference("iql", DATASET, 66.0, IQL_PAPER, ("expectile", 0.7), 1_000_000,
                                         "hopper-medium-v2"),)
    assert parse_study(study_with(None)).reference == ()


@pytest.mark.parametrize("entry, message", [
    ({"dataset": DATASET, "value": 1.0, "source": "x"}, r"reference\[0\]: algorithm is missing"),
    ({"algorithm": "dqn", "dataset": DATASET, "value": 1.0, "source": "x"}, r"algorithm: 'dqn' is not one of awac"),
    ({"algorithm": "iql", "dataset": "", "value": 1.0, "source": "x"}, r"reference\[0\].dataset: '' must be the id"),
    ({"algorithm": "iql", "dataset": DATASET, "value": math.nan, "source": "x"}, r"value: nan must be a finite number"),
    ({"algorithm": "iql", "dataset": DATASET, "value": "high", "source": "x"}, r"value: 'high' must be a finite"),
    ({"algorithm": "iql", "dataset": DATASET, "value": 1.0, "source": " "}, r"source: name the paper and table"),
    ({"algorithm": "iql", "dataset": DATASET, "value": 1.0, "source": "x", "knob": {"tau": 0.7}},
     r"knob: 'tau' is not a field of IQLConfig"),
    ({"algorithm": "iql", "dataset": DATASET, "value": 1.0, "source": "x", "knob": {"expectile": 0.7, "seed": 1}},
     r"knob: give one \{field: value\}"),
    ({"algorithm": "iql", "dataset": DATASET, "value": 1.0, "source": "x", "budget": 0}, r"budget: 0 must be a positive"),
    ({"algorithm": "iql", "dataset": DATASET, "value": 1.0, "source": "x", "paper": "IQL"},
     r"reference\[0\].paper: unknown key"),
])
def test_bad_entries_are_refused_naming_the_key(entry, message):
    with pytest.raises(StudyError, match=message):
        parse_study(study_with([entry]))
    with pytest.raises(StudyError, match="reference: give a list"):
        parse_study(study_with({"iql": 66.3}))


def test_an_entry_matches_its_algorithm_dataset_and_knob_value_and_flags_another_budget():
    entry = Reference("iql", DATASET, 66.3, IQL_PAPER, ("expectile", 0.7), 1_000_000)
    row = {"algorithm": "iql", "dataset": DATASET, "expectile": 0.7}
    assert published_columns([entry], row, 2000) == {
        "published_value": 66.3, "published_dataset": "", "published_budget": 1_000_000,
        "published_different_budget": True, "published_source": IQL_PAPER}
    assert published_columns([entry], row, 1_000_000)["published_different_budget"] is False
    assert published_columns([entry], {**row, "expectile": 0.9}, 2000) == {}
    assert published_columns([entry], {**row, "dataset": "other"}, 2000) == {}
    no_knob = Reference("iql", DATASET, 66.3, IQL_PAPER)
    assert published_columns([no_knob], {**row, "expectile": 0.9}, None)["published_budget"] == ""


def test_the_report_shows_published_scores_beside_the_measured_ones(tmp_path):
    reference = [{"algorithm": "iql", "dataset": DATASET, "value": 66.3, "knob": {"expectile": 0.7},
                  "budget": 1_000_000, "published_dataset": "hopper-medium-v2", "source": IQL_PAPER},
                 {"algorithm": "iql", "dataset": DATASET, "value": 50.0, "knob": {"expectile": 0.5},
                  "source": "a knob value this study did not run"},
                 {"algorithm": "iql", "dataset": "walker2d/medium-v0", "value": 78.3, "knob": {"expectile": 0.7},
                  "source": "a dataset this study did not run"}]
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)}), reference=reference)
    paths = write_report(folder)
    with open(paths["csv"], newline="") as handle:
        rows = {float(row["expectile"]): row for row in csv.DictReader(handle)}
    assert float(rows[0.7]["published_value"]) == 66.3 and rows[0.7]["published_different_budget"] == "True"
    assert rows[0.9]["published_value"] == ""
    assert float(rows[0.7]["updates_per_second"]) == 100.0 and float(rows[0.9]["updates_per_second"]) == 200.0
    markdown = paths["markdown"].read_text()
    section = markdown[markdown.index("## Beside the published scores"):]
    line = next(line for line in section.splitlines() if line.startswith("| iql |"))
    assert line == (f"| iql | {DATASET} | expectile=0.7 | 60 [60, 60] | 60 [60, 60] | 5 | 100 | 66.3 | hopper-medium-v2 | "
                    f"1,000,000 updates (different budget: this study 30) | {IQL_PAPER} |")
    assert "- no setting was measured for the entry iql on pendulum/medium-v0 at expectile=0.5" in section
    assert "walker2d/medium-v0 at" not in section                         # a study narrowed to some datasets:
    assert "- 1 entry for datasets this study did not run (walker2d/medium-v0) left out" in section    # one line
    assert "| updates/s |" in markdown
    assert paths["plot"].stat().st_size > 10_000
    assert paths["published_plot"].name == "published.png" and paths["published_plot"].stat().st_size > 10_000


def test_a_study_without_references_has_no_published_section(tmp_path):
    folder = iql_study(tmp_path, curves_of({0.7: flat(60.0), 0.9: flat(80.0)}))
    paths = write_report(folder)
    assert "Beside the published scores" not in paths["markdown"].read_text()
    assert "published_plot" not in paths and not (paths["markdown"].parent / "published.png").exists()


def test_the_published_figure_draws_the_measured_iqm_with_its_ci_and_a_hollow_star_for_another_budget():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from offline_sweeps.sweeps.plots import _published_panel
    study = parse_study(study_with([]))
    rows = [{"algorithm": "iql", "dataset": DATASET, "expectile": 0.7, "last_iqm": 60.0, "last_iqm_ci_low": 55.0,
             "last_iqm_ci_high": 62.0, "published_value": 66.3, "published_different_budget": True},
            {"algorithm": "bc", "dataset": DATASET, "last_iqm": 30.0, "last_iqm_ci_low": float("nan"),
             "last_iqm_ci_high": float("nan"), "published_value": 50.0, "published_different_budget": False}]
    fig, ax = plt.subplots()
    _published_panel(ax, study, rows)
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    # Top to bottom as the table: iql at y = 1, bc at y = 0.
    assert [(s.get_xdata()[0], s.get_ydata()[0], s.get_markerfacecolor()) for s in stars] == [
        (50.0, 0, "black"), (66.3, 1, "none")]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert sorted((d.get_xdata()[0], d.get_ydata()[0]) for d in dots) == [(30.0, 0), (60.0, 1)]
    bars = [c for c in ax.collections if len(c.get_segments())]
    assert [[tuple(point) for point in segment] for c in bars for segment in c.get_segments()] == [
        [(55.0, 1.0), (62.0, 1.0)]]                                # bc has no CI: no bar
    assert [t.get_text() for t in ax.get_yticklabels()] == ["bc", "iql expectile=0.7"]
    plt.close(fig)


def test_the_sensitivity_plot_draws_each_entry_at_its_knob_value():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from offline_sweeps.sweeps.plots import _published_markers
    study = parse_study(study_with([{"algorithm": "iql", "dataset": DATASET, "value": 66.3, "knob": {"expectile": 0.7},
                                     "source": IQL_PAPER}]))
    fig, ax = plt.subplots()
    _published_markers(ax, study, "iql", "expectile")
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([0.7], [66.3])]
    ax.clear()
    _published_markers(ax, study, "cql", "expectile")
    assert not ax.lines
    plt.close(fig)


def test_a_parts_train_block_merges_over_the_studys_so_a_budget_override_reaches_it():
    """Before, a part's `train:` replaced the top-level one: `train.total_updates=1000000` never reached a part
    that set its own algorithm settings (sweeps/reproduce_mujoco.yaml's GPU command depends on it)."""
    values = {"name": "merge", "datasets": [DATASET], "wandb": {"enabled": False},
              "train": {"total_updates": 1_000_000, "eval_every": 10_000, "algo": {"hidden": [64, 64]}},
              "parts": [{"algorithm": "iql", "train": {"algo": {"batch_size": 32}}},
                        {"algorithm": "bc", "train": {"total_updates": 500, "eval_every": 100}}]}
    iql, bc = parse_study(values).parts
    assert iql.train == {"total_updates": 1_000_000, "eval_every": 10_000, "algo": {"hidden": [64, 64], "batch_size": 32}}
    assert bc.train["total_updates"] == 500 and bc.train["algo"] == {"hidden": [64, 64]}

