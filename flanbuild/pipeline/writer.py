"""The writer: rendered parts -> ``OUT/`` (Parquet shards, dataset card, mixture.json), atomically.

Everything is first written into a staging directory next to ``OUT`` and renamed into place at the
end, so an interrupted build never leaves a half-written ``OUT``. The train split interleaves the
tasks evenly (row j of a task with r rows sits near position (j + jitter) / r of the file), so any
prefix of the file has the mixture's proportions; the order is seeded. The eval split is grouped by
task, then example, then template.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flanbuild.pipeline import parts as part_files
from flanbuild.pipeline import seeding
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.render import OUTPUT_SCHEMA

WRITE_BATCH_ROWS = 8192
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Part:
    """One rendered task split on disk (its shards, in order), less the rows decontamination dropped.

    ``dropped[i]`` holds the sorted row positions of ``paths[i]`` to leave out: decontamination only
    marks rows, so a part file is never rewritten (and a cached part can be shared by hard link).
    """

    task: str
    paths: tuple[Path, ...]
    rows: int  # rows written, after the dropped ones
    dropped: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to OUT
    rows: int
    bytes: int
    sha256: str


def _kept_batches(path: Path, dropped: np.ndarray | None) -> Iterator[pa.RecordBatch]:
    offset = 0
    for batch in part_files.batches(path):
        n = batch.num_rows
        if dropped is not None and len(dropped):
            lo, hi = np.searchsorted(dropped, [offset, offset + n])
            if hi > lo:
                keep = np.ones(n, dtype=bool)
                keep[dropped[lo:hi] - offset] = False
                batch = batch.filter(pa.array(keep))
        offset += n
        yield batch


def _tables(part: Part) -> Iterator[pa.Table]:
    """The part's kept rows as tables of WRITE_BATCH_ROWS rows (fewer at the end of each file)."""
    for i, path in enumerate(part.paths):
        pending: list[pa.RecordBatch] = []
        count = 0
        for batch in _kept_batches(path, part.dropped[i] if part.dropped else None):
            pending.append(batch)
            count += batch.num_rows
            while count >= WRITE_BATCH_ROWS:
                whole = pa.Table.from_batches(pending, OUTPUT_SCHEMA)
                yield whole.slice(0, WRITE_BATCH_ROWS).combine_chunks()
                rest = whole.slice(WRITE_BATCH_ROWS)
                pending, count = rest.to_batches(), rest.num_rows
        if count:
            yield pa.Table.from_batches(pending, OUTPUT_SCHEMA).combine_chunks()


class _PartReader:
    """Reads a part front to back in arbitrary-size pieces."""

    def __init__(self, part: Part):
        self._tables = _tables(part)
        self._buffer: pa.Table = OUTPUT_SCHEMA.empty_table()

    def read(self, n: int) -> pa.Table:
        while self._buffer.num_rows < n:
            self._buffer = pa.concat_tables([self._buffer, next(self._tables)])
        out, self._buffer = self._buffer.slice(0, n), self._buffer.slice(n)
        return out


def interleave_order(parts: list[Part], seed: int) -> np.ndarray:
    """For each output position, the index of the part its row comes from."""
    part_ids, keys = [], []
    for p, part in enumerate(parts):
        j = np.arange(part.rows)
        part_ids.append(np.full(part.rows, p, dtype=np.int64))
        keys.append((j + seeding.unit_floats(seed, ("interleave", part.task), j)) / max(part.rows, 1))
    if not part_ids:
        return np.zeros(0, dtype=np.int64)
    part_ids_all, keys_all = np.concatenate(part_ids), np.concatenate(keys)
    return part_ids_all[np.lexsort((part_ids_all, keys_all))]


