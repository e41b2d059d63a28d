"""Shards, worker counts, the render cache and the Dask engine all give the same bytes."""

import numpy as np
import pytest

from flanbuild.pipeline import engine
from flanbuild.builder import BuildConfig, build
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.catalog.registry import Registry
from flanbuild.pipeline.render import RenderJob
from conftest import toy_build, write


def test_split_job_cuts_at_fixed_places_never_inside_repeats(toy_registry):
    idx = np.sort(np.concatenate([np.arange(100), np.repeat([40, 41], 30)]))
    job = RenderJob(toy_registry.task("sent_a"), "train", idx, 0, "m")
    pieces = engine.split_job(job, shard_rows=25)
    assert np.array_equal(np.concatenate([p.indices for p in pieces]), idx)
    for a, b in zip(pieces, pieces[1:]):
        assert a.indices[-1] != b.indices[0]  # a run of repeats is never split
    assert [len(p.indices) for p in pieces] == [len(p.indices) for p in engine.split_job(job, shard_rows=25)]


def test_cache_key_does_not_change_when_a_template_property_is_read(toy_registry, tmp_path):
    """Keys hash the templates' declared fields, not cached properties that appear once computed."""
    from flanbuild.sources.loader import load_split

    task = toy_registry.task("sent_a")
    data = load_split(task, "train", [])
    job = RenderJob(task, "train", np.arange(5), 0, "m")
    before = engine.cache_key(job, data)
    assert all(isinstance(t.shows_options, bool) for t in task.templates)  # fills the cached property
    assert engine.cache_key(job, data) == before


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(engine, "SHARD_ROWS", 40)
    monkeypatch.setattr(engine, "SERIAL_BELOW", 0)


def _build(registry, out, **kw):
    return toy_build(registry, out, mix={"train_size": 900}, **kw)


def _bytes(result):
    return {f["path"]: (result.out / f["path"]).read_bytes() for f in result.manifest["files"]}


def test_same_bytes_for_any_worker_count_and_cache_state(toy_registry, tmp_path, small_shards):
    one = _build(toy_registry, tmp_path / "one", workers=1, use_cache=False)
    two = _build(toy_registry, tmp_path / "two", workers=2, use_cache=False)
    assert one.shards > 10
    assert _bytes(one) == _bytes(two)
    cold = _build(toy_registry, tmp_path / "cold", workers=2, cache_dir=tmp_path / "cache")
    warm = _build(toy_registry, tmp_path / "warm", workers=1, cache_dir=tmp_path / "cache")
    assert cold.cached_shards == 0 and warm.cached_shards == warm.shards
    assert _bytes(cold) == _bytes(warm) == _bytes(one)


def test_split_files_written_in_parallel_are_the_same_files_and_card(toy_registry, tmp_path, small_shards, monkeypatch):
    """With workers, filtering, rendering, the eval index and the split files (one process per file, its
    statistics merged) run in processes: the same files and card as one process."""
    from flanbuild.output import plots

    calls = []
    real = engine.process_map
    monkeypatch.setattr(engine, "process_map",
                        lambda fn, items, *a, **k: calls.append(getattr(fn, "func", fn).__name__) or real(fn, items, *a, **k))
    real_start = plots.start_composition
    monkeypatch.setattr(plots, "start_composition", lambda *a: calls.append("start_composition") or real_start(*a))
    one = _build(toy_registry, tmp_path / "one", workers=1, use_cache=False, shard_rows=170, plots=True)
    assert not calls
    two = _build(toy_registry, tmp_path / "two", workers=2, use_cache=False, shard_rows=170, plots=True)
    # card filters, rendering, the eval index and the split files: each stage ran in worker processes, and
    # the composition picture was drawn in a thread while the files were written
    assert calls == ["_filter_rows", "run_shard", "normalised_inputs", "start_composition", "_write_file"]
    assert len(one.manifest["files"]) >= 6
    assert _bytes(one) == _bytes(two)
    for name in ("README.md", "mixture.json"):
        assert (one.out / name).read_text().replace("/one", "/two") == (two.out / name).read_text()
    for name in ("composition.png", "lengths.png"):
        assert (one.out / name).read_bytes() == (two.out / name).read_bytes()


