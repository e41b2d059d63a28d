"""Card filters computed on whole Arrow columns instead of row by row.

``valid_indices`` evaluates a task's ``filter`` on every source row; at paper scale that per-row Jinja
work was a third of a cold build. The catalog's filters are almost all of a few shapes: integer
comparisons (``label >= 0``), membership in a list of constants (``answer in ['1', '2']``), lengths
of lists or strings (``answers | length > 0``, ``a | length == b | length``), non-blank text
(``text | trim | length > 0``), joined with ``and``. Those compile here to Arrow compute; anything
else returns None and keeps the exact row-by-row path.

The result must equal the row path's on every batch, so a compiled filter declines a batch (returns
None, and that batch goes row by row) whenever its columns could make the two differ: a null in a
column it reads, a missing column, a column type it was not written for, a comparison between an
integer column and a non-integer constant, or a string above ``MAX_BYTES`` (where the sandbox's size
checks could refuse the row path). ``trim`` is Python's ``str.strip()``: "non-blank" is "holds a
character that is not Python whitespace", matched with exactly that character class.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_BYTES = 100_000
# Every character for which Python's str.isspace() is true (what str.strip() removes).
_PY_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NON_BLANK = "[^" + "".join(c if c == "-" else ("\\x{%x}" % ord(c)) for c in _PY_SPACE) + "]"
_OPS = {"gt": "greater", "gteq": "greater_equal", "lt": "less", "lteq": "less_equal", "eq": "equal", "ne": "not_equal"}

Column = Callable[[pa.RecordBatch], pa.Array | None]


class _Decline(Exception):
    """This batch (or expression) is not one the columnar path gives the row path's answer for."""


def compile_filter(expr: str) -> Callable[[pa.RecordBatch], np.ndarray | None] | None:
    """A function batch -> bool mask (numpy) or None (do this batch row by row); None if not compilable."""
    import jinja2
    from jinja2 import nodes

    try:
        node = jinja2.Environment().parse("{{ " + expr + " }}").body[0].nodes[0]
        fn = _compile(node, nodes)
    except (_Decline, jinja2.TemplateSyntaxError, IndexError, AttributeError):
        return None

    def run(batch: pa.RecordBatch) -> np.ndarray | None:
        try:
            mask = fn(batch)
        except (_Decline, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    return run


def _column(node, nodes) -> Column:
    """A Name or Name.attr (struct field), or ``...[i]`` of a list column, as a column getter; declines
    on nulls, oversized strings and (for ``[i]``) a list too short, where the row path decides."""
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and type(node.arg.value) is int \
            and node.arg.value >= 0:
        return _item(_column(node.node, nodes), node.arg.value)
    path = []
    while isinstance(node, nodes.Getattr):
        path.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        raise _Decline()
    path.append(node.name)
    path.reverse()

    def get(batch: pa.RecordBatch) -> pa.Array:
        if path[0] not in batch.schema.names:
            raise _Decline()
        col = batch.column(path[0])
        for attr in path[1:]:
            if not pa.types.is_struct(col.type) or col.type.get_field_index(attr) < 0 or col.null_count:
                raise _Decline()
            col = pc.struct_field(col, attr)
        if col.null_count:
            raise _Decline()
        if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and len(col) \
                and pc.max(pc.binary_length(col)).as_py() > MAX_BYTES:
            raise _Decline()
        return col
    return get


def _item(lists: Column, i: int) -> Column:
    def get(batch: pa.RecordBatch) -> pa.Array:
        col = lists(batch)
        if not pa.types.is_list(col.type) or (len(col) and pc.min(pc.list_value_length(col)).as_py() <= i):
            raise _Decline()
        out = pc.list_element(col, i)
        if out.null_count:
            raise _Decline()
        return out
    return get


def _compile(node, nodes) -> Callable[[pa.RecordBatch], pa.Array]:
    if isinstance(node, nodes.And):
        left, right = _compile(node.left, nodes), _compile(node.right, nodes)
        return lambda b: pc.and_(left(b), right(b))
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:
        return _comparison(node.expr, node.ops[0].op, node.ops[0].expr, nodes)
    raise _Decline()


def _comparison(left, op: str, right, nodes) -> Callable[[pa.RecordBatch], pa.Array]:
    if op == "in" and isinstance(right, nodes.List) and all(isinstance(i, nodes.Const) for i in right.items):
        values = [i.value for i in right.items]
        col = _column(left, nodes)
        return lambda b: _is_in(col(b), values)
    if op not in _OPS:
        raise _Decline()
    kernel = getattr(pc, _OPS[op])
    if _is_filter(right, "length", nodes):  # x | length == y | length (a trim inside is not a column: declined)
        if not _is_filter(left, "length", nodes):
            raise _Decline()
        lcol, rcol = _column(left.node, nodes), _column(right.node, nodes)
        return lambda b: kernel(_length(lcol(b)), _length(rcol(b)))
    if not isinstance(right, nodes.Const) or type(right.value) is not int:
        raise _Decline()
    value = right.value
    if _is_filter(left, "length", nodes):
        return _length_comparison(left.node, op, kernel, value, nodes)
    col = _column(left, nodes)
    return lambda b: kernel(_integers(col(b)), value)


def _length_comparison(inner, op: str, kernel, value: int, nodes) -> Callable[[pa.RecordBatch], pa.Array]:
    """``inner | length`` against an integer, or ``inner | trim | length > 0`` (non-blank text)."""
    if _is_filter(inner, "trim", nodes):
        if (op, value) != ("gt", 0):
            raise _Decline()
        col = _column(inner.node, nodes)
        return lambda b: _non_blank(col(b))
    col = _column(inner, nodes)
    return lambda b: kernel(_length(col(b)), value)


def _is_filter(node, name: str, nodes) -> bool:
    """``... | name`` without arguments."""
    return isinstance(node, nodes.Filter) and node.name == name and not node.args and not node.kwargs


def _integers(col: pa.Array) -> pa.Array:
    if not pa.types.is_integer(col.type):
        raise _Decline()
    return col


def _length(col: pa.Array) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.utf8_length(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pc.list_value_length(col)
    raise _Decline()


def _non_blank(col: pa.Array) -> pa.Array:
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise _Decline()
    return pc.match_substring_regex(col, _NON_BLANK)


def _is_in(col: pa.Array, values: list) -> pa.Array:
    if all(type(v) is int for v in values) and pa.types.is_integer(col.type):
        return pc.is_in(col, value_set=pa.array(values, col.type))
    if all(type(v) is str for v in values) and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return pc.is_in(col, value_set=pa.array(values, col.type))
    raise _Decline()
