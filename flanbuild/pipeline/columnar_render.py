"""Columnar rendering: whole record batches through simple templates with Arrow compute, not row by row.

Most catalog templates are literal text, the card's fields, ``{{options_block}}`` and a few filters, and
many cards' field expressions are plain columns (or a struct field, ``| trim``, ``.strip()``). For such a
task split, ``inputs``/``targets`` and every other output column are computed for a whole batch with
string kernels (``binary_join_element_wise``, ``utf8_trim``...), and give exactly what the row path
(``render._records``: ExampleMapper, the template's fast path or Jinja, ``.strip()``) gives:

* template text comes from the sandbox's own parse (trim_blocks/lstrip_blocks, the dropped trailing
  newline already applied); a piece that only reads task-wide constants (``options``, ``options_block``)
  is rendered once by the sandboxed environment itself; a piece that reads a row is one of a small set of
  operations with an exact Arrow equivalent (``str()`` of strings and integers, ``trim``/``strip`` with
  Python's whitespace class, ``lower``/``upper`` (Arrow on ASCII rows, Python's own on the others),
  ``length``, slices of strings, struct fields);
* anything else is left to the row path: a template outside that subset renders its rows row by row
  (``row_path``), and a batch whose values could make the two paths differ (a null, a missing column,
  another type, invalid UTF-8, an answer outside the options, an output over the size limit) goes row by
  row whole, so the row path gives its exact output or its exact error.

Only recipes without few-shot rows and without option layouts go columnar (the FLAN layout, which has no
labels, is the only one used here). Output rows keep the row path's order, and its statistics are
updated in the same order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanbuild.pipeline import layouts
from flanbuild.catalog.tasks import Task
from flanbuild.catalog.templates import Template

#: Every character for which Python's ``str.isspace()`` is true: what ``str.strip()`` and ``trim`` remove.
PY_SPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
            "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
MAX_DECLINED = 3  # batches a split may send back to the row path before it stays there
BATCH_ROWS = 8192  # source rows per columnar batch (more rows per kernel call, same output)
_STRING_METHODS = {"strip": "trim", "lstrip": "ltrim", "rstrip": "rtrim", "lower": "lower", "upper": "upper"}
_FILTERS = {"trim": "trim", "lower": "lower", "upper": "upper", "length": "length"}

ANSWER_INDEX = " answer index"  # classification: each row's answer as an index into the options (not a name)
Value = Callable[[Mapping[str, pa.Array]], pa.Array]


class _Decline(Exception):
    """Not something the columnar path gives the row path's answer for (a template, or a batch)."""


# -- expressions over columns ---------------------------------------------------------------------------

