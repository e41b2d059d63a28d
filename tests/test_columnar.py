"""Columnar card filters (pipeline/columnar.py) give the row path's answer on every row, or decline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flanbuild.pipeline.columnar import compile_filter
from flanbuild.sandbox import fastpath

TEXTS = ["a", "", " ", "\t\n", "\x1c", "\u3000x", "\xa0", "\u200b", " ok ", "\x85", "\u2028", "é"]
BATCH = pa.record_batch({
    "label": pa.array([0, -1, 1, 2, 0, -1, 3, 1, 0, 2, 1, -1], pa.int64()),
    "text": pa.array(TEXTS),
    "answer": pa.array(["1", "2", "3", "1", "x", "2", "1", "", "2", "3", "1", "2"]),
    "answers": pa.array([[], ["a"], ["a", "b"], [], ["c"], [], ["d"], [], [], ["e"], [], ["f"]], pa.list_(pa.string())),
    "translation": pa.array([{"en": t, "fr": "x"} for t in TEXTS]),
    "full": pa.array([[t, t + "yz"] for t in TEXTS], pa.list_(pa.string())),
})


@pytest.mark.parametrize("expr", [
    "label >= 0", "label != 2", "label >= 0 and answers | length == 2", "text | trim | length > 0",
    "answer in ['1', '2']", "label in [1, 2]", "answers | length > 0", "text | length > 0",
    "translation.en | trim | length > 0 and translation.fr | trim | length > 0",
    "label >= 0 and text | trim | length > 0",
    "answers | length == text | length", "answers | length > 0 and answers | length < text | length",
    "full[0] | trim | length > 0 and full[1] | length > 1",
])
def test_columnar_filter_equals_the_row_path(expr):
    run = compile_filter(expr)
    assert run is not None, expr
    evaluate = fastpath.evaluator(expr, extended=True)
    expected = np.array([bool(evaluate(row)) for row in BATCH.to_pylist()])
    assert run(BATCH).tolist() == expected.tolist()


@pytest.mark.parametrize("expr", ["label | string == '1'", "text | trim | length > 3", "label > 0.5", "label or text",
                                  "text | trim | length == answers | length", "full[-1] | length > 0",
                                  "missing(label)"])
def test_other_shapes_are_not_compiled(expr):
    assert compile_filter(expr) is None


def test_batches_that_could_differ_are_declined():
    run = compile_filter("label >= 0")
    assert run(pa.record_batch({"label": pa.array([1, None])})) is None  # a null: the row path decides
    assert run(pa.record_batch({"other": pa.array([1])})) is None  # a missing column: the row path's error
    assert run(pa.record_batch({"label": pa.array(["1"])})) is None  # not an integer column
    assert compile_filter("text | trim | length > 0")(pa.record_batch({"text": pa.array(["x" * 200_000])})) is None
    short = pa.record_batch({"l": pa.array([["a"], []], pa.list_(pa.string()))})
    assert compile_filter("l | length > 0 and l[0] | trim | length > 0")(short) is None  # no l[0]: the row path
