"""Decontamination that costs only what changed: per-task results and the eval index, cached.

A training task's decontamination depends on its rendered parts and on the eval index, and both are
named by render-cache keys: the task's shard keys, and the shard keys of every eval task (plus the
n-gram setting). So the outcome for one task (rows kept, removed rows by template, and which row
positions went) is cached under a key made of those, and a rebuild re-applies it without looking at
the eval split: after one template of a training task changed, only that task is checked again. The
eval index (the normalised eval inputs, sorted, and their sorted reversals: a regular expression over
every eval input, then two sorts) is cached under the eval key too; the n-gram hashes are not (they are
built from the eval texts, cheaply).

Decontamination never rewrites a part: it names the row positions to leave out, and the writer skips
them (``writer.Part.dropped``), whether they come from the index or from the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from flanbuild.pipeline import cachefile
from flanbuild.pipeline import parts
from flanbuild.pipeline.decontam import EvalIndex

SCHEME = "decontam-v1"


def eval_key(eval_shard_keys: Iterable[str], ngram: int) -> str:
    h = hashlib.sha256(f"{SCHEME}\nngram={ngram}\n".encode())
    for key in eval_shard_keys:
        h.update(key.encode() + b"\n")
    return h.hexdigest()


def task_key(index_key: str, shard_keys: Iterable[str]) -> str:
    h = hashlib.sha256(f"{SCHEME}\n{index_key}\n".encode())
    for key in shard_keys:
        h.update(key.encode() + b"\n")
    return h.hexdigest()


def check(path: Path, index: EvalIndex) -> tuple[int, Counter, np.ndarray]:
    """(rows kept, removed rows by (template id, template type), removed row positions) of one part.

    The part is checked in one call (a part is one render shard, at most tens of thousands of rows):
    the n-gram check builds a hash table of the eval words per call, so fewer, larger calls cost less."""
    columns = ["inputs", "template_id", "template_type"]
    schema = parts.schema(path)
    table = pa.Table.from_batches(list(parts.batches(path, columns=columns)),
                                  pa.schema([schema.field(c) for c in columns]))
    if table.num_rows == 0:
        return 0, Counter(), np.zeros(0, dtype=np.int64)
    table = table.combine_chunks()
    keep = index.keep_mask(table.column("inputs").chunk(0), table.column("template_id").chunk(0))
    gone = np.flatnonzero(~keep.to_numpy(zero_copy_only=False))
    taken = pa.array(gone)
    removed = Counter(zip(table.column("template_id").take(taken).to_pylist(),
                          table.column("template_type").take(taken).to_pylist()))
    return table.num_rows - len(gone), removed, gone.astype(np.int64)


class DecontamCache:
    """Per-task decontamination outcomes and normalised eval inputs under ``cache_dir/decontam``."""

    def __init__(self, cache_dir: Path | None):
        self.dir = Path(cache_dir) / "decontam" if cache_dir is not None else None

    def _path(self, key: str, suffix: str) -> Path | None:
        return self.dir / key[:2] / f"{key}{suffix}" if self.dir is not None else None

    def task(self, key: str) -> list[dict] | None:
        """The cached outcome per part: [{"kept", "removed": [[id, type, n]...], "positions"}], or None."""
        path = self._path(key, ".json")
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("parts"), list):
            return None
        cachefile.touch(path)
        return doc["parts"]

    def store_task(self, key: str, parts: list[dict]) -> None:
        path = self._path(key, ".json")
        if path is not None:
            cachefile.write(path, json.dumps({"key": key, "parts": parts}).encode())

    def index(self, key: str, eval_texts: Iterable[str], ngram: int) -> EvalIndex | None:
        """The cached eval index of ``key`` (its sorted inputs and reversals), with the n-grams of
        ``eval_texts`` built afresh; None on a miss."""
        path = self._path(key, ".index.arrow")
        try:
            if path is None or not path.is_file():
                return None
            with pa.OSFile(str(path)) as f:
                reader = pa.ipc.open_file(f)
                if reader.schema.metadata.get(b"key") != key.encode():
                    return None
                table = reader.read_all().combine_chunks()
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            return None
        cachefile.touch(path)
        empty = pa.array([], pa.string())
        column = lambda name: table.column(name).chunk(0) if table.num_rows else empty  # noqa: E731
        return EvalIndex.from_sorted(column("inputs"), eval_texts, ngram, column("reversals"))

    def index_used(self, key: str) -> None:
        """Every task's outcome came from the cache: the index was not read, but it is what a rebuild
        after one template changed will check that task against, so it counts as used."""
        path = self._path(key, ".index.arrow")
        if path is not None:
            cachefile.touch(path)

    def store_index(self, key: str, index: EvalIndex) -> None:
        """Store the index's inputs and reversals (Arrow IPC, LZ4: a rebuild reads them in a tenth of the
        time zstd Parquet takes, and sorts nothing)."""
        path = self._path(key, ".index.arrow")
        if path is None:
            return
        index.with_reversals()
        table = pa.table({"inputs": index.inputs, "reversals": index.reversals}).replace_schema_metadata({"key": key})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
            writer.write_table(table)
        cachefile.write(path, sink.getvalue().to_pybytes())


Outcome = tuple[int, Counter, tuple[np.ndarray, ...]]  # rows kept, removed by template, dropped positions per part


def apply_cached(paths: list[Path], cached: list[dict]) -> Outcome | None:
    """A cached outcome for a task's freshly rendered or linked parts; None if it does not fit them."""
    if len(cached) != len(paths):
        return None
    if any(parts.num_rows(path) != part["kept"] + len(part["positions"]) for path, part in zip(paths, cached)):
        return None
    removed = Counter()
    for part in cached:
        removed.update({(int(t), str(k)): int(n) for t, k, n in part["removed"]})
    dropped = tuple(np.asarray(part["positions"], dtype=np.int64) for part in cached)
    return sum(part["kept"] for part in cached), removed, dropped


def task_outcome(checked: list[tuple[int, Counter, np.ndarray]]) -> tuple[Outcome, list[dict]]:
    """A task's (outcome, outcome to cache) from the results of its parts, in part order."""
    kept_total, removed, dropped, to_cache = 0, Counter(), [], []
    for kept, gone, positions in checked:
        kept_total += kept
        removed.update(gone)
        dropped.append(positions)
        to_cache.append({"kept": kept, "removed": [[t, k, n] for (t, k), n in sorted(gone.items())],
                         "positions": positions.tolist()})
    return (kept_total, removed, tuple(dropped)), to_cache


# -- in worker processes: the index arrives once per process (pool initializer), parts one by one --------

_INDEX: EvalIndex | None = None


def use_index(index: EvalIndex) -> None:
    """Pool initializer: the eval index this worker process checks parts against."""
    global _INDEX
    _INDEX = index


def check_part(path: Path) -> tuple[int, Counter, np.ndarray]:
    """In a worker process: one part against the index ``use_index`` gave this process."""
    if _INDEX is None:
        raise RuntimeError("check_part runs in a pool started with use_index as its initializer")
    return check(path, _INDEX)