def _is_string(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def _is_int(arr: pa.Array) -> bool:
    return pa.types.is_integer(arr.type)


def _checked(arr: pa.Array) -> pa.Array:
    if arr.null_count:
        raise _Decline("null")
    return arr


def _lookup(name: str) -> Value:
    def get(env: Mapping[str, pa.Array]) -> pa.Array:
        if name not in env:
            raise _Decline(f"no column {name}")
        return _checked(env[name])
    return get


def _struct_field(inner: Value, attr: str) -> Value:
    def get(env: Mapping[str, pa.Array]) -> pa.Array:
        arr = inner(env)
        if not pa.types.is_struct(arr.type) or arr.type.get_field_index(attr) < 0:
            raise _Decline("not a struct field")
        return _checked(pc.struct_field(arr, attr))
    return get


def _case(arr: pa.Array, upper: bool) -> pa.Array:
    """Python's ``str.lower``/``str.upper``: Arrow's ASCII kernel, Python's own on the non-ASCII rows."""
    out = pc.ascii_upper(arr) if upper else pc.ascii_lower(arr)
    other = pc.invert(pc.string_is_ascii(arr))
    if pc.any(other).as_py():
        where = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        values = [s.upper() if upper else s.lower() for s in arr.take(pa.array(where)).to_pylist()]
        out = pc.replace_with_mask(out, other, pa.array(values, out.type))
    return out


def _string_op(inner: Value, op: str) -> Value:
    def apply(env: Mapping[str, pa.Array]) -> pa.Array:
        arr = inner(env)
        if op == "length":
            if _is_string(arr):
                return pc.utf8_length(arr)
            if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
                return pc.list_value_length(arr)
            raise _Decline("length of another type")
        if not _is_string(arr):
            raise _Decline(f"{op} of a non-string")
        if op in ("lower", "upper"):
            return _case(arr, op == "upper")
        return getattr(pc, f"utf8_{op}")(arr, characters=PY_SPACE)
    return apply


def _slice(inner: Value, start: int | None, stop: int | None) -> Value:
    def apply(env: Mapping[str, pa.Array]) -> pa.Array:
        arr = inner(env)
        if not _is_string(arr):
            raise _Decline("slice of a non-string")
        return pc.utf8_slice_codeunits(arr, start or 0, stop if stop is not None else 2**62)
    return apply


def _const_int(node, nodes) -> int | None:
    if node is None:
        return None
    if isinstance(node, nodes.Neg):
        value = _const_int(node.node, nodes)
        if value is None:
            raise _Decline("slice bound")
        return -value
    if isinstance(node, nodes.Const) and type(node.value) is int:
        return node.value
    raise _Decline("slice bound")


def _builtin(env, kind: str, name: str) -> bool:
    """A filter that is still Jinja's own (not replaced or bounded by the sandbox)."""
    from jinja2.filters import FILTERS

    return kind == "filter" and env.filters.get(name) is FILTERS.get(name) and name in FILTERS


def _no_args(node) -> bool:
    return not node.args and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None


def compile_value(node, env) -> Value:
    """A per-row expression node as a function of the named columns; raises _Decline outside the subset."""
    from jinja2 import nodes

    if isinstance(node, nodes.Name) and node.ctx == "load":
        return _lookup(node.name)
    if isinstance(node, nodes.Getattr) and node.ctx == "load":
        if node.attr.startswith("_") or hasattr(dict, node.attr) or hasattr(str, node.attr):
            raise _Decline("attribute")
        return _struct_field(compile_value(node.node, env), node.attr)
    if isinstance(node, nodes.Filter) and node.node is not None and node.name in _FILTERS and _no_args(node) \
            and _builtin(env, "filter", node.name):
        return _string_op(compile_value(node.node, env), _FILTERS[node.name])
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and _no_args(node) \
            and node.node.attr in _STRING_METHODS:
        return _string_op(compile_value(node.node.node, env), _STRING_METHODS[node.node.attr])
    if isinstance(node, nodes.Getitem):
        return _compile_slice(node, env, nodes)
    raise _Decline(type(node).__name__)


def _compile_slice(node, env, nodes) -> Value:
    """``s[a:b]`` of a string with constant bounds."""
    if node.ctx != "load" or not isinstance(node.arg, nodes.Slice) or node.arg.step is not None:
        raise _Decline("item")
    return _slice(compile_value(node.node, env), _const_int(node.arg.start, nodes), _const_int(node.arg.stop, nodes))


def compile_card_expression(source: str) -> Value:
    """A card field/answer expression as a column function (raises _Decline outside the subset)."""
    from flanbuild.sandbox.environment import environment, parse_expression

    return compile_value(parse_expression(source.strip()), environment())


def as_text(arr: pa.Array) -> pa.Array:
    """What ``{{ value }}`` prints for a column of strings or integers (``str(value)``)."""
    if _is_string(arr):
        return arr.cast(pa.string()) if pa.types.is_large_string(arr.type) else arr
    if _is_int(arr):
        return arr.cast(pa.string())
    raise _Decline("printing another type")


# -- templates --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Piece:
    text: str | None = None  # literal text
    const: Any = None  # a jinja template of one output node that reads only task-wide constants
    value: Value | None = None  # a per-row value
    names: frozenset[str] = frozenset()
    by_answer: pa.Array | None = None  # classification: the piece's text for each option (row: its answer's)


def compile_template(source: str, per_row: frozenset[str], constants: frozenset[str]) -> list[_Piece]:
    """A template as pieces; raises _Decline when it is not a concatenation of literals and simple values.

    With "answer" among ``constants`` (classification: the answer is one of the options), a piece that
    reads only constants and the answer is rendered once per option.
    """
    import jinja2.meta
    from jinja2 import nodes

    from flanbuild.sandbox.environment import environment, parse

    env = environment()
    pieces: list[_Piece] = []
    for stmt in parse(source).body:
        if not isinstance(stmt, nodes.Output):
            raise _Decline(type(stmt).__name__)
        for child in stmt.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append(_Piece(text=child.data))
                continue
            tree = nodes.Template([nodes.Output([copy.deepcopy(child)], lineno=1)], lineno=1)
            tree.set_environment(env)
            names = frozenset(jinja2.meta.find_undeclared_variables(tree))
            if names <= constants:
                pieces.append(_Piece(const=env.from_string(tree), names=names))
            elif "answer" in per_row and names <= constants | {"answer"} and "options" in constants:
                pieces.append(_Piece(const=env.from_string(tree), names=names, by_answer=pa.array([])))
            elif names <= per_row:
                pieces.append(_Piece(value=compile_value(child, env), names=names))
            else:
                raise _Decline("reads a name that is neither a field nor a constant")
    return pieces


def _constant_text(pieces: list[_Piece], ctx: dict) -> list[_Piece]:
    """Constant pieces rendered by the sandboxed environment (its exact text or its error)."""
    from flanbuild.sandbox.environment import render_limited

    out = []
    for p in pieces:
        if p.by_answer is not None:
            texts = [render_limited(p.const, {**{k: ctx[k] for k in p.names if k != "answer"}, "answer": o},
                                    1_000_000) for o in ctx["options"]]
            p = _Piece(by_answer=pa.array(texts, pa.string()), names=frozenset({ANSWER_INDEX}))
        elif p.const is not None:
            p = _Piece(text=render_limited(p.const, {k: ctx[k] for k in p.names}, 1_000_000))
        out.append(p)
    return out


def _join(pieces: list[_Piece], ctx: Mapping[str, pa.Array], n: int) -> pa.Array:
    parts: list[Any] = []
    for p in pieces:
        if p.text is not None:
            if p.text:
                parts.append(pa.scalar(p.text, pa.string()))
        elif p.by_answer is not None:
            parts.append(p.by_answer.take(ctx[ANSWER_INDEX]))
        else:
            parts.append(as_text(p.value(ctx)))  # type: ignore[misc]
    if not any(isinstance(a, pa.Array) for a in parts):
        return pa.repeat(pa.scalar("".join(a.as_py() for a in parts), pa.string()), n)
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.string()))


