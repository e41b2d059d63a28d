"""Instruction templates: loading ``templates/<task>.yaml`` and compiling them in a Jinja sandbox.

Templates are untrusted data (shared prompt collections, community catalogs), so they are compiled by
Jinja's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``: no access to Python internals, no
mutation of the row, and a misspelt field is an error instead of an empty string. Each template is
compiled once per process and reused for every row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.sandbox

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.yamlio import LineDict, load_yaml, where
from flanbuild.sandbox.environment import check_limits, environment, variables

#: Names the renderer supplies to every template, besides the task's fields.
OPTIONS_BLOCK = "options_block"
CONTEXT_NAMES = frozenset({"answer", "options", OPTIONS_BLOCK})
_TEMPLATE_KEYS = {"id", "input", "target", "inverted"}


@dataclass(frozen=True)
class Template:
    """One instruction variant of a task: an input and a target Jinja string, plus metadata."""

    id: int
    input: str
    target: str
    inverted: bool = False
    origin: str = ""  # "file:line" of the template, for error messages

    @functools.cached_property
    def shows_options(self) -> bool:
        """A template shows the options exactly when it places ``{{options_block}}``."""
        return OPTIONS_BLOCK in self.names()

    def names(self) -> set[str]:
        """Every variable the template reads (task fields and renderer-supplied names, not Jinja globals)."""
        return set(variables(self.input) | variables(self.target)) - set(environment().globals)

    def compiled(self):
        """(input, target) renderers with Jinja's ``render``/``generate`` interface."""
        return _compile(self.input, self.target)


@functools.lru_cache(maxsize=4096)
def _compile(input_src: str, target_src: str):
    """Compiled once per process: the fast path where a template only substitutes (same output), else Jinja."""
    from flanbuild.sandbox import fastpath

    return fastpath.FastTemplate(input_src, extended=True), fastpath.FastTemplate(target_src, extended=True)


def _syntax_check(source: str, origin: str, part: str, task: str, template_id: int) -> None:
    try:
        check_limits(source)
    except jinja2.exceptions.SecurityError as e:
        raise FlanbuildError(f"task {task}, template {template_id} ({part}): {e}", where=origin) from None
    except jinja2.TemplateSyntaxError as e:
        raise FlanbuildError(
            f"task {task}, template {template_id} ({part}), line {e.lineno} of the template: "
            f"Jinja syntax error: {e.message}",
            where=origin,
        ) from None


def parse_templates(entries: object, task: str, path: Path | str, doc: object = None) -> list[Template]:
    """Validate the ``templates:`` list of a templates file; return Template objects in file order."""
    if not isinstance(entries, list) or not entries:
        raise FlanbuildError(f"task {task}: 'templates' must be a non-empty list", where=where(path, doc, "templates"))
    seen: set[int] = set()
    out = []
    for entry in entries:
        loc = where(path, entry)
        if not isinstance(entry, dict):
            raise FlanbuildError(f"task {task}: each template must be a mapping", where=loc)
        unknown = set(entry) - _TEMPLATE_KEYS
        if unknown:
            raise FlanbuildError(
                f"task {task}: unknown template key(s) {sorted(map(str, unknown))} (allowed: {sorted(_TEMPLATE_KEYS)})",
                where=where(path, entry, sorted(map(str, unknown))[0]),
            )
        tid = entry.get("id")
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise FlanbuildError(f"task {task}: template 'id' must be a non-negative integer, got {tid!r}", where=loc)
        if tid in seen:
            raise FlanbuildError(f"task {task}: duplicate template id {tid}", where=where(path, entry, "id"))
        seen.add(tid)
        for part in ("input", "target"):
            value = entry.get(part)
            if not isinstance(value, str) or not value.strip():
                raise FlanbuildError(
                    f"task {task}: template {tid} needs a non-empty '{part}' string", where=where(path, entry, part)
                )
            _syntax_check(value, where(path, entry, part), part, task, tid)
        inverted = entry.get("inverted", False)
        if not isinstance(inverted, bool):
            raise FlanbuildError(f"task {task}: template {tid}: 'inverted' must be true or false", where=loc)
        out.append(Template(tid, entry["input"], entry["target"], inverted, loc))
    return out


def load_templates_file(path: Path, root: Path | None = None, *, with_override: bool = False):
    """Read ``templates/<task>.yaml``; return (task name, templates), plus its ``override`` flag if asked.

    ``override: true`` lets the file replace the templates of a task defined by an earlier catalog.
    """
    doc = load_yaml(path, root)
    if not isinstance(doc, LineDict):
        raise FlanbuildError("a templates file must be a mapping with 'task' and 'templates'", where=str(path))
    unknown = set(doc) - {"task", "templates", "override"}
    if unknown:
        raise FlanbuildError(
            f"unknown key(s) {sorted(map(str, unknown))} (allowed: task, templates, override)",
            where=where(path, doc, sorted(map(str, unknown))[0]),
        )
    override = doc.get("override", False)
    if not isinstance(override, bool):
        raise FlanbuildError("'override' must be true or false", where=where(path, doc, "override"))
    task = doc.get("task")
    if task != path.stem:
        raise FlanbuildError(
            f"'task: {task}' must equal the file name ({path.stem})", where=where(path, doc, "task")
        )
    templates = parse_templates(doc.get("templates"), task, path, doc)
    return (task, templates, override) if with_override else (task, templates)
