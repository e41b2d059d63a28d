"""From a source row to a task example: fields, answer options and answer, via the card's expressions.

This is the "task" stage between source rows and template rendering. It is where a card's mistakes
show up on real data (an answer index outside the options, a field expression that fails), so every
error names the task, the card field and the row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jinja2
import numpy as np

from flanbuild.sandbox import fastpath
from flanbuild.pipeline import cachefile
from flanbuild.catalog import schema
from flanbuild.errors import FlanbuildError
from flanbuild.catalog.tasks import Task


@dataclass(frozen=True)
class Example:
    """One source row in task terms: what templates see, the answer options, and the references."""

    context: dict[str, Any]  # the card's fields + answer (+ options for classification)
    options: list[str]  # [] for generation tasks
    references: list[str]  # all acceptable targets; the first is the answer


class ExampleMapper:
    """Maps source rows of one task split to Examples (built once per split, applied per row)."""

    def __init__(self, task: Task, features: schema.Features | None):
        self.task = task
        self.static_options = task.static_options(features) if task.is_classification else None
        self._fields = [(name, self._getter(expr)) for name, expr in task.fields.items()]
        self._answer = self._getter(task.answer)
        self._options = self._getter(task.options) if isinstance(task.options, str) else None
        self._filter = fastpath.evaluator(task.filter, extended=True) if task.filter else None

    @staticmethod
    def _getter(expr: str):
        """Plain column names skip Jinja (same result, several times faster); the rest are compiled."""
        expr = expr.strip()
        evaluate = fastpath.evaluator(expr, extended=True)
        if expr.isidentifier():  # a plain column: a dict lookup (the evaluator only for a missing column's error)
            return lambda row: row[expr] if expr in row else evaluate(row)
        return evaluate

    def _eval(self, getter, row: dict, what: str, where: str) -> Any:
        try:
            value = getter(row)
        except FlanbuildError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a card expression is a card/data error
            raise FlanbuildError(f"task {self.task.name}: {what} failed on {where}: {_describe(e)}",
                                 where=self.task.origin or None) from None
        if isinstance(value, jinja2.Undefined):
            raise FlanbuildError(f"task {self.task.name}: {what} is undefined on {where} (a missing column, key "
                                 f"or index? columns: {', '.join(row)})", where=self.task.origin or None)
        return value

    def keep(self, row: dict, where: str) -> bool:
        """Whether the card's filter keeps this row."""
        return self._filter is None or bool(self._eval(self._filter, row, "filter", where))

    def __call__(self, row: dict, where: str) -> Example | None:
        """The Example for a row, or None when the row has no usable answer (e.g. no reference)."""
        ctx = {name: self._eval(get, row, f"field {name!r}", where) for name, get in self._fields}
        if None in ctx.values() and self.task.type != "prompted":  # a null text field: the card decides (never rendered as "None")
            name = next(n for n, v in ctx.items() if v is None)
            return self._null(f"field {name!r}", where)
        if self.task.type == "prompted":  # the template itself renders input and target from the raw row
            return Example(ctx, [], [])
        answer = self._eval(self._answer, row, "answer", where)
        if answer is None:
            return self._null("answer", where)
        if not self.task.is_classification:
            refs = [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]
            refs = [r for r in refs if r.strip()]
            if not refs:
                return None
            ctx["answer"] = refs[0]
            return Example(ctx, [], refs)
        options = self.static_options
        if options is None:
            options = self._eval(self._options, row, "options", where)
            if not isinstance(options, (list, tuple)) or not options:
                raise FlanbuildError(f"task {self.task.name}: options expression gave {options!r} on {where}, "
                                     f"not a non-empty list", where=self.task.origin or None)
            options = [str(o) for o in options]
        text = self._answer_text(answer, options, where)
        ctx["options"] = options
        ctx["answer"] = text
        return Example(ctx, options, [text])

    def _null(self, what: str, where: str) -> None:
        """A row with a null field: dropped when the card says ``nulls: skip``, else a one-line error."""
        if getattr(self.task, "nulls", "error") == "skip":
            return None
        raise FlanbuildError(f"task {self.task.name}: {what} is null on {where} (add 'nulls: skip' to the card to "
                             f"drop such rows)", where=self.task.origin or None)

    def _answer_text(self, answer: Any, options: list[str], where: str) -> str:
        if isinstance(answer, bool):
            answer = int(answer)
        if isinstance(answer, int):
            if 0 <= answer < len(options):
                return options[answer]
            raise FlanbuildError(f"task {self.task.name}: answer {answer} on {where} is outside the "
                                 f"{len(options)} options {options} (add a filter for unlabelled rows?)",
                                 where=self.task.origin or None)
        if str(answer) in options:
            return str(answer)
        raise FlanbuildError(f"task {self.task.name}: answer {answer!r} on {where} is not one of the options "
                             f"{options}", where=self.task.origin or None)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def valid_indices(task: Task, data, mapper: ExampleMapper | None = None, cache_dir=None,
                  rows: tuple[int, int] | None = None):
    """Indices of the rows the card's filter keeps (all rows when there is no filter).

    Sampling happens over these indices, so a task's row count in the mixture is exact even when the
    source has unlabelled rows. With ``cache_dir``, the result is kept by (data identity, filter).
    ``rows`` = (start, stop) filters only those rows (a worker's piece of a task, never cached); the
    indices and the rows named in errors are still the data's own.
    """
    if not task.filter:
        return np.arange(*(rows or (0, data.num_rows)), dtype=np.int64)
    cached = _filter_cache_path(task, data, cache_dir) if rows is None else None
    hit = _read_filter_cache(cached, data.num_rows) if cached is not None else None
    if hit is not None:
        return hit
    from flanbuild.sources.loader import to_rows

    from flanbuild.pipeline.columnar import compile_filter

    mapper = mapper or ExampleMapper(task, data.features)
    columnar = compile_filter(task.filter)  # Arrow compute where it gives the row path's answer; else row by row
    keep = []
    offset = rows[0] if rows else 0
    for batch in (data.window(*rows) if rows else data).batches():
        mask = columnar(batch) if columnar is not None else None
        if mask is not None:
            keep.extend((offset + np.flatnonzero(mask)).tolist())
            offset += batch.num_rows
            continue
        for i, row in enumerate(to_rows(batch, data.origin, offset)):
            if mapper.keep(row, f"row {offset + i} of {data.origin}"):
                keep.append(offset + i)
        offset += batch.num_rows
    result = np.asarray(keep, dtype=np.int64)
    if cached is not None:
        store_indices(task, data, cache_dir, result)
    return result


