"""A study's `reference:` block: published scores to show beside the measured ones.

Each entry names the algorithm and the study's dataset it sits beside, the published value (on the study metric's
scale, e.g. D4RL's normalized score), where it comes from, and optionally the published dataset, the knob value
it was published at and the training budget behind it:

    reference:
      - {algorithm: iql, dataset: hopper/medium-v0, value: 66.3, knob: {expectile: 0.7}, budget: 1000000,
         published_dataset: hopper-medium-v2, source: "Kostrikov et al. 2022 (IQL), Table 1"}

The report adds `published_*` columns to every setting an entry matches (same algorithm and dataset, and the
knob's value where one is given) and marks the budget where it differs from the study's; the sensitivity plot
draws each entry with a knob as a marker at that knob value. No peer overlays the papers' points on a user's own
sensitivity curve; here the reader sees at once whether the curve passes near them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .study import StudyError

ENTRY_KEYS = {"algorithm", "dataset", "value", "source", "knob", "budget", "published_dataset"}


@dataclasses.dataclass(frozen=True)
class Reference:
    algorithm: str
    dataset: str                  # the study's dataset id it sits beside
    value: float                  # on the study metric's scale
    source: str                   # paper and table, or repository and commit
    knob: tuple[str, float] | None = None        # (field, value) it was published at
    budget: int | None = None                    # gradient updates behind the published value
    published_dataset: str | None = None         # e.g. hopper-medium-v2

    def matches(self, row: dict) -> bool:
        """Whether a report row (a setting) is the one this entry was published for."""
        if row.get("algorithm") != self.algorithm or row.get("dataset") != self.dataset:
            return False
        if self.knob is None:
            return True
        value = row.get(self.knob[0])
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isclose(value, self.knob[1])


def parse_references(values: Any) -> tuple[Reference, ...]:
    """Validate a study's `reference:` list. An entry's algorithm must be a registry algorithm and its knob a field
    of that algorithm's config; its dataset may lie outside the study (`datasets=[hopper/medium-v0]` on the command
    line runs one env of a study whose entries cover three): the report lists the entries nothing was measured for."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise StudyError("reference: give a list of {algorithm, dataset, value, source, ...} entries")
    from ..algorithms import ALGORITHMS
    entries = []
    for index, entry in enumerate(values):
        where = f"reference[{index}]"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: must be a mapping with algorithm, dataset, value and source")
        unknown = sorted(str(k) for k in set(entry) - ENTRY_KEYS)
        if unknown:
            raise StudyError(f"{where}.{unknown[0]}: unknown key; allowed here: {', '.join(sorted(ENTRY_KEYS))}")
        missing = [k for k in ("algorithm", "dataset", "value", "source") if k not in entry]
        if missing:
            raise StudyError(f"{where}: {missing[0]} is missing (each entry needs algorithm, dataset, value, source)")
        algorithm, dataset = entry["algorithm"], entry["dataset"]
        if algorithm not in ALGORITHMS:
            raise StudyError(f"{where}.algorithm: {algorithm!r} is not one of {', '.join(sorted(ALGORITHMS))}")
        if not isinstance(dataset, str) or not dataset:
            raise StudyError(f"{where}.dataset: {dataset!r} must be the id of the study's dataset it sits beside")
        value = entry["value"]
        if not _number(value):
            raise StudyError(f"{where}.value: {value!r} must be a finite number (on the study metric's scale)")
        source = entry["source"]
        if not isinstance(source, str) or not source.strip():
            raise StudyError(f"{where}.source: name the paper and table (or repository and commit) the value is from")
        knob = entry.get("knob")
        if knob is not None:
            fields = {f.name for f in dataclasses.fields(ALGORITHMS[algorithm].Config)} - {"seed"}
            if not (isinstance(knob, dict) and len(knob) == 1):
                raise StudyError(f"{where}.knob: give one {{field: value}}, e.g. {{expectile: 0.7}}")
            (name, knob_value), = knob.items()
            if name not in fields:
                raise StudyError(f"{where}.knob: {name!r} is not a field of {ALGORITHMS[algorithm].Config.__name__}")
            if not _number(knob_value):
                raise StudyError(f"{where}.knob.{name}: {knob_value!r} must be a finite number")
            knob = (name, float(knob_value))
        budget = entry.get("budget")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise StudyError(f"{where}.budget: {budget!r} must be a positive integer (gradient updates)")
        published = entry.get("published_dataset")
        if published is not None and not isinstance(published, str):
            raise StudyError(f"{where}.published_dataset: {published!r} must be text, e.g. hopper-medium-v2")
        entries.append(Reference(algorithm, dataset, float(value), source.strip(), knob, budget, published))
    return tuple(entries)


def published_columns(references, row: dict, total_updates: int | None) -> dict:
    """The `published_*` columns of a report row: the first matching entry's value, dataset, budget (and whether
    it differs from `total_updates`, the study's) and source; empty where none matches."""
    for entry in references:
        if entry.matches(row):
            return {"published_value": entry.value, "published_dataset": entry.published_dataset or "",
                    "published_budget": entry.budget if entry.budget is not None else "",
                    "published_different_budget": bool(entry.budget is not None and total_updates is not None
                                                       and entry.budget != total_updates),
                    "published_source": entry.source}
    return {}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
