"""--engine dask without a shared filesystem: workers that cannot open any of the client's paths.

Each Dask worker runs in a scratch directory of its own, and a worker plugin makes every way of opening
a file (builtins.open, os.open/stat/scandir, pyarrow's Parquet/JSON/CSV readers and writers, memory maps)
raise for paths under the test's temporary directory, where the client keeps the catalog, the source
data (Parquet files and JSONL), the staging directory and the render cache. The build must still give the
local engine's bytes, and a warm cache must send nothing to a worker.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import memory_registry, toy_build

distributed = pytest.importorskip("dask.distributed")


class _Guard(distributed.WorkerPlugin):
    """In each worker: its own working directory, and no access to ``forbidden``; counts rendered shards."""

    name = "flanbuild-no-client-paths"

    def __init__(self, forbidden: str):
        self.forbidden = forbidden

    def setup(self, worker):
        import builtins
        import io
        import tempfile

        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson
        import pyarrow.parquet as pq

        state = self.state = worker._flanbuild_guard = {"attempts": [], "rendered": 0}
        forbidden = self.forbidden
        os.chdir(tempfile.mkdtemp(prefix="flanbuild-worker-"))

        def check(path):
            try:
                text = os.fsdecode(os.fspath(path))
            except TypeError:
                return  # a file object or an Arrow stream, not a path
            if os.path.abspath(text).startswith(forbidden):
                state["attempts"].append(text)
                raise PermissionError(f"worker may not open the client's path {text}")

        def guarded(fn):
            def wrapper(path, *args, **kwargs):
                check(path)
                return fn(path, *args, **kwargs)
            return wrapper

        for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                             (os, "scandir"), (os, "listdir"), (pa, "memory_map"), (pa, "OSFile"),
                             (pa, "input_stream"), (pa, "output_stream"), (pq, "read_table"),
                             (pq, "read_schema"), (pajson, "read_json"), (pacsv, "read_csv")):
            setattr(module, name, guarded(getattr(module, name)))

        class ParquetFile(pq.ParquetFile):
            def __init__(self, source, *args, **kwargs):
                check(source)
                super().__init__(source, *args, **kwargs)

        class ParquetWriter(pq.ParquetWriter):
            def __init__(self, where, *args, **kwargs):
                check(where)
                super().__init__(where, *args, **kwargs)

        pq.ParquetFile, pq.ParquetWriter = ParquetFile, ParquetWriter

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else str(key)
        if finish == "memory" and name.startswith("render_remote"):
            self.state["rendered"] += 1


def _guard_state(dask_worker):
    return dict(dask_worker._flanbuild_guard)


def _try_to_read(path, dask_worker):
    try:
        open(path, "rb").close()
    except PermissionError:
        dask_worker._flanbuild_guard["attempts"].remove(path)  # this probe's own, not the build's
        return "refused"
    return "read"


@pytest.fixture
def parquet_catalog(toy_catalog: Path) -> Path:
    """The toy catalog with most tasks reading Parquet files (paths on the client) instead of JSONL."""
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    for card in (toy_catalog / "tasks").glob("*.yaml"):
        if card.stem in ("clusters", "sent_b"):  # sent_b stays JSONL (an in-memory table on the client)
            continue
        for data in (toy_catalog / "data").glob(f"{card.stem}_*.jsonl"):
            pq.write_table(pajson.read_json(data), data.with_suffix(".parquet"), row_group_size=16)
        card.write_text(card.read_text().replace(".jsonl", ".parquet"))
    return toy_catalog


@pytest.fixture
def small_shards(monkeypatch):
    from flanbuild.pipeline import engine

    monkeypatch.setattr(engine, "SHARD_ROWS", 40)
    monkeypatch.setattr(engine, "SERIAL_BELOW", 0)


@pytest.fixture
def isolated_cluster(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test file
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    client.register_plugin(_Guard(str(tmp_path.resolve())))
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _bytes(result):
    return {f["path"]: (result.out / f["path"]).read_bytes() for f in result.manifest["files"]}


def test_dask_workers_without_the_clients_files_give_the_same_bytes(parquet_catalog, tmp_path, small_shards,
                                                                   isolated_cluster):
    from flanbuild.catalog.recipes import PromptStyle, Recipe
    from flanbuild.catalog.registry import Registry

    cluster, client = isolated_cluster
    registry = Registry()
    registry.load_catalog(parquet_catalog)
    # the guard is real: a worker cannot read a client file
    probe = parquet_catalog / "data" / "para_a_train.parquet"
    assert set(client.run(_try_to_read, str(probe)).values()) == {"refused"}

    recipe = replace(Recipe(), prompt=PromptStyle(few_shot=0.5, option_layouts=True))  # exemplars ship too
    kw = dict(mix={"train_size": 900}, recipe=recipe)
    local = toy_build(registry, tmp_path / "local", workers=1, use_cache=False, **kw)
    cold = toy_build(registry, tmp_path / "cold", engine="dask", scheduler=cluster.scheduler_address,
                     cache_dir=tmp_path / "cache", **kw)
    assert cold.shards > 10 and cold.cached_shards == 0
    assert cold.manifest["fingerprint"] == local.manifest["fingerprint"]
    assert _bytes(cold) == _bytes(local)
    states = client.run(_guard_state).values()
    assert [a for s in states for a in s["attempts"]] == []
    rendered = sum(s["rendered"] for s in states)
    assert rendered == cold.shards  # every shard was rendered by a worker, none by the client

    # the cache lives on the client: a warm build sends nothing to the workers and gives the same bytes
    warm = toy_build(registry, tmp_path / "warm", engine="dask", scheduler=cluster.scheduler_address,
                     cache_dir=tmp_path / "cache", **kw)
    assert warm.cached_shards == warm.shards
    assert _bytes(warm) == _bytes(local)
    assert sum(s["rendered"] for s in client.run(_guard_state).values()) == rendered


def test_shipped_rows_read_like_the_source(parquet_catalog):
    """A shard's shipped rows give the same (index, row) stream as the files, repeats and a window included."""
    from flanbuild.catalog.registry import Registry
    from flanbuild.pipeline.remote import ship
    from flanbuild.pipeline.render import RenderJob
    from flanbuild.sources.loader import load_split

    registry = Registry()
    registry.load_catalog(parquet_catalog)
    task = registry.task("sent_a")
    data = load_split(task, "train", []).window(7, -11)
    indices = np.sort(np.array([0, 3, 3, 3, 17, 40, 41, 200, 200, 281], dtype=np.int64))
    job = RenderJob(task, "train", indices, 0, "m", exemplars=np.array([5, 6, 250], dtype=np.int64))
    shipped_job, rows = ship(job, data)
    assert rows.table.num_rows == len(np.unique(np.concatenate([indices, job.exemplars])))

    def stream(d, idx):
        return [(int(i), r) for chunk, rs in d.rows(idx, batch_rows=4) for i, r in zip(chunk, rs)]

    assert stream(rows, indices) == stream(data, indices)
    assert stream(rows, job.exemplars) == stream(data, job.exemplars)
    with pytest.raises(Exception, match="not shipped"):
        list(rows.rows(np.array([1])))