def test_a_failed_write_leaves_nothing_while_the_composition_is_drawn(toy_registry, tmp_path, monkeypatch):
    """The picture thread draws into the staging directory: a build that fails meanwhile waits for it,
    then removes the staging directory, and OUT is not created."""
    import threading

    from flanbuild import builder
    from flanbuild.errors import FlanbuildError
    from flanbuild.output import plots

    drawing, finish = threading.Event(), threading.Event()
    real_draw = plots.composition_png

    def slow_draw(path, manifest):
        drawing.set()
        finish.wait(10)
        return real_draw(path, manifest)

    def failing_write(stage, writes, config, log, meanwhile):  # workers start writing, and one fails
        meanwhile()
        assert drawing.wait(10)
        threading.Timer(0.2, finish.set).start()  # the picture is still being drawn when the build fails
        raise FlanbuildError("disk full")

    monkeypatch.setattr(plots, "composition_png", slow_draw)
    monkeypatch.setattr(builder, "_write_files", failing_write)
    with pytest.raises(FlanbuildError, match="disk full"):
        _build(toy_registry, tmp_path / "out", workers=2, use_cache=False, plots=True)
    assert finish.is_set() and sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # the catalog only


def test_the_fork_server_starts_with_a_build_that_may_use_workers(toy_registry, tmp_path, monkeypatch):
    """On a first build of OUT, its import of the builder overlaps the catalog and the sources instead of
    delaying the first pool."""
    started = []
    monkeypatch.setattr(engine, "start_fork_server", started.append)
    _build(toy_registry, tmp_path / "one", workers=1, use_cache=False)
    assert started == []
    _build(toy_registry, tmp_path / "two", workers=2, use_cache=False)
    assert started == [["flanbuild.builder"]]
    _build(toy_registry, tmp_path / "two", workers=2, use_cache=False)  # a rebuild: only if a pool is needed
    assert started == [["flanbuild.builder"]]


def test_shards_of_a_task_are_dealt_in_runs_of_consecutive_shards(toy_registry):
    """Taken in turn, each worker tends to get the shard after its last one (a continued Parquet read)."""
    task = toy_registry.task("sent_a")
    job = RenderJob(task, "train", np.arange(95), 0, "m")
    shards = [engine.Shard(piece, None, None, i) for i, piece in enumerate(engine.split_job(job, shard_rows=10))]
    assert [s.number for s in engine._largest_first(shards, 1)] == list(range(9)) + [9]
    assert [s.number for s in engine._largest_first(shards, 2)] == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]  # 9 is smaller: last
    assert [s.number for s in engine._largest_first(shards, 3)] == [0, 4, 8, 1, 5, 2, 6, 3, 7, 9]


