"""The exceptions a user can cause, and how they are shown.

Every mistake a user can make (a bad card, a template typo, a missing data directory) is raised as a
``FlanbuildError`` whose message is one line saying *what* is wrong and *where* (file:line, task,
template id, field). Like click's exceptions, each carries the exit code the CLI ends with; the CLI
(``flanbuild.cli.main``) prints the line and exits with it. Anything else is a bug in flanbuild and
keeps its traceback.
"""

from __future__ import annotations


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