# -- a task split -------------------------------------------------------------------------------------------

@dataclass
class _Scratch:
    """The row path's statistics for rows it renders inside a columnar batch (only ``dropped`` is kept)."""

    rows: int = 0
    dropped: int = 0
    per_template: dict = field(default_factory=dict)
    per_type: dict = field(default_factory=dict)


@dataclass
class _Variant:
    """One template shown one way: its pieces with constants rendered, and its per-row constants."""

    index: int
    template: Template
    show: bool
    inputs: list[_Piece]
    targets: list[_Piece]
    names: frozenset[str]
    kind: str
    option_style: str
    options: list[str]


@dataclass
class Plan:
    """How one render job goes columnar (built by :func:`plan`)."""

    task: Task
    templates: list[Template]
    fields: dict[str, Value]
    answer: Value
    options: list[str] | None
    variants: dict[tuple[int, bool], _Variant]
    template_choice: np.ndarray | None  # train: template index per job row; None: eval (every template)
    show_choice: np.ndarray | None
    schema: pa.Schema
    prefix: str
    task_source: str
    row_path: Callable  # (idx, row dict, job position, stats) -> list of output tuples
    to_table: Callable[[list[tuple]], pa.Table]
    origin: str
    declined: int = 0  # batches that went row by row

    def run(self, data, indices: np.ndarray, stats) -> Iterator[pa.Table]:
        """Output tables, one per source batch, in the row path's order; ``stats`` updated like it."""
        indices = np.asarray(indices, dtype=np.int64)
        position = 0
        for chunk, offset, batch in data.selected_batches(indices):
            if self.declined >= MAX_DECLINED:  # this split's data is not for the columnar path: stop trying
                table = self.render_rows(batch, chunk, offset, position, stats)
            else:
                table = self.render_batch(batch, chunk, offset, position, stats)
            position += len(chunk)
            if table.num_rows:
                yield table

    def render_batch(self, batch: pa.RecordBatch, chunk: np.ndarray, offset: int, position: int, stats) -> pa.Table:
        scratch = _Scratch()
        try:
            tables, keys, dropped, rest = self._columnar(batch, chunk, position)
        except (_Decline, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            self.declined += 1
            tables, keys, dropped, rest = [], [], 0, np.arange(len(chunk))
        if len(rest):
            tables_rest, keys_rest = self._rows(batch, chunk, offset, position, rest, scratch)
            tables, keys = tables + tables_rest, keys + keys_rest
        table = pa.concat_tables(tables) if tables else self.to_table([])
        key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        if len(key) > 1 and bool(np.any(np.diff(key) < 0)):
            table = table.take(pa.array(np.argsort(key, kind="stable")))
        _count(table, stats, dropped + scratch.dropped)
        return table

    def render_rows(self, batch: pa.RecordBatch, chunk: np.ndarray, offset: int, position: int, stats) -> pa.Table:
        """A whole batch on the row path (its statistics straight into ``stats``)."""
        tables, _ = self._rows(batch, chunk, offset, position, np.arange(len(chunk)), stats)
        return tables[0]

    def _rows(self, batch, chunk, offset, position, rest: np.ndarray, scratch) -> tuple[list, list]:
        """The row path for the rows at batch positions ``rest``."""
        from flanbuild.sources.loader import to_rows

        rows = to_rows(batch.take(pa.array(rest)), self.origin, offset)
        records, keys = [], []
        width = 1 if self.template_choice is not None else len(self.templates)
        for i, row in zip(rest.tolist(), rows):
            out = self.row_path(int(chunk[i]), row, position + i, scratch)
            records.extend(out)
            keys.extend(i * width + self._order(r) for r in out)
        return [self.to_table(records)], [np.asarray(keys, dtype=np.int64)]

    def _order(self, record: tuple) -> int:
        """Eval: a row's outputs come in template order (template_id is column 6)."""
        if self.template_choice is not None:
            return 0
        return next(j for j, t in enumerate(self.templates) if t.id == record[6])

    def _examples(self, batch: pa.RecordBatch) -> tuple[dict[str, pa.Array], np.ndarray]:
        """The card's fields and answer on a batch (ExampleMapper's values), and which rows have an example."""
        batch.validate(full=True)  # invalid UTF-8 anywhere: the row path's one-line error
        columns = {name: batch.column(name) for name in batch.schema.names}
        ctx = {name: get(columns) for name, get in self.fields.items()}
        answer = self.answer(columns)
        if self.options is not None:  # classification: an index into the options, or one of them
            opts = pa.array(self.options, pa.string())
            if _is_int(answer):
                if len(answer) and (pc.min(answer).as_py() < 0 or pc.max(answer).as_py() >= len(self.options)):
                    raise _Decline("answer outside the options")
                index = answer
            elif _is_string(answer) and pc.all(pc.is_in(answer, value_set=opts)).as_py() is not False:
                index = pc.index_in(answer, value_set=opts)
            else:
                raise _Decline("answer type")
            ctx.pop("options", None)
            ctx.pop("options_block", None)
            ctx["answer"], ctx[ANSWER_INDEX] = opts.take(index), index
            return ctx, np.ones(len(answer), dtype=bool)
        if _is_string(answer):
            valid = pc.greater(pc.utf8_length(pc.utf8_trim(answer, characters=PY_SPACE)), 0)
            ctx["answer"] = as_text(answer)
            return ctx, np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
        ctx["answer"] = as_text(answer)  # an integer answer (a string of it is never blank)
        return ctx, np.ones(len(answer), dtype=bool)

    def _columnar(self, batch: pa.RecordBatch, chunk: np.ndarray, position: int):
        """(tables, sort keys, dropped, batch positions left to the row path) or _Decline."""
        ctx, valid = self._examples(batch)
        n = len(chunk)
        dropped = int(n - valid.sum())
        if self.template_choice is not None:
            choice = self.template_choice[position:position + n]
            show = self.show_choice[position:position + n]
            width = 1
            codes = choice.astype(np.int64) * 2 + show.astype(np.int64)
            groups = [(int(c) // 2, bool(c % 2), np.flatnonzero((codes == c) & valid)) for c in np.unique(codes)]
            # rows whose (template, shows options) has no columnar variant go row by row
            rest = np.concatenate([pos for j, s, pos in groups if (j, s) not in self.variants] + [np.zeros(0, np.int64)])
            rest = np.sort(rest).astype(np.int64)
        else:
            width = len(self.templates)
            rows = np.flatnonzero(valid)
            groups = [(j, t.shows_options, rows) for j, t in enumerate(self.templates)]
            rest = np.zeros(0, dtype=np.int64)
        ids = pa.array(chunk, pa.int64()).cast(pa.string())
        tables, keys = [], []
        for j, show, pos in groups:
            variant = self.variants.get((j, show))
            if variant is None or not len(pos):
                continue
            table, kept, empty = self._variant(variant, ctx, ids, pos)
            dropped += empty
            if table is not None:
                tables.append(table)
                keys.append(kept * width + (0 if self.template_choice is not None else j))
        return tables, keys, dropped, rest

    def _variant(self, v: _Variant, ctx: dict[str, pa.Array], ids: pa.Array, pos: np.ndarray):
        n = len(pos)
        whole = n == len(ids) and np.array_equal(pos, np.arange(n))  # every row of the batch: no copies
        take = None if whole else pa.array(pos)
        sub = {name: ctx[name] if whole else ctx[name].take(take) for name in v.names}
        raw_in, raw_out = _join(v.inputs, sub, n), _join(v.targets, sub, n)
        for raw in (raw_in, raw_out):
            if len(raw) and pc.max(pc.utf8_length(raw)).as_py() > 1_000_000:
                raise _Decline("output over the size limit")  # the row path's error
        inputs = pc.utf8_trim(raw_in, characters=PY_SPACE)
        targets = pc.utf8_trim(raw_out, characters=PY_SPACE)
        keep = pc.and_(pc.greater(pc.utf8_length(inputs), 0), pc.greater(pc.utf8_length(targets), 0))
        keep_np = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
        m = int(keep_np.sum())
        if m == 0:
            return None, pos[:0], n
        if m < n:
            inputs, targets = inputs.filter(keep), targets.filter(keep)
            take = pa.array(pos[keep_np])
        example_ids = pc.binary_join_element_wise(pa.scalar(self.prefix), ids if take is None else ids.take(take),
                                                  pa.scalar(""))
        table = pa.Table.from_arrays([
            inputs, targets, _repeat(self.task_source, m), _repeat(self.task.name, m), _repeat(v.kind, m),
            _repeat(self.task.cluster, m), pa.repeat(pa.scalar(v.template.id, pa.int32()), m),
            _repeat(_name(self.task, v.template), m), _lists(v.options, m), example_ids,
            pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32)), targets), _lists([], m),
            _repeat(v.option_style, m),
        ], schema=self.schema)
        return table, pos[keep_np], n - m


