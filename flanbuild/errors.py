"""The exceptions a user can cause, and how they are shown.

Every mistake a user can make (a bad card, a template typo, a missing data directory) is raised as a
``FlanbuildError`` whose message is one line saying *what* is wrong and *where* (file:line, task,
template id, field). Like click's exceptions, each carries the exit code the CLI ends with; the CLI
(``flanbuild.cli.main``) prints the line and exits with it. Anything else is a bug in flanbuild and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class FlanbuildError(Exception):
    """A user-facing error: one line, what and where."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        text = f"{where}: {message}" if where else message
        if not text.isprintable():  # a file name with a newline must not make the message two lines
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        super().__init__(text)


class DataNotFound(FlanbuildError):
    """A task's data is not available here. The builder skips the task with this reason (an error
    only with ``--strict``)."""


def one_line(text: str) -> str:
    """``text`` on one line: newlines and other control characters (e.g. in a file name) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""`` when nothing is close."""
    match = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(kind: str, name: str, known: Iterable[str], where: str = "") -> FlanbuildError:
    """The one-line error for a name that is not in the catalog."""
    known = list(known)
    hint = did_you_mean(name, known) or (" (see 'flanbuild tasks')" if "task" in kind else
                                         f" (known: {', '.join(sorted(known))})")
    return FlanbuildError(f"unknown {kind} {name!r}{where}{hint}")
