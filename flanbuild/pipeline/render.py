"""Rendering: task examples through instruction templates into output rows.

A render job is one task split with the source rows to render, decided beforehand by the mixer.
Training rows get one template each, chosen by a seeded per-example rule; eval rows get every template
(so a trainer can report the mean over templates and the best template, as the FLAN paper does).
Rows are streamed batch by batch: only the selected rows of one Arrow batch are Python objects at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import jinja2
import numpy as np
import pyarrow as pa

from flanbuild.pipeline import columnar_render
from flanbuild.pipeline import parts
from flanbuild.pipeline import layouts
from flanbuild.pipeline import seeding
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.examples import Example, ExampleMapper
from flanbuild.pipeline.layouts import Layout
from flanbuild.catalog.recipes import PromptStyle
from flanbuild.sources.loader import SplitData
from flanbuild.catalog.tasks import Task
from flanbuild.catalog.templates import Template
from flanbuild.sandbox.environment import render_limited

#: The columns of every output split (the Flan Collection's names first, then flanbuild's own).
OUTPUT_SCHEMA = pa.schema([
    ("inputs", pa.string()),
    ("targets", pa.string()),
    ("task_source", pa.string()),
    ("task_name", pa.string()),
    ("template_type", pa.string()),
    ("cluster", pa.string()),
    ("template_id", pa.int32()),
    ("template_name", pa.string()),
    ("options", pa.list_(pa.string())),
    ("example_id", pa.string()),
    ("references", pa.list_(pa.string())),
    ("few_shot_ids", pa.list_(pa.string())),
    ("option_style", pa.string()),
])
# What each column means: the one description the dataset card and README.md are generated from.
COLUMN_DOCS = {
    "inputs": "the rendered instruction (the model's input)",
    "targets": "the answer (the model's output)",
    "task_source": "the submixture the row comes from (`flan2021`, `t0`, `niv2`, `cot`, `dialog`)",
    "task_name": "the task (one dataset, or one part of one)",
    "template_type": "`zs_opt` / `zs_noopt`: zero-shot with / without the answer options shown; "
                     "`fs_opt` / `fs_noopt`: few-shot",
    "cluster": "the task cluster (FLAN's grouping; clusters are held out whole)",
    "template_id": "which template of the task rendered the row",
    "template_name": "the template's name: promptsource's own for P3 rows, `<task>_<id>` for flanbuild's "
                     "(e.g. `glue_sst2_4`)",
    "options": "answer options of a classification row (the target is one of them); empty for generation rows, "
               "inverted templates included",
    "example_id": "`<task>/<source split>/<row index>` of the source example",
    "references": "all acceptable targets (e.g. every NQ answer); the first is `targets`",
    "few_shot_ids": "`example_id`s of the exemplars in a few-shot row; empty for zero-shot rows",
    "option_style": "the options layout, `<header>|<items>|<ending>` (FLAN's: `OPTIONS:|dash|-`), or "
                    "`promptsource` for P3 rows; empty when no options are shown",
}
assert list(COLUMN_DOCS) == OUTPUT_SCHEMA.names, "every output column is documented, in schema order"
MAX_OUTPUT_CHARS = 1_000_000  # one rendered input or target; larger means a runaway template


@dataclass(frozen=True)
class RenderJob:
    """What to render for one task split."""

    task: Task
    role: str  # "train" or "eval"
    indices: np.ndarray  # sorted source row indices; a repeated index is rendered again (upsampling)
    seed: int
    task_source: str
    all_templates: bool = False  # eval: every template for every example, zero-shot, FLAN layout
    style: PromptStyle = field(default_factory=PromptStyle)
    exemplars: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # few-shot pool (train rows)


@dataclass
class RenderStats:
    rows: int = 0
    dropped: int = 0  # source rows without a usable answer, or rendering to an empty input/target
    per_template: dict[int, int] = field(default_factory=dict)
    per_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Rendered:
    inputs: str
    targets: str
    options: list[str]  # what the target is one of (labels under a labelled layout); [] for generation
    option_style: str  # the layout's name when options are shown, else ""


def render_template(task: Task, template: Template, example: Example, show_options: bool,
                    layout: Layout = layouts.FLAN) -> tuple[str, str]:
    """Render one example with one template; returns (input, target), stripped."""
    r = render_example(task, template, example, show_options, layout)
    return r.inputs, r.targets


def render_example(task: Task, template: Template, example: Example, show_options: bool,
                   layout: Layout = layouts.FLAN, rng_key: tuple = ()) -> Rendered:
    """Render one example; with options shown in a labelled layout, the target becomes the label.

    ``rng_key`` seeds the ``choice`` filter of promptsource-format templates (prompted tasks).
    """
    if task.type == "prompted":
        return _render_prompted(task, template, example, rng_key)
    input_t, target_t = template.compiled()
    ctx = dict(example.context)
    options: list[str] = [] if template.inverted or not task.is_classification else list(example.options)
    style = ""
    if task.is_classification:
        ctx["options_block"] = layout.render(example.options) if show_options else ""
        labels = layout.labels(len(example.options)) if show_options and not template.inverted else None
        if labels:
            ctx["answer"] = labels[example.options.index(example.context["answer"])]
            options = labels
        style = layout.name if show_options and template.shows_options else ""
    try:
        out = (render_limited(input_t, ctx, MAX_OUTPUT_CHARS).strip(),
               render_limited(target_t, ctx, MAX_OUTPUT_CHARS).strip())
    except Exception as e:  # noqa: BLE001 - a failure inside a template is the template's
        raise _template_error(task, template, e) from None
    return Rendered(out[0], out[1], options, style)


def _render_prompted(task: Task, template: Template, example: Example, rng_key: tuple) -> Rendered:
    """A promptsource-format template: it renders input, target and answer choices itself.

    A third-party template that fails on a row renders nothing (the row is counted as dropped); templates
    that fail outright were left out before the build by probe_prompted.
    """
    try:
        inputs, targets, choices = template.apply(example.context, random.Random(seeding.base_key(*rng_key)))
    except Exception:  # noqa: BLE001 - a failure inside a third-party template drops the row
        return Rendered("", "", [], "")
    return Rendered(inputs, targets, choices if targets in choices else [],
                    "promptsource" if template.shows_options else "")


def template_name(task: Task, template: Template) -> str:
    """The template's name: promptsource's own, else ``<task>_<id>``."""
    return getattr(template, "name", None) or f"{task.name}_{template.id}"


def probe_prompted(task: Task, data: SplitData, indices: np.ndarray, seed: int, rows: int = 16) -> dict[int, str]:
    """Templates of a prompted task that fail on its first usable rows: {template id: why} (one line each).

    Such a template is left out of the build (and recorded as skipped) instead of failing it.
    """
    mapper = ExampleMapper(task, data.features)
    failed: dict[int, str] = {}
    probe = np.asarray(indices[:rows], dtype=np.int64)
    for chunk, batch in data.rows(probe):
        for idx, row in zip(chunk.tolist(), batch):
            example = mapper(row, f"row {idx} of {data.origin}")
            for t in task.templates:
                if example is None or t.id in failed:
                    continue
                try:
                    t.apply(example.context, random.Random(seeding.base_key(seed, task.name, idx, t.id)))
                except Exception as e:  # noqa: BLE001 - the template's failure, reported as its skip reason
                    failed[t.id] = f"fails on row {idx}: " + str(_template_error(task, t, e)).split(": ", 1)[-1]
    return failed


def _template_error(task: Task, template: Template, e: Exception) -> FlanbuildError:
    """One line naming the task, template and file for a failure inside a template."""
    where, name = template.origin or None, f"task {task.name}, template {template.id}"
    if isinstance(e, FlanbuildError):
        return e
    if isinstance(e, jinja2.exceptions.SecurityError):
        return FlanbuildError(f"{name}: refused by the sandbox: {e}", where=where)
    if isinstance(e, jinja2.UndefinedError):
        return FlanbuildError(f"{name}: {e.message} (fields: {', '.join(sorted(task.fields))})", where=where)
    return FlanbuildError(f"{name}: rendering failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}",
                          where=where)


def template_type(task: Task, template: Template, show_options: bool, few_shot: bool = False) -> str:
    """Flan Collection template type: zero-/few-shot, with or without the options shown."""
    shown = (task.is_classification or task.type == "prompted") and show_options and template.shows_options \
        and not template.inverted
    return ("fs_" if few_shot else "zs_") + ("opt" if shown else "noopt")


class _Lengths:
    """Input length in tokens: a transformers tokenizer if configured, else ~4 characters per token."""

    def __init__(self, tokenizer: str | None):
        self._tok = None
        if tokenizer:
            from flanbuild.sources.tokenizers import load_tokenizer

            self._tok = load_tokenizer(tokenizer)

    def __call__(self, text: str) -> int:
        if self._tok is None:
            return -(-len(text) // 4)
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


def _decisions(job: RenderJob, templates: list[Template]) -> dict[str, np.ndarray]:
    """Every seeded per-row choice of a training job, vectorised over its rows.

    The n-th repeat of an index (upsampling) gets its own draws: key = index + repeat * 2**40.
    """
    task, style = job.task, job.style
    indices = np.asarray(job.indices, dtype=np.int64)
    repeats = np.arange(len(indices)) - np.searchsorted(indices, indices, side="left")
    keys = indices + (repeats << 40)
    names = (task.name, job.role)
    inverted = [i for i, t in enumerate(templates) if t.inverted]
    plain = [i for i, t in enumerate(templates) if not t.inverted]
    if style.inverted_weight is None or not inverted or not plain:
        chosen = seeding.choose(job.seed, ("template", *names), keys, len(templates))
    else:
        p_inv = style.inverted_weight / (1.0 + style.inverted_weight)
        use_inv = seeding.unit_floats(job.seed, ("inverted", *names), keys) < p_inv
        pick_inv = np.asarray(inverted)[seeding.choose(job.seed, ("template", *names, "inv"), keys, len(inverted))]
        pick_plain = np.asarray(plain)[seeding.choose(job.seed, ("template", *names, "plain"), keys, len(plain))]
        chosen = np.where(use_inv, pick_inv, pick_plain)
    out = {
        "keys": keys,
        "template": chosen,
        "few_shot": seeding.unit_floats(job.seed, ("few_shot", *names), keys) < style.few_shot,
        "options": seeding.unit_floats(job.seed, ("options", *names), keys) < style.options,
        "layout": seeding.choose(job.seed, ("layout", *names), keys, len(layouts.ALL)),
        "k": np.asarray(style.k)[seeding.choose(job.seed, ("k", *names), keys, len(style.k))],
    }
    if repeats.any():
        _distinct_repeats(job, templates, indices, repeats, out)
    return out


def _variants(job: RenderJob, template: Template) -> list[tuple[bool, int]]:
    """The (options shown, layout) variants a template renders differently for a task under the style."""
    style, task = job.style, job.task
    if not task.is_classification or task.type == "prompted" or template.inverted or not template.shows_options:
        return [(False, 0)]
    shown = [(True, n) for n in (range(len(layouts.ALL)) if style.option_layouts else [0])]
    return ([(False, 0)] if style.options < 1 else []) + (shown if style.options > 0 else [])


def _distinct_repeats(job: RenderJob, templates: list[Template], indices: np.ndarray, repeats: np.ndarray,
                      d: dict[str, np.ndarray]) -> None:
    """Upsampling: the n-th repeat of a row takes a (template, options, layout) combination the row has
    not had yet, while one remains. Combinations come in a seeded order per row, weighted like the first
    draw (inverted templates at ``inverted_weight``); the first draw itself is unchanged.
    """
    style, names = job.style, (job.task.name, job.role)
    both = any(t.inverted for t in templates) and not all(t.inverted for t in templates)
    weight = [style.inverted_weight if both and style.inverted_weight is not None and t.inverted else 1.0 for t in templates]
    combos = [(i, v) for i, t in enumerate(templates) if weight[i] > 0 for v in _variants(job, t)]
    inverse_weight = np.array([1.0 / weight[t] for t, _ in combos])
    orders: dict[int, list[tuple[int, tuple[bool, int]]]] = {}
    for p in np.flatnonzero(repeats).tolist():
        first = p - int(repeats[p])
        idx = int(indices[p])
        if idx not in orders:
            t0 = int(d["template"][first])
            v0 = (bool(d["options"][first]), int(d["layout"][first]) if style.option_layouts else 0)
            v0 = v0 if v0 in _variants(job, templates[t0]) and v0[0] else _variants(job, templates[t0])[0]
            u = seeding.unit_floats(job.seed, ("repeat", *names), idx + (np.arange(len(combos), dtype=np.int64) << 40))
            rank = np.argsort(-(u ** inverse_weight), kind="stable")[:int(repeats[p:p + len(combos)].max()) + 1]
            orders[idx] = [(t0, v0)] + [combos[c] for c in rank.tolist() if combos[c] != (t0, v0)]
        order = orders[idx]
        t, (show, layout) = order[int(repeats[p]) % len(order)]
        d["template"][p] = t
        if _variants(job, templates[t]) != [(False, 0)]:
            d["options"][p], d["layout"][p] = show, layout


COLUMNS = tuple(OUTPUT_SCHEMA.names)


def render_rows(job: RenderJob, data: SplitData, stats: RenderStats | None = None,
                exemplar_data: SplitData | None = None) -> Iterator[dict]:
    """Output rows (dicts in OUTPUT_SCHEMA) for a job, in source-row order."""
    for record in _records(job, data, stats if stats is not None else RenderStats(), exemplar_data):
        yield dict(zip(COLUMNS, record))


def _records(job: RenderJob, data: SplitData, stats: RenderStats, exemplar_data: SplitData | None,
             columnar: bool = False) -> Iterator[tuple | pa.Table]:
    """Output rows as tuples in OUTPUT_SCHEMA's column order (the hot loop: no per-row dicts).

    With ``columnar``, a job that pipeline/columnar_render.py can compute on whole Arrow batches yields
    tables instead (the same rows, in the same order, with the same statistics).
    """
    task = job.task
    templates = sorted(task.templates, key=lambda t: t.id)
    if not templates:
        raise FlanbuildError(f"task {task.name} has no templates", where=task.origin or None)
    mapper = ExampleMapper(task, data.features)
    outputs = _all_templates(job, templates) if job.all_templates else _TrainChoice(job, templates, exemplar_data or data, mapper)
    prefix = f"{task.name}/{task.source.split_name(job.role)}/"
    names = {t.id: template_name(task, t) for t in templates}

    def one(idx: int, row: dict, n: int, stats) -> list[tuple]:
        example = mapper(row, f"row {idx} of {data.origin}")
        if example is None:
            stats.dropped += 1
            return []
        example_id, out = prefix + str(idx), []
        for template, r, shot_ids, show in outputs(example, idx, n):
            if not r.inputs or not r.targets:
                stats.dropped += 1
                continue
            kind = template_type(task, template, show, few_shot=bool(shot_ids))
            stats.rows += 1
            stats.per_template[template.id] = stats.per_template.get(template.id, 0) + 1
            stats.per_type[kind] = stats.per_type.get(kind, 0) + 1
            references = example.references if r.targets == example.context.get("answer") else [r.targets]
            out.append((r.inputs, r.targets, job.task_source, task.name, kind, task.cluster, template.id,
                        names[template.id], r.options, example_id, references, shot_ids, r.option_style))
        return out

    if columnar:
        plan = columnar_render.plan(
            job, templates, mapper.static_options, getattr(outputs, "decisions", None),
            lambda t, show: template_type(task, t, show), OUTPUT_SCHEMA, one, _table, data.origin)
        if plan is not None:
            yield from plan.run(data, job.indices, stats)
            return
    position = 0
    for chunk, rows in data.rows(job.indices):
        for i, (idx, row) in enumerate(zip(chunk.tolist(), rows)):
            yield from one(idx, row, position + i, stats)
        position += len(chunk)


def _all_templates(job: RenderJob, templates: list[Template]):
    """Eval: every example with every template, options shown where the template shows them."""
    task = job.task

    def outputs(example: Example, idx: int, n: int) -> list[tuple[Template, Rendered, list[str], bool]]:
        return [(t, render_example(task, t, example, t.shows_options, rng_key=(job.seed, task.name, idx, t.id)),
                 [], t.shows_options) for t in templates]
    return outputs


class _TrainChoice:
    """Train: one template per example, with the seeded layout, options and few-shot decisions."""

    def __init__(self, job: RenderJob, templates: list[Template], exemplar_data: SplitData, mapper: ExampleMapper):
        self.job, self.templates, self.style = job, templates, job.style
        self.decisions = {k: v.tolist() for k, v in _decisions(job, templates).items()}
        self.pool = _ExemplarPool(job, exemplar_data, mapper) if self.style.few_shot > 0 else None
        self.lengths = _Lengths(self.style.tokenizer) if self.pool is not None else None
        self.shot_prefix = f"{job.task.name}/{job.task.source.split_name('train')}/"

    def __call__(self, example: Example, idx: int, n: int) -> list[tuple[Template, Rendered, list[str], bool]]:
        task, d, style = self.job.task, self.decisions, self.style
        t = self.templates[d["template"][n]]
        layout = layouts.ALL[d["layout"][n]] if style.option_layouts else layouts.FLAN
        show = t.shows_options if task.type == "prompted" else d["options"][n]
        key = d["keys"][n]
        query = render_example(task, t, example, show, layout, rng_key=(self.job.seed, task.name, key, t.id))
        shots: list[tuple[int, Rendered]] = []
        if self.pool is not None and d["few_shot"][n]:
            shots = self.pool.exemplars(idx, key, d["k"][n], t, self.templates, show, layout)
            query = _assemble(query, shots, style, self.lengths)
        return [(t, query, [self.shot_prefix + str(j) for j, _ in shots], show)]


class _ExemplarPool:
    """A task's few-shot exemplars: a seeded, bounded pool of its training rows, held in memory."""

    def __init__(self, job: RenderJob, data: SplitData, mapper: ExampleMapper):
        self.job, self.mapper, self.origin = job, mapper, data.origin
        indices = np.sort(np.asarray(job.exemplars, dtype=np.int64))
        self.rows: dict[int, dict] = {int(i): r for chunk, rows in data.rows(indices) for i, r in zip(chunk, rows)}
        self.indices = indices
        self._examples: dict[int, Example | None] = {}

    def _example(self, idx: int) -> Example | None:
        """Rows are mapped to Examples when first drawn (most of a large pool never is)."""
        if idx not in self._examples:
            self._examples[idx] = self.mapper(self.rows[idx], f"row {idx} of {self.origin}")
        return self._examples[idx]

    def exemplars(self, query: int, key: int, k: int, template: Template, templates: list[Template],
                  show: bool, layout: Layout) -> list[tuple[int, Rendered]]:
        """k exemplars for one query row (never the query itself), rendered like the query."""
        if len(self.indices) == 0:
            return []
        job = self.job
        draws = seeding.choose(job.seed, ("exemplar", job.task.name, job.role, key), np.arange(2 * k + 4), len(self.indices))
        picked: list[int] = []
        for j in self.indices[draws]:
            if int(j) != query and int(j) not in picked and self._example(int(j)) is not None:
                picked.append(int(j))
            if len(picked) == k:
                break
        same_kind = [t for t in templates if t.inverted == template.inverted]
        out = []
        for n, j in enumerate(picked):
            t = template
            if job.style.few_shot_mode == "mixed":
                t = same_kind[int(seeding.choose(job.seed, ("exemplar_template", job.task.name, key), np.array([n]), len(same_kind))[0])]
            shot = render_example(job.task, t, self._example(j), show, layout, rng_key=(job.seed, job.task.name, j, t.id))
            if job.task.type != "prompted" or (shot.inputs and shot.targets):  # a prompted one may render empty
                out.append((j, shot))
        return out