def _name(task: Task, template: Template) -> str:
    return getattr(template, "name", None) or f"{task.name}_{template.id}"


def _repeat(text: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, pa.string()), n)


def _lists(values: list[str], n: int) -> pa.Array:
    """``n`` copies of one list of strings, as a list<string> array."""
    k = len(values)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    items = pa.array(values, pa.string()).take(pa.array(np.tile(np.arange(k), n))) if k else pa.array([], pa.string())
    return pa.ListArray.from_arrays(offsets, items)


def _count(table: pa.Table, stats, dropped: int) -> None:
    """The row path's statistics for a batch's output rows (new keys in order of first appearance)."""
    stats.dropped += dropped
    n = table.num_rows
    if not n:
        return
    stats.rows += n
    for column, target in (("template_id", stats.per_template), ("template_type", stats.per_type)):
        encoded = pc.dictionary_encode(table.column(column).combine_chunks())
        uniq, first, counts = np.unique(encoded.indices.to_numpy(), return_index=True, return_counts=True)
        names = encoded.dictionary.to_pylist()
        for at in np.argsort(first, kind="stable"):
            key = names[int(uniq[at])]
            target[key] = target.get(key, 0) + int(counts[at])


def plan(job, templates: list[Template], options: list[str] | None, decisions: Mapping[str, Any] | None,
         kind: Callable[[Template, bool], str], schema: pa.Schema, row_path: Callable,
         to_table: Callable[[list[tuple]], pa.Table], origin: str) -> Plan | None:
    """A columnar plan for a render job, or None when the job keeps the row path.

    ``options``: the task's static option list (classification); ``decisions``: the train job's seeded
    choices (template index and options shown per job row), None for eval.
    """
    task, style = job.task, job.style
    if task.type not in ("classification", "generation") or style.few_shot > 0 or \
            (style.option_layouts and not job.all_templates):
        return None
    if task.is_classification and (options is None or layouts.FLAN.labels(len(options)) is not None):
        return None
    try:
        fields = {name: compile_card_expression(expr) for name, expr in task.fields.items()}
        answer = compile_card_expression(task.answer)
    except _Decline:
        return None
    except Exception:  # noqa: BLE001 - an expression the sandbox refuses: the row path reports it
        return None
    variants = _variants(task, templates, options, kind, job.all_templates)
    if not variants or (job.all_templates and len(variants) < len(templates)):
        return None
    choice = show = None
    if not job.all_templates:
        choice = np.asarray(decisions["template"], dtype=np.int64)
        show = np.asarray(decisions["options"], dtype=bool)
    return Plan(task, templates, fields, answer, options, variants, choice, show, schema,
                f"{task.name}/{task.source.split_name(job.role)}/", job.task_source, row_path, to_table, origin)


