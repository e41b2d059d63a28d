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
PARTS_PER_GATHER = 128  # interleaving gathers one more row group at a time per this many parts (up to 8)
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

    def kept_rows(self) -> list[int]:
        """Rows each path contributes."""
        return [part_files.num_rows(p) - (len(self.dropped[i]) if self.dropped else 0) for i, p in enumerate(self.paths)]


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to OUT
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardWrite:
    """One split file to write: everything a process needs to write it on its own (picklable).

    Rows ``start``..``stop`` of the split go to ``rel``, in row groups cut at ``cuts``. Interleaved,
    ``order`` names the part of each of those rows and ``first`` where each part's reading starts;
    concatenated, ``order`` is None and the parts are read one after the other from ``start``.
    """

    rel: str
    split: str
    start: int
    stop: int
    cuts: tuple[int, ...]
    parts: tuple[Part, ...]
    order: np.ndarray | None
    first: tuple[int, ...]


def _kept_batches(path: Path, dropped: np.ndarray | None, start: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``path`` from raw row ``start`` on, without the dropped ones."""
    offset = start
    for batch in part_files.batches(path, start=start):
        n = batch.num_rows
        if dropped is not None and len(dropped):
            lo, hi = np.searchsorted(dropped, [offset, offset + n])
            if hi > lo:
                keep = np.ones(n, dtype=bool)
                keep[dropped[lo:hi] - offset] = False
                batch = batch.filter(pa.array(keep))
        offset += n
        yield batch


def _part_batches(part: Part, skip: int) -> Iterator[pa.RecordBatch]:
    """The part's kept rows, from its ``skip``-th on (found without reading what comes before it)."""
    for i, (path, kept) in enumerate(zip(part.paths, part.kept_rows())):
        if skip >= kept:
            skip -= kept
            continue
        dropped = part.dropped[i] if part.dropped else np.zeros(0, dtype=np.int64)
        raw = skip + int(np.searchsorted(dropped - np.arange(len(dropped)), skip, side="right"))
        yield from _kept_batches(path, dropped, raw)
        skip = 0


class _PartReader:
    """Reads a part's kept rows front to back in arbitrary-size pieces."""

    def __init__(self, part: Part, skip: int = 0):
        self._batches = _part_batches(part, skip)
        self._buffer: pa.Table = OUTPUT_SCHEMA.empty_table()

    def read(self, n: int) -> pa.Table:
        if self._buffer.num_rows < n:
            more, count = [self._buffer], self._buffer.num_rows
            while count < n:
                batch = next(self._batches)
                more.append(pa.Table.from_batches([batch], OUTPUT_SCHEMA))
                count += batch.num_rows
            self._buffer = pa.concat_tables(more)
        out, self._buffer = self._buffer.slice(0, n), self._buffer.slice(n)
        return out


def interleave_order(parts: list[Part], seed: int) -> np.ndarray:
    """For each output position, the index of the part its row comes from.

    Row j of a part with r rows sorts at (j + jitter) / r; ties keep part order. About 20 bytes per
    row at the peak (the keys and the sort), the one per-row array of the writer."""
    if len(parts) <= 1:
        return np.zeros(parts[0].rows if parts else 0, dtype=np.int32)
    keys = np.empty(sum(p.rows for p in parts), dtype=np.float64)
    at = 0
    for part in parts:
        j = np.arange(part.rows)
        keys[at:at + part.rows] = (j + seeding.unit_floats(seed, ("interleave", part.task), j)) / max(part.rows, 1)
        at += part.rows
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in part order
    del keys
    bounds = np.cumsum([p.rows for p in parts])
    return np.searchsorted(bounds, order, side="right").astype(np.int32)


def plan_split(split: str, parts: list[Part], *, interleave: bool, seed: int, shard_rows: int) -> list[ShardWrite]:
    """The files of one split: ``data/{split}-{i:05d}-of-{n:05d}.parquet``, ``shard_rows`` rows each.

    Row groups are cut every WRITE_BATCH_ROWS rows of the split (interleaved) or of each part file
    (concatenated), and at file boundaries; the cuts depend only on the parts, so the bytes do not
    depend on how many processes write the files.
    """
    total = sum(p.rows for p in parts)
    n_shards = max(1, -(-total // shard_rows))
    order = interleave_order(parts, seed) if interleave else None
    if interleave:
        grid = set(range(0, total, WRITE_BATCH_ROWS))
    else:
        grid, at = set(), 0
        for part in parts:
            for kept in part.kept_rows():
                grid.update(range(at, at + kept, WRITE_BATCH_ROWS))
                at += kept
    writes = []
    for i in range(n_shards):
        start, stop = min(i * shard_rows, total), min((i + 1) * shard_rows, total)
        cuts = tuple(sorted({start, stop} | {c for c in grid if start < c < stop}))
        if interleave:
            first = tuple(int(c) for c in np.bincount(order[:start], minlength=len(parts)))
        else:
            ends = np.cumsum([0] + [p.rows for p in parts])
            first = tuple(int(min(max(start - e, 0), p.rows)) for e, p in zip(ends, parts))
        writes.append(ShardWrite(f"data/{split}-{i:05d}-of-{n_shards:05d}.parquet", split, start, stop, cuts,
                                 tuple(parts), order[start:stop] if interleave else None, first))
    return writes


def _interleaved_piece(readers: list[_PartReader], chunk: np.ndarray) -> pa.Table:
    """The rows of ``chunk`` (the part index of each output row), each part's next rows in order."""
    counts = np.bincount(chunk, minlength=len(readers))
    pieces = [readers[p].read(int(c)) for p, c in enumerate(counts) if c]
    if len(pieces) == 1:  # one part's next rows, in order
        return pieces[0]
    piece_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = np.argsort(chunk, kind="stable")
    sorted_ids = chunk[grouped]
    rank = np.empty(len(chunk), dtype=np.int64)
    rank[grouped] = np.arange(len(chunk)) - np.searchsorted(sorted_ids, sorted_ids, side="left")
    return pa.concat_tables(pieces).take(pa.array(piece_start[chunk] + rank))


def _concatenated_piece(readers: list[_PartReader], remaining: list[int], n: int) -> pa.Table:
    """The next ``n`` rows of the parts one after the other (``remaining``: rows left in each)."""
    tables = []
    for p, left in enumerate(remaining):
        if n and left:
            take = min(n, left)
            tables.append(readers[p].read(take))
            remaining[p] -= take
            n -= take
    return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()


def _pieces(w: ShardWrite, readers: list[_PartReader], remaining: list[int]) -> Iterator[pa.Table]:
    """The rows of each row group of the file, in order. With many parts, interleaved rows are gathered
    several row groups at a time and then cut at the row-group boundaries: a mixture of ~1,000 tasks
    takes a few rows from each part per row group, and a read per part per row group is what costs."""
    if w.order is None:
        for a, b in zip(w.cuts, w.cuts[1:]):
            yield _concatenated_piece(readers, remaining, b - a)
        return
    span = WRITE_BATCH_ROWS * min(8, max(1, len(w.parts) // PARTS_PER_GATHER))
    i = 0
    while i < len(w.cuts) - 1:
        j = i + 1
        while j < len(w.cuts) - 1 and w.cuts[j + 1] - w.cuts[i] <= span:
            j += 1
        gathered = _interleaved_piece(readers, w.order[w.cuts[i] - w.start:w.cuts[j] - w.start])
        for a, b in zip(w.cuts[i:j], w.cuts[i + 1:j + 1]):
            yield gathered.slice(a - w.cuts[i], b - a)
        i = j


def write_shard(out: Path, w: ShardWrite, observe: Callable[[str, pa.Table], None] | None = None) -> DataFile:
    """Write one split file. ``observe(split, table)`` sees every table written, in order: the build
    collects the card's statistics that way instead of reading the output a second time."""
    readers = [_PartReader(p, skip) for p, skip in zip(w.parts, w.first)]
    remaining = [p.rows - skip for p, skip in zip(w.parts, w.first)]
    with pq.ParquetWriter(out / w.rel, OUTPUT_SCHEMA, compression="zstd") as writer:
        for table in _pieces(w, readers, remaining):
            table = table.combine_chunks()
            writer.write_table(table)
            if observe is not None:
                observe(w.split, table)
        if w.start == w.stop:
            writer.write_table(OUTPUT_SCHEMA.empty_table())
    return DataFile(w.rel, w.stop - w.start, (out / w.rel).stat().st_size, sha256_file(out / w.rel))


def write_split(out: Path, split: str, parts: list[Part], *, interleave: bool, seed: int, shard_rows: int,
                observe: Callable[[str, pa.Table], None] | None = None) -> list[DataFile]:
    """Write one split's files in this process (see plan_split and write_shard)."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    return [write_shard(out, w, observe)
            for w in plan_split(split, parts, interleave=interleave, seed=seed, shard_rows=shard_rows)]


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
