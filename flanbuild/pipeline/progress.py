"""Progress of a build: a live display on a terminal, plain log lines otherwise.

The build calls, in order::

    progress.skip(name, reason)                     # a task without data (while loading)
    progress.start(total_jobs, total_rows=None)   # before rendering (plain mode lists the skips here)
    progress.advance(name, rows)                    # optional: a shard of a task is done (moves the bar)
    progress.task_done(name, role, rows, seconds)   # after each rendered task (seconds=None: since start)
    progress.stage(name, total=None)                # a later stage begins: decontaminate, write, card
    progress.stage_advance(n)                       # optional: n units of the stage's total are done
    progress.finish(summary)                        # one line at the end

and may call ``progress(msg)`` for any other message (a ``Progress`` is also a ``Log``).

Modes: ``rich`` (a live bar with the current task, rows/s and ETA; skip reasons collected and listed
once at the end unless verbose), ``plain`` (one line per task with rows/s and ETA; what a log file or
CI sees), ``quiet`` (nothing but warnings). ``auto`` picks rich on a TTY, plain otherwise. ``verbose``
prints each skip reason in full; otherwise skips are grouped by reason in one line each, so a log does
not open with a screenful of near-identical skip lines. Every stage after rendering (decontamination,
writing, the card) gets a line with its time, and writing reports rows with an ETA.
rich is imported only when the rich mode starts.
"""

from __future__ import annotations

import re
import sys
import time
from typing import IO

MODES = ("auto", "rich", "plain", "quiet")
SHORT_REASON = 140


def _short(reason: str, limit: int = SHORT_REASON) -> str:
    """One line, cut at a word boundary."""
    text = " ".join(reason.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",;:") + "…"