def test_editing_one_template_rerenders_only_that_task(toy_catalog, tmp_path, small_shards):
    registry = Registry()
    registry.load_catalog(toy_catalog)
    first = _build(registry, tmp_path / "a", workers=1, cache_dir=tmp_path / "cache")
    write(toy_catalog / "templates" / "gen_a.yaml",
          "task: gen_a\ntemplates:\n  - {id: 1, input: 'Echo back: {{text}}', target: '{{answer}}'}\n"
          "  - {id: 2, input: 'Repeat after me: {{text}}', target: '{{answer}}'}\n")
    edited = Registry()
    edited.load_catalog(toy_catalog)
    second = _build(edited, tmp_path / "b", workers=1, cache_dir=tmp_path / "cache")
    gen_shards = -(-second.manifest["tasks"]["gen_a"]["requested"] // 40)
    assert second.cached_shards == second.shards - gen_shards
    assert first.manifest["tasks"]["sent_a"] == second.manifest["tasks"]["sent_a"]
    assert first.manifest["fingerprint"] != second.manifest["fingerprint"]


@pytest.mark.slow
def test_dask_engine_same_bytes(toy_registry, tmp_path, small_shards):
    pytest.importorskip("dask.distributed")
    local = _build(toy_registry, tmp_path / "local", workers=1, use_cache=False)
    dask = _build(toy_registry, tmp_path / "dask", workers=2, engine="dask", use_cache=False)
    assert _bytes(local) == _bytes(dask)


def test_clusters_filter(toy_registry, tmp_path):
    r = build(BuildConfig(out=tmp_path / "o", clusters=("toy_nli", "toy_gen"), mix=MixConfig(heldout=("toy_nli",))),
              registry=toy_registry)
    assert sorted(r.manifest["tasks"]) == ["gen_a", "nli_a", "nli_b"]


def test_rows_skips_to_the_first_index_in_files_and_tables(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flanbuild.sources.loader import SplitData

    table = pa.table({"x": list(range(10000))})
    pq.write_table(table.slice(0, 6000), tmp_path / "a.parquet", row_group_size=1000)
    pq.write_table(table.slice(6000), tmp_path / "b.parquet", row_group_size=700)
    splits = [SplitData("p", {}, parquet_files=[tmp_path / "a.parquet", tmp_path / "b.parquet"]), SplitData("t", {}, table=table)]
    for split in splits:
        for idx in (np.array([0, 5, 5, 999, 1000, 5999, 6000, 9999]), np.array([7000, 7000, 7001]), np.arange(2500, 8000, 3)):
            got = [(int(i), r["x"]) for chunk, rows in split.rows(idx, batch_rows=256) for i, r in zip(chunk, rows)]
            assert got == [(int(i), int(i)) for i in idx]
    # a shard late in a file reads only the row groups it needs
    seen = [offset for offset, _ in splits[0]._batches_from(9500, 256)]
    assert min(seen) >= 9500 - 700


def test_default_workers_never_exceed_idle_cores_or_the_work(monkeypatch):
    """The rule behind --workers 0: idle cores (cores minus the 1-minute load), one per ROWS_PER_WORKER rows."""
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert engine.default_workers(10 * engine.ROWS_PER_WORKER) == 8  # idle machine, plenty of rows
    assert engine.default_workers(engine.ROWS_PER_WORKER - 1) == 1  # too little work to share
    assert engine.default_workers(3 * engine.ROWS_PER_WORKER) == 4
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (7.6, 7.0, 6.0))  # the cores are taken
    assert engine.default_workers(10 * engine.ROWS_PER_WORKER) == 1
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    assert engine.default_workers(10 * engine.ROWS_PER_WORKER) == 3


def test_a_row_by_row_filter_is_cut_into_pieces_for_the_workers(toy_registry, tmp_path, monkeypatch):
    """The pieces give the whole filter's rows (and its cache entry); an error names the data's own row."""
    from dataclasses import replace

    from flanbuild import builder
    from flanbuild.errors import FlanbuildError
    from flanbuild.pipeline.columnar import compile_filter
    from flanbuild.pipeline.examples import cached_indices, valid_indices
    from flanbuild.sources.loader import load_split

    expr = "(text.split() | last | int) % 3 != 0"
    assert compile_filter(expr) is None  # row by row
    task = replace(toy_registry.task("sent_a"), filter=expr)
    data = load_split(task, "train", [])
    monkeypatch.setattr(engine, "SERIAL_BELOW", 0)
    monkeypatch.setattr(builder, "FILTER_PIECE_ROWS", 70)
    pieces = []
    real = engine.process_map
    monkeypatch.setattr(engine, "process_map", lambda fn, items, *a, **k: pieces.extend(items) or real(fn, items, *a, **k))
    columnar = toy_registry.task("sent_b")
    rows = builder._usable_rows([(columnar, load_split(columnar, "train", [])), (task, data)],
                                BuildConfig(out=tmp_path / "o", workers=2), tmp_path / "cache")
    assert [(t.name, r) for t, _, r in pieces] == [("sent_a", (0, 70)), ("sent_a", (70, 140)), ("sent_a", (140, 210)),
                                                   ("sent_a", (210, 280)), ("sent_a", (280, 300)), ("sent_b", (0, 60))]
    assert rows["sent_a"].tolist() == [i for i in range(300) if i % 3] == valid_indices(task, data).tolist()
    assert cached_indices(task, data, tmp_path / "cache").tolist() == rows["sent_a"].tolist()
    failing = replace(task, filter="1 // ((text.split() | last | int) - 150) >= 0")
    with pytest.raises(FlanbuildError, match="row 150 of"):
        valid_indices(failing, data, rows=(140, 210))


def test_only_a_part_the_cache_keeps_is_compressed(toy_registry, tmp_path):
    """A part that lives only while the build runs skips LZ4 (time); a cached one is compressed (disk)."""
    from flanbuild.pipeline import parts
    from flanbuild.sources.loader import load_split

    task = toy_registry.task("sent_a")
    data = load_split(task, "train", [])
    job = RenderJob(task, "train", np.repeat(np.arange(300), 20), 0, "m")
    plain = engine.run_shard(engine.Shard(job, data, tmp_path / "plain.arrow", 0))
    kept = engine.run_shard(engine.Shard(job, data, tmp_path / "kept.arrow", 0, "k" * 64, tmp_path / "cache"))
    assert [b.to_pylist() for b in parts.batches(plain.path)] == [b.to_pylist() for b in parts.batches(kept.path)]
    assert kept.path.stat().st_size * 2 < plain.path.stat().st_size
