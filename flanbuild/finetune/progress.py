"""Progress lines with rate and ETA on stderr (no dependencies).

On a terminal one line is redrawn in place; otherwise (logs, CI, pipes) a new line is printed per
update, at most one every ``interval`` seconds (plus the final one), so a log stays short.
"""

from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """``done/total unit``, rate, elapsed and ETA for one phase of work."""

    def __init__(self, label: str, total: int, unit: str = "", *, stream=None, enabled: bool = True,
                 interval: float | None = None, clock=time.monotonic, initial: int = 0):
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.clock = clock
        self.start = clock()
        self.done = self.initial = max(0, int(initial))  # work done before this process (a resumed run)
        self._last = None
        self.lines: list[str] = []

    def line(self, extra: str = "") -> str:
        elapsed = self.clock() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        pct = f" {100 * self.done / self.total:3.0f}%" if self.total else ""
        eta = format_seconds((self.total - self.done) / rate) if rate > 0 and self.total else "?"
        unit = f" {self.unit}" if self.unit else ""
        text = (f"{self.label}: {self.done}/{self.total}{unit}{pct}  {rate:.2f}{unit}/s  "
                f"elapsed {format_seconds(elapsed)}  ETA {eta}")
        return text + (f"  {extra}" if extra else "")

    def update(self, n: int = 1, extra: str = "", force: bool = False) -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = self.clock()
        final = self.total and self.done >= self.total
        if not (force or final or self._last is None or now - self._last >= self.interval):
            return
        self._last = now
        self._emit(self.line(extra), final)

    def set(self, done: int, extra: str = "", force: bool = False) -> None:
        self.update(done - self.done, extra, force)

    def _emit(self, text: str, final) -> None:
        self.lines.append(text)
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\x1b[2K" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and not (self.total and self.done >= self.total):
            self.stream.write("\n")
            self.stream.flush()
