"""Progress with an ETA for the long jobs (a dataset build's SAC training and collection, dynamics training).

On a terminal, a live tqdm bar on stderr. Anywhere else (a log file, CI, a Ray trial, whose stderr Ray writes
to a file and streams to the driver) a live bar is a wall of carriage returns, so plain lines instead: one at
each tenth of the total once `QUIET_SECONDS` have passed since the last, one whenever a while has gone by
without any (`EVERY_SECONDS`, or a tenth of the elapsed time once that is longer, so an hours-long job
prints tens of lines, not hundreds), and a last one with the total time. A job that may stop early (SAC at
its target return, dynamics training at its early stop) says its ETA is an upper bound: "at most".
TQDM_DISABLE=1 silences both.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

EVERY_SECONDS = 30.0       # the longest a line-mode job stays silent while it is young
QUIET_SECONDS = 5.0        # a tenth of the total prints a line only this long after the previous one


def _eta_text(remaining: float | None, upper_bound: bool) -> str:
    if remaining is None:
        return "ETA ?"
    return f"{'at most ' if upper_bound else ''}{tqdm.format_interval(remaining)} left"


class Progress:
    """`update(n, **postfix)` as work is done; `write(message, log)` to log a line without tearing the bar;
    `close(note)` (or leave the `with` block) to end. `total=None` counts without an end (a wait)."""

    def __init__(self, desc: str, total: int | None, unit: str = "it", upper_bound: bool = False,
                 file: TextIO | None = None, live: bool | None = None):
        self.desc, self.total, self.unit, self.upper_bound = desc, total, unit, upper_bound
        self.file = file if file is not None else sys.stderr
        self.enabled = os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")
        if live is None:
            live = bool(getattr(self.file, "isatty", lambda: False)())
        self.n, self.postfix = 0, ""
        self.started = self.last_line = time.perf_counter()
        self.history = [(self.started, 0)]       # (time, n) at each line: the ETA's recent rate
        self.next_tenth = 1
        self.closed = False
        self.bar = None
        if self.enabled and live:
            remaining = "{remaining}" + (" at most" if upper_bound else "")
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True, leave=True,
                            bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<"
                                        + remaining + ", {rate_fmt}{postfix}]") if total
                            else "{desc}: {elapsed} elapsed{postfix}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close("interrupted" if kind is not None else "")

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k}={v}" for k, v in postfix.items())
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled and self._line_due():
            self._line()

    def tick(self) -> None:
        """Show the elapsed time even though no work was counted (a wait)."""
        self.update(0)
        if self.bar is not None:
            self.bar.refresh()

    def write(self, message: str, log: Callable[[str], None] = print) -> None:
        if self.bar is None:
            log(message)
            return
        with tqdm.external_write_mode(file=self.file):
            log(message)

    def close(self, note: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(", ".join(p for p in (self.postfix, note) if p), refresh=False)
            self.bar.close()
        elif self.enabled:
            elapsed = tqdm.format_interval(time.perf_counter() - self.started)
            done = f"{self.n}/{self.total} {self.unit} in {elapsed}" if self.total else f"{elapsed} elapsed"
            extras = ", ".join(p for p in (self.postfix, note) if p)
            print(f"{self.desc}: {done}" + (f" ({extras})" if extras else ""), file=self.file, flush=True)

    def remaining(self) -> float | None:
        """Seconds left at the recent rate, over the last EVERY_SECONDS or quarter of the elapsed time, whichever
        is longer: long enough to smooth out a busy machine, short enough to forget a warm-up that ran at
        another speed (SAC's random steps, an ensemble's first epochs). None before any rate is known."""
        if not self.total:
            return None
        now = time.perf_counter()
        horizon = now - max(EVERY_SECONDS, 0.25 * (now - self.started))
        since, done = next(((t, n) for t, n in reversed(self.history) if t <= horizon), self.history[0])
        if now <= since or self.n <= done:
            return None
        return max(self.total - self.n, 0) * (now - since) / (self.n - done)

    def _line_due(self) -> bool:
        now = time.perf_counter()
        since = now - self.last_line
        tenth = bool(self.total) and self.n * 10 >= self.next_tenth * self.total
        return (tenth and since >= QUIET_SECONDS) or since >= max(EVERY_SECONDS, 0.1 * (now - self.started))

    def _line(self) -> None:
        now = time.perf_counter()
        elapsed = tqdm.format_interval(now - self.started)
        if self.total:
            text = (f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), "
                    f"{elapsed} elapsed, {_eta_text(self.remaining(), self.upper_bound)}")
            self.next_tenth = int(self.n * 10 // self.total) + 1
        else:
            text = f"{self.desc}: {elapsed} elapsed"
        print(text + (f", {self.postfix}" if self.postfix else ""), file=self.file, flush=True)
        self.last_line = now
        self.history.append((now, self.n))