def _variants(task: Task, templates: list[Template], options: list[str] | None, kind, eval_: bool):
    """The (template index, options shown) combinations that go columnar, with their constants rendered."""
    constants = frozenset({"options", "options_block"}) if task.is_classification else frozenset()
    per_row = (frozenset(task.fields) - constants) | {"answer"}
    out: dict[tuple[int, bool], _Variant] = {}
    for j, t in enumerate(templates):
        for show in ((t.shows_options,) if eval_ else (False, True)):
            ctx = {"options": list(options), "options_block": layouts.FLAN.render(options) if show else ""} \
                if task.is_classification else {}
            try:
                pin = compile_template(t.input, per_row, constants)
                pout = compile_template(t.target, per_row, constants)
                pin, pout = _constant_text(pin, ctx), _constant_text(pout, ctx)
            except _Decline:
                continue
            except Exception:  # noqa: BLE001 - a constant piece that fails: the row path says how
                continue
            names = frozenset().union(*(p.names for p in pin + pout if p.text is None))
            classification = task.is_classification
            out[(j, show)] = _Variant(
                j, t, show, pin, pout, names, kind(t, show),
                layouts.FLAN.name if classification and show and t.shows_options else "",
                [] if t.inverted or not classification else list(options))
    return out


def coverage(task: Task) -> tuple[bool, list[int]]:
    """(whether the card's expressions go columnar, ids of the templates that do) under FLAN 2021's
    recipe (zero-shot, the FLAN layout): the measure reported for the catalog."""
    if task.type not in ("classification", "generation"):
        return False, []
    options = None
    if task.is_classification:
        try:
            options = task.static_options(task.features)
        except Exception:  # noqa: BLE001 - no options without data: per-row options do not go columnar
            return False, []
        if options is None:
            return False, []
    try:
        [compile_card_expression(e) for e in (*task.fields.values(), task.answer)]
    except Exception:  # noqa: BLE001 - _Decline or an expression the sandbox refuses
        return False, []
    templates = sorted(task.templates, key=lambda t: t.id)
    variants = _variants(task, templates, options, lambda t, show: "", eval_=False)
    return True, sorted({templates[j].id for j, _ in variants})