class _DieOnce(distributed.WorkerPlugin):
    """The first worker to start rendering a shard dies at once (os._exit), taking its scattered rows along."""

    name = "flanbuild-die-once"

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else str(key)
        if finish == "executing" and name.startswith("render_remote"):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)


def test_a_shard_whose_worker_dies_is_shipped_again(toy_registry, tmp_path, small_shards):
    import cloudpickle

    local = toy_build(toy_registry, tmp_path / "local", workers=1, use_cache=False, mix={"train_size": 300})
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=50) as cluster, distributed.Client(cluster) as client:
            client.register_plugin(_DieOnce(str(tmp_path / "died")))
            dask = toy_build(toy_registry, tmp_path / "dask", engine="dask", scheduler=cluster.scheduler_address,
                             use_cache=False, mix={"train_size": 300})
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "died").exists()  # a worker did die mid-build
    assert _bytes(dask) == _bytes(local)


def test_in_memory_sources_ship_only_the_shards_rows(tmp_path, small_shards):
    """Python API tables (source.tables) are not sent whole with every shard, and give the local bytes."""
    from flanbuild.builder import BuildConfig, build
    from flanbuild.pipeline import engine
    from flanbuild.pipeline.mixer import MixConfig
    from flanbuild.pipeline.remote import ship
    from flanbuild.pipeline.render import RenderJob
    from flanbuild.sources.loader import load_split

    registry = memory_registry(200)
    task = registry.task("mem_qa")
    job, rows = ship(RenderJob(task, "train", np.arange(10, 20), 0, "m"), load_split(task, "train", []))
    assert job.task.source.tables == {} and rows.table.num_rows == 10

    def one(out, **kw):
        return build(BuildConfig(out=tmp_path / out, mix=MixConfig(heldout=("held",)), plots=False, **kw),
                     registry=registry)

    local = one("local", workers=1, use_cache=False)
    dask = one("dask", engine="dask", workers=1, use_cache=False)
    assert dask.shards == local.shards > 2 and engine.SHARD_ROWS == 40
    assert _bytes(dask) == _bytes(local)