def group_skips(skipped: dict[str, str], shown: int = 8) -> list[str]:
    """One line per distinct reason (most common first): how many tasks, a few names, the reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(skipped.items()):
        # "org/name/config/split not in the local mirror ...": group on what follows the task's own id
        # and before any per-task instructions ("...; download X and put it in Y")
        by_reason.setdefault(_short(re.sub(r"^\S+/\S+ ", "", reason).split("; ")[0]), []).append(name)
    lines = []
    for reason, names in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        lines.append(f"skipped {len(names)} task(s) ({listed}): {reason}")
    if lines:
        lines.append("(each task's reason: mixture.json 'skipped', or --verbose)")
    return lines


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """Progress for a build; see the module docstring for the call sequence."""

    def __init__(self, mode: str = "auto", *, verbose: bool = False, stream: IO[str] | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, not {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", lambda: False)
            mode = "rich" if isatty() else "plain"
        self.mode = mode
        self.verbose = verbose
        self.total_jobs = 0
        self.total_rows: int | None = None
        self.done_jobs = 0
        self.done_rows = 0
        self.skipped: dict[str, str] = {}
        self._advanced: dict[str, int] = {}
        self._t0 = time.perf_counter()
        self._live = None
        self._bar = None
        self._console = None
        self._stage: tuple[str, float, int | None] | None = None  # (name, start time, total)
        self._stage_done = 0
        self._stage_reported = 0.0

    @classmethod
    def from_args(cls, args) -> "Progress":
        """From CLI flags: ``--quiet`` wins, then ``--verbose``; ``--progress plain|rich`` if present."""
        if getattr(args, "quiet", False):
            return cls("quiet")
        return cls(getattr(args, "progress", None) or "auto", verbose=getattr(args, "verbose", False))

    # -- output -----------------------------------------------------------------------------------

    def _line(self, msg: str, *, style: str = "") -> None:
        if self.mode == "quiet":
            return
        if self._console is not None:
            self._console.print(msg, style=style or None, markup=False, highlight=False, soft_wrap=True)
        else:
            print(msg, file=self.stream, flush=True)

    def __call__(self, msg: str) -> None:
        """Any other message (a warning is shown even when quiet)."""
        if self.mode == "quiet" and not msg.startswith("warning"):
            return
        if self.mode == "quiet":
            print(msg, file=self.stream, flush=True)
        else:
            self._line(msg, style="yellow" if msg.startswith("warning") else "")

    # -- the protocol -----------------------------------------------------------------------------

    def start(self, total_jobs: int, total_rows: int | None = None) -> None:
        if self.mode == "plain" and not self.verbose:
            for line in group_skips(self.skipped):
                self._line(line)
        self.total_jobs, self.total_rows = total_jobs, total_rows
        self.done_jobs = self.done_rows = 0
        self._advanced = {}
        self._t0 = time.perf_counter()
        if self.mode != "rich":
            return
        try:
            import rich  # noqa: F401
        except ImportError:  # rich is optional: plain lines then
            self.mode = "plain"
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._console = Console(file=self.stream, force_terminal=True) if self.stream is not sys.stderr \
            else Console(stderr=True)
        total = total_rows if total_rows else total_jobs
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
            console=self._console, transient=True,
        )
        self._bar.start()
        self._live = self._bar.add_task("rendering", total=total, rate="")

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        if self.verbose and self.mode in ("plain", "rich"):
            self._line(f"skip  {name}: {reason}", style="dim")

    def advance(self, name: str, rows: int) -> None:
        """Part of a task is done (e.g. one shard of it): moves the bar and the ETA, prints nothing."""
        self._advanced[name] = self._advanced.get(name, 0) + rows
        self.done_rows += rows
        self._update_bar(name, "")

    def task_done(self, name: str, role: str, rows: int, seconds: float | None = None, dropped: int = 0) -> None:
        """A task is rendered: ``rows`` in all (``advance`` calls included), ``seconds`` of work on it."""
        self.done_jobs += 1
        self.done_rows += rows - self._advanced.pop(name, 0)
        eta = self.eta()
        if self.mode == "plain":
            extra = f" ({dropped} dropped)" if dropped and self.verbose else ""
            eta_txt = f", ETA {_duration(eta)}" if eta is not None and self.done_jobs < self.total_jobs else ""
            if seconds is None:  # tasks rendered in parallel: report the overall rate
                elapsed = self._elapsed()
                overall = self.done_rows / elapsed if elapsed > 0 else 0.0
                timing = f"at {elapsed:.1f}s ({overall:,.0f} rows/s overall{eta_txt})"
            else:
                rate = rows / seconds if seconds > 0 else 0.0
                timing = f"in {seconds:.1f}s ({rate:,.0f} rows/s{eta_txt})"
            self._line(f"[{self.done_jobs}/{self.total_jobs}] {role:5s} {name}: {rows} rows {timing}{extra}")
        elif self.mode == "rich" and self._bar is not None:
            self._update_bar(name, role)
            if self.verbose:
                took = f" in {seconds:.1f}s" if seconds is not None else f" at {self._elapsed():.1f}s"
                self._line(f"[{self.done_jobs}/{self.total_jobs}] {role:5s} {name}: {rows} rows{took}"
                           + (f" ({dropped} dropped)" if dropped else ""), style="dim")

    def _update_bar(self, name: str, role: str) -> None:
        if self._bar is None:
            return
        overall = self.done_rows / self._elapsed() if self._elapsed() > 0 else 0.0
        self._bar.update(self._live, completed=self.done_rows if self.total_rows else self.done_jobs,
                         description=f"{role} {name}".strip(), rate=f"{overall:,.0f} rows/s")

    def stage(self, name: str, total: int | None = None, detail: str = "") -> None:
        """A stage after rendering begins (the previous one, if any, is reported done)."""
        self._end_stage()
        self._stage, self._stage_done, self._stage_reported = (name, time.perf_counter(), total), 0, 0.0
        if self._bar is not None:
            self._bar.update(self._live, description=name, completed=0, total=total or 1, rate="")
        else:
            self._line(f"{name}{': ' + detail if detail else ''} ...")

    def stage_advance(self, n: int) -> None:
        """``n`` more units of the stage's total are done; plain mode reports each quarter with an ETA."""
        if self._stage is None:
            return
        name, t0, total = self._stage
        self._stage_done += n
        if self._bar is not None:
            self._bar.update(self._live, completed=self._stage_done)
        elif total and self.mode == "plain" and self._stage_done / total >= self._stage_reported + 0.25 \
                and self._stage_done < total:
            self._stage_reported = int(self._stage_done / total * 4) / 4  # the quarter just passed
            elapsed = time.perf_counter() - t0
            eta = elapsed * (total - self._stage_done) / self._stage_done
            self._line(f"{name}: {self._stage_done:,}/{total:,} ({self._stage_done / total:.0%}), ETA {_duration(eta)}")

    def _end_stage(self) -> None:
        if self._stage is not None and self._bar is None:
            self._line(f"{self._stage[0]}: done in {time.perf_counter() - self._stage[1]:.1f}s")
        self._stage = None

    def finish(self, summary: str) -> None:
        self._end_stage()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.mode == "rich" and self.skipped and not self.verbose:
            for line in group_skips(self.skipped):
                self._line(line, style="dim")
        self._line(summary, style="bold green" if self.mode == "rich" else "")
        self._console = None

    # -- numbers ----------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def eta(self) -> float | None:
        """Seconds left: by rows when the total is known, else by jobs; None before the first task."""
        if self.done_jobs == 0:
            return None
        elapsed = self._elapsed()
        if self.total_rows:
            if self.done_rows == 0:
                return None
            return elapsed * max(self.total_rows - self.done_rows, 0) / self.done_rows
        return elapsed * max(self.total_jobs - self.done_jobs, 0) / self.done_jobs