def store_indices(task: Task, data, cache_dir, result: np.ndarray) -> None:
    """Keep a task's usable rows in the filter cache (what cached_indices reads)."""
    path = _filter_cache_path(task, data, cache_dir)
    if path is not None:
        body = result.astype("<i8").tobytes()
        cachefile.write(path, _FILTER_MAGIC + hashlib.sha256(body).digest() + body)


_FILTER_MAGIC = b"flanbuild-filter-v1\n"


def _filter_cache_path(task: Task, data, cache_dir):
    if cache_dir is None or not task.filter:
        return None
    key = hashlib.sha256(f"{data.fingerprint()}\n{task.filter}".encode()).hexdigest()
    return cache_dir / "filters" / f"{key}.idx"


def cached_indices(task: Task, data, cache_dir) -> np.ndarray | None:
    """valid_indices from the filter cache, or None (a task without a filter needs no cache)."""
    path = _filter_cache_path(task, data, cache_dir)
    return _read_filter_cache(path, data.num_rows) if path is not None else None


def _read_filter_cache(path, num_rows: int) -> np.ndarray | None:
    """A cached filter result, verified (content hash, sorted distinct in-range indices); None when absent
    or not trustworthy (a damaged entry is removed and the filter recomputed)."""
    try:
        if not path.is_file() or path.is_symlink():
            return None
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(_FILTER_MAGIC)
    body = blob[head + 32:]
    ok = (blob[:head] == _FILTER_MAGIC and hashlib.sha256(body).digest() == blob[head:head + 32]
          and len(body) % 8 == 0)
    if ok:
        result = np.frombuffer(body, dtype="<i8").astype(np.int64)
        if len(result) == 0 or (result[0] >= 0 and result[-1] < num_rows and bool(np.all(np.diff(result) > 0))):
            cachefile.touch(path)
            return result
    try:
        path.unlink()
    except OSError:
        pass
    return None