def _interleaved(parts: list[Part], seed: int) -> Iterator[pa.Table]:
    order = interleave_order(parts, seed)
    readers = [_PartReader(p) for p in parts]
    for start in range(0, len(order), WRITE_BATCH_ROWS):
        chunk = order[start:start + WRITE_BATCH_ROWS]
        counts = np.bincount(chunk, minlength=len(parts))
        pieces = [readers[p].read(int(c)) for p, c in enumerate(counts) if c]
        piece_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        grouped = np.argsort(chunk, kind="stable")
        sorted_ids = chunk[grouped]
        rank = np.empty(len(chunk), dtype=np.int64)
        rank[grouped] = np.arange(len(chunk)) - np.searchsorted(sorted_ids, sorted_ids, side="left")
        yield pa.concat_tables(pieces).take(pa.array(piece_start[chunk] + rank))


def _concatenated(parts: list[Part]) -> Iterator[pa.Table]:
    for part in parts:
        yield from _tables(part)


def write_split(out: Path, split: str, parts: list[Part], *, interleave: bool, seed: int, shard_rows: int,
                observe: Callable[[str, pa.Table], None] | None = None) -> list[DataFile]:
    """Write one split as ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (zstd), ``shard_rows`` rows each.

    ``observe(split, table)`` sees every table written, in order: the build collects the card's
    statistics that way instead of reading the output a second time.
    """
    total = sum(p.rows for p in parts)
    n_shards = max(1, -(-total // shard_rows))
    tables = _interleaved(parts, seed) if interleave else _concatenated(parts)
    (out / "data").mkdir(parents=True, exist_ok=True)
    files = []
    pending = OUTPUT_SCHEMA.empty_table()
    for i in range(n_shards):
        rel = f"data/{split}-{i:05d}-of-{n_shards:05d}.parquet"
        want = min(shard_rows, total - i * shard_rows) if total else 0
        with pq.ParquetWriter(out / rel, OUTPUT_SCHEMA, compression="zstd") as writer:
            written = 0
            while written < want:
                if pending.num_rows == 0:
                    pending = next(tables)
                piece = pending.slice(0, want - written)
                pending = pending.slice(piece.num_rows)
                writer.write_table(piece)
                if observe is not None:
                    observe(split, piece)
                written += piece.num_rows
            if want == 0:
                writer.write_table(OUTPUT_SCHEMA.empty_table())
        files.append(DataFile(rel, want, (out / rel).stat().st_size, sha256_file(out / rel)))
    return files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


# -- atomic output ------------------------------------------------------------------------------

def check_output_path(out: Path) -> None:
    """Fail early (before any work) on an output path we must not or cannot write."""
    if out.exists() and not out.is_dir():
        raise FlanbuildError(f"output path {out} exists and is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "mixture.json").is_file():
        raise FlanbuildError(f"output directory {out} is not empty and is not a flanbuild output; refusing to overwrite it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FlanbuildError(f"cannot create {out}: {parent} is not a directory")
    try:  # actually try: permission bits do not tell (root, read-only mounts, /proc)
        fd, probe = tempfile.mkstemp(prefix=".flanbuild-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FlanbuildError(f"cannot write to {parent}: {e.strerror or e}") from None


def staging_dir(out: Path) -> Path:
    """A fresh directory beside ``out`` (same file system, so the final rename is atomic).

    Staging directories of builds that died (killed, power loss) are removed here: they are hidden,
    never contain a complete output, and their process is gone.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(stage: Path, out: Path) -> None:
    """Replace ``out`` with ``stage``. At every instant ``out`` is either the old or the new output.

    On Linux the two directories are swapped in one atomic step; elsewhere the old output is moved
    aside and the new one renamed into place (a crash between the two renames leaves the old output
    in ``.OUT.partial-PID``).
    """
    if not out.exists():
        os.rename(stage, out)
        return
    if _exchange(stage, out):
        shutil.rmtree(stage, ignore_errors=True)  # stage now holds the previous output
        return
    old = out.parent / f".{out.name}.partial-{os.getpid()}-old"
    os.rename(out, old)
    os.rename(stage, out)
    shutil.rmtree(old, ignore_errors=True)
