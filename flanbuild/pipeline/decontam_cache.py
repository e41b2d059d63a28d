"""Decontamination that costs only what changed: per-task results and the eval index, cached.

A training task's decontamination depends on its rendered parts and on the eval index, and both are
named by render-cache keys: the task's shard keys, and the shard keys of every eval task (plus the
n-gram setting). So the outcome for one task (rows kept, removed rows by template, and which row
positions went) is cached under a key made of those, and a rebuild re-applies it without looking at
the eval split: after one template of a training task changed, only that task is checked again. The
normalised eval inputs (the expensive part of the index: a regular expression over every eval input)
are cached under the eval key too; n-gram sets are not (they use Python's per-process string hash).

Rewriting a part goes through one loop (:func:`rewrite`), whether the mask comes from the index or
from the cache, with the same batches and writer settings as ``decontam.filter_part``: the bytes are
the same either way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flanbuild.pipeline.decontam import EvalIndex

SCHEME = "decontam-v1"
BATCH_ROWS = 8192


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


def rewrite(path: Path, mask_of: Callable[[pa.RecordBatch, int], pa.Array]) -> tuple[int, Counter, list[int]]:
    """Rewrite a part keeping the rows ``mask_of(batch, first_row)`` marks; returns (kept, removed rows
    by (template id, template type), removed row positions). The file is replaced only if rows went."""
    source = pq.ParquetFile(path)
    tmp = path.with_suffix(".decontaminated")
    kept, removed, positions, offset = 0, Counter(), [], 0
    with pq.ParquetWriter(tmp, source.schema_arrow, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            mask = mask_of(batch, offset)
            n_kept = pc.sum(mask).as_py() or 0
            kept += n_kept
            table = pa.Table.from_batches([batch])
            if n_kept < batch.num_rows:
                gone = table.filter(pc.invert(mask))
                removed.update(zip(gone.column("template_id").to_pylist(), gone.column("template_type").to_pylist()))
                positions.extend((offset + np.flatnonzero(~np.asarray(mask.to_numpy(zero_copy_only=False)))).tolist())
            writer.write_table(table.filter(mask))
            offset += batch.num_rows
    if removed:
        tmp.replace(path)
    else:
        tmp.unlink()
    return kept, removed, positions


def _positions_mask(positions: set[int]) -> Callable[[pa.RecordBatch, int], pa.Array]:
    def mask_of(batch: pa.RecordBatch, offset: int) -> pa.Array:
        return pa.array([offset + i not in positions for i in range(batch.num_rows)], pa.bool_())
    return mask_of


class DecontamCache:
    """Per-task decontamination outcomes and normalised eval inputs under ``cache_dir/decontam``."""

    def __init__(self, cache_dir: Path | None):
        self.dir = Path(cache_dir) / "decontam" if cache_dir is not None else None

    def _path(self, key: str, suffix: str) -> Path | None:
        return self.dir / key[:2] / f"{key}{suffix}" if self.dir is not None else None

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written only costs time

    def task(self, key: str) -> list[dict] | None:
        """The cached outcome per part: [{"kept", "removed": [[id, type, n]...], "positions"}], or None."""
        path = self._path(key, ".json")
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("parts"), list):
            return None
        return doc["parts"]

    def store_task(self, key: str, parts: list[dict]) -> None:
        path = self._path(key, ".json")
        if path is not None:
            self._write(path, json.dumps({"key": key, "parts": parts}).encode())

    def index_inputs(self, key: str) -> pa.Array | None:
        path = self._path(key, ".inputs.parquet")
        try:
            if path is None or not path.is_file():
                return None
            table = pq.read_table(path)
            if table.schema.metadata.get(b"key") != key.encode():
                return None
            return table.column("inputs").combine_chunks()
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            return None

    def store_index_inputs(self, key: str, inputs: pa.Array) -> None:
        path = self._path(key, ".inputs.parquet")
        if path is None:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"inputs": inputs}).replace_schema_metadata({"key": key}), sink, compression="zstd")
        self._write(path, sink.getvalue().to_pybytes())


def apply_cached(paths: list[Path], parts: list[dict]) -> tuple[int, Counter] | None:
    """Re-apply a cached outcome to freshly linked parts; None if it does not fit them."""
    if len(parts) != len(paths):
        return None
    kept_total, removed = 0, Counter()
    for path, part in zip(paths, parts):  # checked first: a part is rewritten only if every part fits
        if pq.ParquetFile(path).metadata.num_rows != part["kept"] + len(part["positions"]):
            return None
    for path, part in zip(paths, parts):
        if part["positions"]:
            rewrite(path, _positions_mask(set(part["positions"])))
        kept_total += part["kept"]
        removed.update({(int(t), str(k)): int(n) for t, k, n in part["removed"]})
    return kept_total, removed


def filter_task(paths: list[Path], index: EvalIndex) -> tuple[int, Counter, list[dict]]:
    """Decontaminate a task's parts against the index; returns (kept, removed, outcome to cache)."""
    kept_total, removed, outcome = 0, Counter(), []
    for path in paths:
        kept, gone, positions = rewrite(path, lambda batch, offset: index.keep_mask(batch.column("inputs")))
        kept_total += kept
        removed.update(gone)
        outcome.append({"kept": kept, "removed": [[t, k, n] for (t, k), n in sorted(gone.items())],
                        "positions": positions})
    return kept_total, removed, outcome
