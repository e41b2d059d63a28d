"""Running render work: shards of jobs, on this machine (1..N processes) or on a Dask cluster, with a cache.

A render job is split into shards of about ``SHARD_ROWS`` selected rows, always at the same places
(never between two repeats of one source row), so the shards, and therefore the bytes of the mixture,
are the same whatever runs them: 1 worker or 16, a process pool or a Dask cluster, a cold or a warm
cache. Each shard is rendered into its own part (pipeline/parts.py); the cache keeps parts under a key that
covers everything that decides their bytes (data identity, task card and templates, rows, seed,
prompt style, flanbuild and library versions), so a rebuild after editing one template re-renders only
that task.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline import cachefile, parts
from flanbuild.pipeline.writer import sha256_file
from flanbuild.pipeline.render import RenderJob, RenderStats, write_part
from flanbuild.sources.loader import SplitData

SHARD_ROWS = 50_000
SERIAL_BELOW = 20_000  # fewer selected rows than this: a process pool costs more than it saves
# A worker process costs ~0.5 s to start and import (0.69 s for one, 1.09 s for two, measured on 2 busy
# cores) and renders ~40-60k rows/s: another worker pays for itself only with ~100k rows to share.
ROWS_PER_WORKER = 100_000
SHIP_ATTEMPTS = 3  # --engine dask: a shard is shipped again when its worker dies, this many times in all


def default_workers(total_rows: int) -> int:
    """Render processes when the user gives none: never more than the idle cores, nor than the work
    can keep busy. On a machine whose cores are taken by other jobs this is 1, which is not slower
    than one worker (more processes would only contend for the same cores)."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        idle = cores
    by_work = 1 + total_rows // ROWS_PER_WORKER
    return max(1, min(cores, int(idle + 0.5), by_work))


@dataclass(frozen=True)
class Shard:
    """One unit of render work: a slice of a job's rows, written to ``path``."""

    job: RenderJob
    data: SplitData
    path: Path
    number: int
    cache_key: str = ""
    cache_dir: Path | None = None


@dataclass(frozen=True)
class ShardResult:
    number: int
    path: Path
    stats: RenderStats
    cached: bool