def _assemble(query: Rendered, shots: list[tuple[int, Rendered]], style: PromptStyle, lengths: _Lengths) -> Rendered:
    """Join exemplars and the query, dropping the farthest exemplars until the input fits the budget."""
    blocks = [f"{r.inputs}{style.target_separator}{r.targets}" for _, r in shots]
    while blocks:
        text = style.example_separator.join([*blocks, query.inputs])
        if lengths(text) <= style.max_input_tokens:
            return Rendered(text, query.targets, query.options, query.option_style)
        blocks.pop(0)
        shots.pop(0)
    return query


def write_part(job: RenderJob, data: SplitData, path: Path | pa.NativeFile, exemplar_data: SplitData | None = None,
               columnar: bool = True, compress: bool = True) -> RenderStats:
    """Render a job into one part file (pipeline/parts.py: the unit the writer assembles and the cache keeps).

    ``columnar=False`` keeps every row on the row path (the differential tests compare the two);
    ``compress=False`` for a part no cache keeps.
    """
    stats = RenderStats()
    with parts.PartWriter(path, OUTPUT_SCHEMA, compress=compress) as writer:
        buffer: list[tuple] = []
        for record in _records(job, data, stats, exemplar_data, columnar):
            if isinstance(record, pa.Table):
                if buffer:
                    writer.write_table(_table(buffer))
                    buffer = []
                writer.write_table(record)
                continue
            buffer.append(record)
            if len(buffer) >= parts.BATCH_ROWS:
                writer.write_table(_table(buffer))
                buffer = []
        if buffer:
            writer.write_table(_table(buffer))
    return stats


def _table(records: list[tuple]) -> pa.Table:
    """Row tuples -> an Arrow table, column by column (much faster than from_pylist on dicts)."""
    columns = list(zip(*records)) if records else [[] for _ in COLUMNS]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, OUTPUT_SCHEMA)], schema=OUTPUT_SCHEMA)
