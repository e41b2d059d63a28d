"""Columnar rendering (pipeline/columnar_render.py) against the row path: the same part, byte for byte.

Parts are Arrow IPC files, whose bytes also record how buffers happen to be laid out (a sliced array's
offsets, a validity bitmap with no null in it); what reaches the published split is their content and
batch boundaries, so the parts are compared as the Parquet bytes they encode to, batch by batch.

Every catalog task whose card goes columnar is rendered both ways (train with both option variants and
repeated rows, eval with every template) on synthetic rows with odd strings and on real mirror rows where
the mirror has them; the part files and the statistics must be equal.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.catalog.recipes import PromptStyle
from flanbuild.catalog.registry import default_registry
from flanbuild.catalog.tasks import Task
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline import columnar_render
from flanbuild.pipeline import parts
from flanbuild.pipeline.render import RenderJob, write_part
from flanbuild.sources.loader import SplitData, load_split

MIRROR = Path(os.environ.get("FLANBUILD_DATA_DIR") or Path(__file__).resolve().parent.parent.parent / "shared/data/hub")
ODD = ["", " ", "\t\n", "plain", "  padded  ", "Ünïcödé ß İstanbul ΣΑΣ", "emoji 🇫🇷 ok", "\u3000wide space\u3000",
       "line\nbreak\r\n", "\x1c\x85\xa0nbsp\u2028", "{{ not a template }}", "'quotes\" and \\ slashes", "a" * 300,
       "MiXeD CaSe", "trailing dot.", "?", "\u200b zero width", "tab\tinside"]
REGISTRY = default_registry()
COLUMNAR = [n for n in sorted(REGISTRY.tasks) if columnar_render.coverage(REGISTRY.task(n))[0]]


def _value(feature, rng: random.Random, n_labels: int | None):
    if feature == "string":
        return rng.choice(ODD) + (rng.choice(ODD) if rng.random() < 0.3 else "")
    if isinstance(feature, str) and feature.startswith(("int", "uint")):
        return rng.randrange(-3, 1000)
    if isinstance(feature, str) and feature.startswith("float"):
        return rng.random()
    if isinstance(feature, dict) and "class_label" in feature:
        return rng.randrange(len(feature["class_label"]))
    if isinstance(feature, dict):
        return {k: _value(v, rng, n_labels) for k, v in feature.items()}
    raise AssertionError(f"no synthetic value for {feature!r}")


def _synthetic(task: Task, rows: int, seed: int = 0) -> SplitData:
    rng = random.Random(seed)
    records = [{name: _value(f, rng, None) for name, f in task.features.items()} for _ in range(rows)]
    table = pa.Table.from_pylist(records)
    if task.is_classification and not isinstance(task.options, str) and task.options:
        answer = task.answer.strip()
        if answer in table.column_names:  # a label within the static options
            labels = pa.array([rng.randrange(len(task.options)) for _ in range(rows)], pa.int64())
            table = table.set_column(table.column_names.index(answer), answer, labels)
    return SplitData("synthetic", task.features, table=table)


def _both(tmp_path: Path, job: RenderJob, data: SplitData):
    out = []
    for columnar in (False, True):
        path = tmp_path / f"part-{columnar}.parquet"
        try:
            stats = write_part(job, data, path, columnar=columnar)
        except FlanbuildError as e:
            out.append(("error", str(e)))
            continue
        out.append((_parquet_bytes(path), stats))
    return out


def _parquet_bytes(part: Path) -> bytes:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, parts.schema(part), compression="zstd") as w:
        for batch in parts.batches(part):
            w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _jobs(task: Task, indices: np.ndarray):
    yield RenderJob(task, "train", indices, seed=7, task_source="mix", style=PromptStyle(options=0.5))
    yield RenderJob(task, "train", indices, seed=8, task_source="mix")
    yield RenderJob(task, "eval", np.unique(indices), seed=7, task_source="mix", all_templates=True)


def _check(tmp_path: Path, task: Task, data: SplitData, rows: int) -> None:
    rng = np.random.default_rng(0)
    indices = np.sort(np.concatenate([np.arange(rows), rng.integers(0, rows, rows // 10)]))  # repeats: upsampling
    for job in _jobs(task, indices):
        row_path, columnar = _both(tmp_path, job, data)
        assert row_path == columnar, (task.name, job.role)


def test_coverage_counts_the_catalog():
    tasks = [REGISTRY.task(n) for n in sorted(REGISTRY.tasks)]
    covered = sum(len(columnar_render.coverage(t)[1]) for t in tasks)
    assert covered > 0 and len(COLUMNAR) > 0
    assert {"glue_sst2", "anli_r1", "wmt16_ende", "xsum"} <= set(COLUMNAR)


@pytest.mark.parametrize("name", COLUMNAR)
def test_synthetic_rows_render_the_same_both_ways(tmp_path, name):
    task = REGISTRY.task(name)
    _check(tmp_path, task, _synthetic(task, 300), 300)


@pytest.mark.parametrize("name", COLUMNAR)
def test_real_mirror_rows_render_the_same_both_ways(tmp_path, name):
    task = REGISTRY.task(name)
    data = None
    for role in ("train", "eval"):
        try:
            data = load_split(task, role, [MIRROR], allow_hub=False)
            break
        except Exception:  # noqa: BLE001 - not in this mirror
            continue
    if data is None:
        pytest.skip(f"{name}: no mirror data")
    from flanbuild.pipeline.examples import valid_indices

    indices = valid_indices(task, data.window(0, 3000))[:400]
    if not len(indices):
        pytest.skip("no usable rows")
    for job in _jobs(task, np.sort(np.concatenate([indices, indices[:40]]))):
        row_path, columnar = _both(tmp_path, job, data.window(0, 3000))
        assert row_path == columnar, (name, job.role)


@pytest.mark.parametrize("seed", range(6))
def test_property_odd_strings_nulls_and_bad_rows(tmp_path, seed):
    """Random odd strings, nulls (with and without ``nulls: skip``), labels outside the options, blank
    answers and large batches: the same bytes, statistics or error both ways."""
    rng = random.Random(seed)
    base = REGISTRY.task(rng.choice(["glue_sst2", "anli_r1", "tweet_eval_irony", "super_glue_wic"]))
    gen = REGISTRY.task(rng.choice(["xsum", "wmt16_ende", "aeslc", "gigaword"]))
    for task in (base, gen, dataclasses.replace(base, nulls="skip"), dataclasses.replace(gen, nulls="skip")):
        data = _synthetic(task, 500, seed)
        table = data.table
        if seed % 2:  # nulls in one text column
            col = next(c for c, f in task.features.items() if f == "string" or isinstance(f, dict)
                       and "class_label" not in f)
            values = table.column(col).to_pylist()
            values[rng.randrange(len(values))] = None
            table = table.set_column(table.column_names.index(col), col, pa.array(values, table.schema.field(col).type))
        if seed == 4 and task.is_classification:  # a label outside the options: the row path's error
            labels = table.column(task.answer.strip()).to_pylist()
            labels[rng.randrange(len(labels))] = 99
            table = table.set_column(table.column_names.index(task.answer.strip()), task.answer.strip(),
                                     pa.array(labels, pa.int64()))
        _check(tmp_path, task, SplitData("synthetic", task.features, table=table), 500)


def test_large_job_crosses_row_groups(tmp_path):
    task = REGISTRY.task("glue_sst2")
    data = _synthetic(task, 20_000, 3)
    indices = np.sort(np.concatenate([np.arange(20_000), np.arange(0, 20_000, 7)]))
    row_path, columnar = _both(tmp_path, RenderJob(task, "train", indices, seed=1, task_source="m"), data)
    assert row_path == columnar


def test_python_whitespace_class():
    import sys

    assert set(columnar_render.PY_SPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_expressions_equal_python():
    """Each supported card/template operation gives Python's (Jinja's) value on odd strings."""
    arr = pa.array(ODD + ["abc", "İ", "ǅ"])
    env = {"s": arr}
    cases = {"s | trim": str.strip, "s.strip()": str.strip, "s.lstrip()": str.lstrip, "s.rstrip()": str.rstrip,
             "s | lower": str.lower, "s | upper": str.upper, "s.lower()": str.lower,
             "s[:1]": lambda v: v[:1], "s[1:]": lambda v: v[1:], "s[-2:]": lambda v: v[-2:],
             "s[1:-1]": lambda v: v[1:-1], "s[-3:2]": lambda v: v[-3:2]}
    for expr, fn in cases.items():
        got = columnar_render.compile_card_expression(expr)(env).to_pylist()
        assert got == [fn(v) for v in arr.to_pylist()], expr
    lengths = columnar_render.compile_card_expression("s | length")(env).to_pylist()
    assert lengths == [len(v) for v in arr.to_pylist()]


def test_the_columnar_path_is_taken(tmp_path, monkeypatch):
    """The differential tests compare two different paths: clean batches never fall back to rows."""
    plans = []
    run = columnar_render.Plan.run

    def spy(self, *args, **kwargs):
        plans.append(self)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(columnar_render.Plan, "run", spy)
    for name in ("glue_sst2", "anli_r1", "xsum", "wmt16_ende"):
        task = REGISTRY.task(name)
        table = _synthetic(task, 200).table
        for col, f in task.features.items():  # no blank answers or nulls: nothing for the row path
            if f == "string":
                table = table.set_column(table.column_names.index(col), col, pa.array([f"text {i}" for i in range(200)]))
        write_part(RenderJob(task, "train", np.arange(200), 1, "m"), SplitData("s", task.features, table=table),
                   tmp_path / "p.arrow")
    assert len(plans) == 4 and all(p.declined == 0 for p in plans)