def split_job(job: RenderJob, shard_rows: int | None = None) -> list[RenderJob]:
    """Cut a job's sorted indices into shards at fixed places, never inside a run of repeats."""
    shard_rows = shard_rows or SHARD_ROWS
    idx = np.asarray(job.indices, dtype=np.int64)
    cuts = [0]
    while len(idx) - cuts[-1] > shard_rows:
        target = idx[cuts[-1] + shard_rows]
        cut = int(np.searchsorted(idx, target, side="left"))  # the start of the run holding the target row
        if cut <= cuts[-1]:  # one run of repeats longer than a shard: cut after it
            cut = int(np.searchsorted(idx, target, side="right"))
        cuts.append(cut)
    cuts.append(len(idx))
    return [replace(job, indices=idx[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a] or [job]


def _task_fingerprint(job: RenderJob) -> dict:
    task = job.task
    return {
        "task": {f.name: getattr(task, f.name) for f in fields(task)
                 if f.name not in ("source", "templates", "origin", "examples", "description", "homepage", "license")},
        "split_names": task.source.splits,
        # declared fields only: vars() would also hold cached properties, which appear once read
        "templates": [{"kind": type(t).__name__, **{f.name: getattr(t, f.name) for f in fields(t) if f.name != "origin"}}
                      for t in task.templates],
    }


@functools.lru_cache(maxsize=1)
def library_versions() -> tuple:
    """Library versions in every cache key (looked up once per process: metadata lookups cost ~ms each)."""
    return tuple((p, metadata.version(p)) for p in ("flanbuild", "jinja2", "pyarrow", "numpy"))


def cache_key(job: RenderJob, data: SplitData) -> str:
    """Everything that decides a shard's bytes."""
    versions = dict(library_versions())
    doc = {
        "versions": versions,
        "job": _task_fingerprint(job),
        "role": job.role, "seed": job.seed, "task_source": job.task_source, "all_templates": job.all_templates,
        "style": asdict(job.style),
        "indices": hashlib.sha256(np.asarray(job.indices, dtype=np.int64).tobytes()).hexdigest(),
        "exemplars": hashlib.sha256(np.asarray(job.exemplars, dtype=np.int64).tobytes()).hexdigest(),
        "data": data.fingerprint(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def from_cache(shard: Shard) -> ShardResult | None:
    """The shard's part from the cache, linked into place, if it is there and verifies.

    An entry is trusted only if its metadata names this cache key, its part file has the SHA-256
    recorded when it was written, and its row count matches: a corrupted, edited or swapped entry is
    removed and the shard rendered again.
    """
    if shard.cache_dir is None:
        return None
    cached = shard.cache_dir / shard.cache_key[:2] / f"{shard.cache_key}{parts.SUFFIX}"
    meta = cached.with_suffix(".json")
    if not (cached.exists() or meta.exists()):
        return None
    stats = _verified_entry(cached, meta, shard.cache_key)
    if stats is None:
        for path in (cached, meta):
            try:
                path.unlink()
            except OSError:
                pass
        return None
    cachefile.link_or_copy(cached, shard.path)
    cachefile.touch(meta)
    return ShardResult(shard.number, shard.path, stats, True)


def _verified_entry(cached: Path, meta: Path, key: str) -> RenderStats | None:
    """The entry's RenderStats if the entry verifies (see from_cache), else None."""
    from flanbuild.pipeline.render import OUTPUT_SCHEMA

    try:
        if cached.is_symlink() or meta.is_symlink() or not (cached.is_file() and meta.is_file()):
            return None
        doc = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("sha256"), str):
            return None
        if sha256_file(cached) != doc["sha256"]:
            return None
        raw = doc.get("stats")
        stats = RenderStats(rows=raw["rows"], dropped=raw["dropped"],
                            per_template={int(k): int(v) for k, v in raw["per_template"].items()},
                            per_type={str(k): int(v) for k, v in raw["per_type"].items()})
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (stats.rows, stats.dropped)):
            return None
        if parts.schema(cached) != OUTPUT_SCHEMA or parts.num_rows(cached) != stats.rows:
            return None
        return stats
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    except Exception:  # noqa: BLE001 - pyarrow's errors on a damaged file: not trustworthy
        return None


def run_shard(shard: Shard) -> ShardResult:
    """Render one shard (or take it from the cache). Runs in a worker process or on a Dask worker."""
    hit = from_cache(shard)
    if hit is not None:
        return hit
    stats = write_part(shard.job, shard.data, shard.path, compress=shard.cache_dir is not None)
    stats.per_template = {int(k): v for k, v in stats.per_template.items()}
    if shard.cache_dir is not None:
        _store(shard.path, stats, shard.cache_dir / shard.cache_key[:2], shard.cache_key)
    return ShardResult(shard.number, shard.path, stats, False)


def _store(part: Path, stats: RenderStats, directory: Path, key: str) -> None:
    """Add a part to the cache atomically: the part first, then the record that makes it a hit."""
    if cachefile.copy(part, directory / f"{key}{parts.SUFFIX}"):
        cachefile.write(directory / f"{key}.json",
                        json.dumps({"key": key, "sha256": sha256_file(part), "stats": asdict(stats)}).encode())


def use_pool(workers: int, items: int, rows: int) -> bool:
    """Whether work of ``items`` pieces over ``rows`` rows is worth a process pool (else it runs here)."""
    return workers > 1 and items > 1 and rows >= SERIAL_BELOW


def run(shards: list[Shard], *, engine: str = "local", workers: int = 1, scheduler: str | None = None,
        on_done: Callable[[ShardResult], None] | None = None) -> list[ShardResult]:
    """Run shards; results come back in shard order whatever finished first."""
    on_done = on_done or (lambda r: None)
    hits = []
    for shard in shards:  # cache hits cost a link: never worth a worker
        hit = from_cache(shard)
        if hit is not None:
            hits.append(hit)
            on_done(hit)
    done_numbers = {h.number for h in hits}
    shards = [s for s in shards if s.number not in done_numbers]
    total_rows = sum(len(s.job.indices) for s in shards)
    if not shards:
        results = []
    elif engine == "dask":
        results = _run_dask(shards, workers, scheduler, on_done)
    elif not use_pool(workers, len(shards), total_rows):
        results = []
        for shard in shards:
            results.append(run_shard(shard))
            on_done(results[-1])
    else:
        results = process_map(run_shard, _largest_first(shards, workers), workers, on_done)
    return sorted(hits + results, key=lambda r: r.number)


def _worker_init(parent_pid: int, initializer: tuple[Callable, tuple] | None = None) -> None:
    """In each worker: die with the build. Linux: SIGKILL when the parent (the fork server, which exits
    when the build does) dies; everywhere: a watchdog thread that exits once the build's process is gone.
    Ctrl-C is the build's to handle (it terminates the workers). Then the pool's own ``initializer``, if any."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            if os.getppid() == 1:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="flanbuild-parent-watch", daemon=True).start()
    if initializer is not None:
        fn, args = initializer
        fn(*args)


def _terminate_on_sigterm():
    """While the pool runs, SIGTERM ends the build like Ctrl-C (cleanup runs, workers are terminated)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return lambda: None

    def on_term(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except (OSError, AttributeError):
            pass


# What every worker imports, once in the fork server instead of once per worker of every pool: this module,
# and pandas, which pyarrow imports (0.2 s) the first time it builds an array from Python objects.
WORKER_PRELOAD = ["flanbuild.pipeline.engine", "pandas"]


def start_fork_server(preload: list[str]) -> None:
    """Start the worker processes' fork server now rather than with the first pool. The server imports
    ``preload`` (about 0.4 s for the whole builder) on an idle core while the build loads its catalog and
    reads its sources on this one; started lazily, that import held up the first pool's stage."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([*WORKER_PRELOAD, *preload])
    forkserver.ensure_running()


def process_map(fn: Callable, items: list, workers: int, on_done: Callable = lambda r: None,
                initializer: tuple[Callable, tuple] | None = None) -> list:
    """``fn`` over ``items`` in up to ``workers`` processes; results in item order, each also handed to
    ``on_done`` as it arrives. ``initializer`` (a function and its arguments) runs once in each process:
    for state every item needs, sent once per process rather than with every item. The processes die
    with the build (an error, Ctrl-C, SIGTERM)."""
    import multiprocessing

    # forkserver: workers start from a clean process (no inherited Arrow/Jinja threads), and the
    # modules they run are imported once in the server (started by the build's first pool), not per worker.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*WORKER_PRELOAD, getattr(fn, "func", fn).__module__])
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx,
                               initializer=_worker_init, initargs=(os.getpid(), initializer))
    restore = _terminate_on_sigterm()
    try:
        results = []
        for result in pool.map(fn, items):
            results.append(result)
            on_done(result)
    except BaseException:
        _kill_pool(pool)
        raise
    finally:
        restore()
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _largest_first(shards: list[Shard], workers: int = 1) -> list[Shard]:
    """Big shards first, so the last worker is not left with the biggest one.

    A task's shards are dealt in ``workers`` runs of consecutive shards, taken in turn (0, k, 1, k+1, ...
    for two workers), so that a worker tends to get the shard after its last one and continues its read
    of a big Parquet row group (sources/loader.py) instead of decoding the rows of the other worker's
    shards to get there. The sort is stable: the dealt order holds among shards of equal size.
    """
    by_task: dict[str, list[Shard]] = {}
    for shard in shards:
        by_task.setdefault(shard.job.task.name, []).append(shard)
    dealt = []
    for task_shards in by_task.values():
        run = -(-len(task_shards) // workers)
        runs = [task_shards[i:i + run] for i in range(0, len(task_shards), run)]
        dealt += [r[i] for i in range(run) for r in runs if i < len(r)]
    return sorted(dealt, key=lambda s: -len(s.job.indices) * (len(s.job.task.templates) if s.job.all_templates else 1))


def _run_dask(shards: list[Shard], workers: int, scheduler: str | None, on_done) -> list[ShardResult]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise FlanbuildError("--engine dask needs dask[distributed]: pip install 'flanbuild[dask]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="20s")
        else:
            cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
    except OSError as e:
        raise FlanbuildError(f"cannot reach the Dask scheduler {scheduler or '(local)'}: {e}") from None
    try:
        return _run_shipped(client, shards, on_done, as_completed)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def render_remote(job: RenderJob, data: SplitData) -> tuple[bytes, RenderStats, tuple]:
    """On a Dask worker: render a shard whose rows travel with it (pipeline/remote.py) into memory.

    Returns the part's bytes, its stats and the worker's library versions. The worker opens no
    file: neither the client's sources nor its staging directory or cache need to be visible to it."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    stats = write_part(job, data, sink)
    stats.per_template = {int(k): v for k, v in stats.per_template.items()}
    return sink.getvalue().to_pybytes(), stats, library_versions()


def _land(shard: Shard, payload: tuple[bytes, RenderStats, tuple]) -> ShardResult:
    """On the client: write a part a worker returned into the staging directory, and into the cache."""
    blob, stats, versions = payload
    if tuple(versions) != library_versions():
        theirs, ours = dict(versions), dict(library_versions())
        diff = ", ".join(f"{p} {theirs.get(p)} (client {v})" for p, v in ours.items() if theirs.get(p) != v)
        raise FlanbuildError(f"a Dask worker runs other library versions than this client: {diff}; the parts' "
                             f"bytes would differ (install the same versions on every worker)")
    shard.path.write_bytes(blob)
    if shard.cache_dir is not None:
        _store(shard.path, stats, shard.cache_dir / shard.cache_key[:2], shard.cache_key)
    return ShardResult(shard.number, shard.path, stats, False)


def _run_shipped(client, shards: list[Shard], on_done, as_completed) -> list[ShardResult]:
    """Each shard goes to a worker with its own rows and comes back as part bytes; the client alone
    reads sources and writes parts and cache entries. At most two shards per worker thread are in flight,
    which bounds the client's memory and lets it read the next shard's rows while workers render. A
    shard whose worker died (its scattered rows die with it) is shipped again, up to SHIP_ATTEMPTS times."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    from flanbuild.pipeline.remote import ship

    queue = [(shard, 1) for shard in list(_largest_first(shards))[::-1]]
    window = max(2, 2 * sum(client.nthreads().values()))
    waiting = as_completed()
    owner: dict[str, tuple[Shard, int, object]] = {}

    def submit() -> None:
        if queue:
            shard, attempt = queue.pop()
            job, rows = ship(shard.job, shard.data)
            [rows_future] = client.scatter([rows], hash=False)
            future = client.submit(render_remote, job, rows_future, pure=False)
            owner[future.key] = (shard, attempt, rows_future)
            waiting.add(future)

    for _ in range(window):
        submit()
    results = []
    for future in waiting:
        shard, attempt, rows_future = owner.pop(future.key)
        try:
            payload = future.result()
        except (CancelledError, KilledWorker):
            if attempt >= SHIP_ATTEMPTS:
                raise FlanbuildError(f"Dask workers were lost {attempt} times while rendering shard "
                                     f"{shard.number} ({shard.job.task.name}); giving up") from None
            queue.append((shard, attempt + 1))
            submit()
            continue
        finally:
            future.release()
            rows_future.release()
        result = _land(shard, payload)
        submit()
        results.append(result)
        on_done(result)
    return results
