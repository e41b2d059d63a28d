"""``flanbuild lint``: check every template of every task without downloading anything.

For each task it renders every template (with and without the options block) on rows synthesised
from the card's declared features (or the card's hand-written ``examples``), and, when a local
mirror has the data, on real rows too, after comparing the declared features with the real schema.
A template must render, give a non-empty input and target, leave no stray ``{``/``}`` from broken
Jinja, and produce different outputs for different rows (a template that ignores its input is a bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flanbuild.catalog import schema
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.examples import ExampleMapper
from flanbuild.catalog.registry import Registry
from flanbuild.pipeline.render import render_template
from flanbuild.sandbox.environment import variables
from flanbuild.sources.loader import DataNotFound, SplitData, load_split
from flanbuild.catalog.tasks import SPLIT_ROLES, Task

SYNTHETIC_ROWS = 4
REAL_ROWS = 8


@dataclass(frozen=True)
class Problem:
    task: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: task {self.task}: {self.message}" if self.where else f"task {self.task}: {self.message}"


def _mirror_splits(task: Task, data_dirs: list[Path]) -> list[SplitData]:
    """The task's splits that exist locally (files or mirror); the hub is never contacted."""
    out = []
    for role in SPLIT_ROLES:
        if role not in task.source.files and not data_dirs:
            continue
        try:
            out.append(load_split(task, role, data_dirs, allow_hub=False))
        except DataNotFound:
            pass
    return out


def _synthetic_rows(task: Task) -> list[dict]:
    """Rows synthesised from the declared features; a plain answer column cycles through the options."""
    rows = [schema.synthesise(task.features, i) for i in range(SYNTHETIC_ROWS)]
    column = task.answer.strip()
    if task.is_classification and isinstance(task.options, tuple) and column in (task.features or {}):
        for i, row in enumerate(rows):
            n = i % len(task.options)
            row[column] = task.options[n] if task.features[column] == "string" else n
    return rows


def _rows_of(split: SplitData, n: int) -> list[dict]:
    rows = split.rows(np.arange(min(n, split.num_rows)))
    return [r for _, chunk in rows for r in chunk]


def lint_task(task: Task, data_dirs: list[Path] | None = None) -> tuple[list[Problem], int]:
    """All problems found in one task; also returns how many renders were checked."""
    problems: list[Problem] = []
    row_sets = _row_sets(task, data_dirs or [], problems)
    if not row_sets:
        problems.append(Problem(task.name, task.origin, "cannot lint: the card declares no features or examples "
                                                        "and no local data was found"))
        return problems, 0
    checked = 0
    for label, features, rows, synthetic in row_sets:
        examples = _examples(task, label, features, rows, synthetic, problems)
        for template in task.templates if examples else ():
            checked += _lint_template(task, template, label, examples, synthetic, problems)
    return _dedupe(problems), checked


def _row_sets(task: Task, data_dirs: list[Path], problems: list[Problem]) -> list[tuple[str, schema.Features | None, list[dict], bool]]:
    """The rows to lint on, as (label, features, rows, synthetic): the card's examples or rows
    synthesised from its features, plus real rows of every local split (after a schema check)."""
    row_sets = []
    if task.examples:
        row_sets.append(("card examples", task.features, list(task.examples), True))
    elif task.features:
        row_sets.append(("synthetic rows", task.features, _synthetic_rows(task), True))
    for split in _mirror_splits(task, data_dirs):
        if task.features:
            for d in schema.diff(task.features, split.features):
                problems.append(Problem(task.name, task.origin, f"features vs {split.origin}: {d}"))
        row_sets.append((split.origin, split.features, _rows_of(split, REAL_ROWS), False))
    return row_sets


def _examples(task: Task, label: str, features, rows: list[dict], synthetic: bool, problems: list[Problem]) -> list:
    """The rows as task examples (what templates see); [] with a problem recorded if none are usable."""
    try:
        mapper = ExampleMapper(task, features)
        examples = [e for i, r in enumerate(rows) if mapper.keep(r, f"{label} row {i}")
                    and (e := mapper(r, f"{label} row {i}")) is not None]
    except FlanbuildError as e:
        hint = " (expressions that need consistent columns need 'examples:' in the card)" if synthetic else ""
        problems.append(Problem(task.name, "", f"on {label}: {e}{hint}"))
        return []
    if not examples:
        problems.append(Problem(task.name, task.origin, f"no usable rows in {label}"))
    return examples


def _lint_template(task: Task, template, label: str, examples: list, synthetic: bool, problems: list[Problem]) -> int:
    """Render one template on every example (with and without options); returns the renders checked."""
    # Judge "ignores its input" only on rows that differ in the fields this template reads: an
    # inverted template that reads only the answer rightly repeats itself on a one-label sample.
    read = sorted(variables(template.input) & set(examples[0].context))
    distinct_rows = len({repr([e.context.get(k) for k in read]) for e in examples}) if read else len(examples)
    checked = 0
    for show in ((True, False) if template.shows_options else (False,)):
        inputs = set()
        for example in examples:
            try:
                inp, tgt = render_template(task, template, example, show)
            except FlanbuildError as e:
                problems.append(Problem(task.name, "", f"on {label}: {e}"))
                break
            checked += 1
            inputs.add(inp)
            problems += _output_problems(task, template, label, inp, tgt, synthetic)
        if distinct_rows > 1 and len(inputs) == 1:
            problems.append(Problem(task.name, template.origin, f"template {template.id}: same input for "
                                                                 f"different rows on {label}: ignores its input"))
    return checked


def _output_problems(task: Task, template, label: str, inp: str, tgt: str, synthetic: bool) -> list[Problem]:
    loc, found = template.origin, []
    if not inp:
        found.append(Problem(task.name, loc, f"template {template.id}: empty input on {label}"))
    if not tgt:
        found.append(Problem(task.name, loc, f"template {template.id}: empty target on {label}"))
    if synthetic and ("{" in inp + tgt or "}" in inp + tgt):
        found.append(Problem(task.name, loc, f"template {template.id}: stray '{{' or '}}' in "
                                             f"output: {(inp + ' ||| ' + tgt)[:120]!r}"))
    return found


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def lint(registry: Registry, names: list[str] | None = None, data_dirs: list[Path] | None = None):
    """Lint tasks (all by default); returns (problems, tasks checked, renders checked)."""
    problems: list[Problem] = []
    renders = 0
    names = names or sorted(registry.tasks)
    for name in names:
        task_problems, n = lint_task(registry.task(name), data_dirs)
        problems += task_problems
        renders += n
    return problems, len(names), renders
