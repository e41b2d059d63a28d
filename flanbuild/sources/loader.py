"""Source data: finding a task's split and reading it as Arrow record batches.

Resolution order for a task's split (first hit wins):

1. ``source.files`` of the card (local Parquet, JSONL or CSV);
2. each local mirror directory (``--data-dir`` / ``FLANBUILD_DATA_DIR``), laid out as
   ``<hub id>/<config>/<split>.parquet`` (or ``<split>-*.parquet`` shards);
3. ``datasets.load_dataset(hub id, config, split=...)``: the Hub, or the local cache when offline.

Data is never turned into Python objects wholesale: a split is read in record batches, and only the
selected rows of each batch are converted for rendering. Hugging Face feature metadata (ClassLabel
names) is kept, because ClassLabel names are how integer labels become answer words.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flanbuild.catalog import schema
from flanbuild.sources import urls
from flanbuild.sources import offline
from flanbuild.errors import DataNotFound, FlanbuildError
from flanbuild.catalog.tasks import Task, parse_slice

BATCH_ROWS = 2048


@dataclass
class SplitData:
    """One split of a source, readable in Arrow batches: Parquet files or an in-memory/mapped table."""

    origin: str  # where it came from, for mixture.json
    features: schema.Features
    parquet_files: list[Path] = field(default_factory=list)
    arrow_files: list[Path] = field(default_factory=list)  # the datasets cache (Arrow IPC streams, memory-mapped)
    table: pa.Table | None = None  # small in-memory data (local JSONL/CSV, NIv2, the Python API)
    start: int = 0  # a row window over the data (a carve such as train[-1000:]); rows are numbered from start
    stop: int | None = None
    read: str = ""  # how much of the source split is read, when not all of it (source.max_rows), for mixture.json

    @property
    def num_rows(self) -> int:
        total = self._raw_num_rows()
        return max(0, min(total, self.stop if self.stop is not None else total) - self.start)

    def window(self, start: int, stop: int | None) -> "SplitData":
        """The same data restricted to rows [start, stop) of the current window (negative = from its end), as a
        new SplitData."""
        total = self.num_rows
        lo = max(0, start + total if start < 0 else min(start, total))
        hi = total if stop is None else max(lo, stop + total if stop < 0 else min(stop, total))
        return SplitData(self.origin, self.features, self.parquet_files, self.arrow_files, self.table,
                         self.start + lo, self.start + hi, self.read)

    def _raw_num_rows(self) -> int:
        if self.table is not None:
            return self.table.num_rows
        if self.arrow_files:
            return sum(_open_arrow(p).num_rows for p in self.arrow_files)
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parquet_files)

    def batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """All rows, in source order, as record batches of at most ``batch_rows`` rows."""
        return (batch for _, batch in self._batches_from(0, batch_rows))

    def fingerprint(self) -> str:
        """Identifies the data for the render cache: file identities (path, size, mtime), or the content."""
        h = hashlib.sha256(json.dumps(self.features, sort_keys=True).encode())
        if self.start or self.stop is not None:
            h.update(f"window {self.start}:{self.stop}\n".encode())
        for path in (*self.parquet_files, *self.arrow_files):
            st = Path(path).stat()
            h.update(f"{Path(path).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        if self.table is not None:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, self.table.schema) as stream:
                stream.write_table(self.table)
            h.update(sink.getvalue().to_pybytes())
        return h.hexdigest()

    def _batches_from(self, start: int, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(offset, batch) pairs from the batch holding row ``start`` on, numbered within the window."""
        lo, hi = self.start, self.stop
        for offset, batch in self._raw_batches_from(lo + start, batch_rows):
            end = offset + batch.num_rows
            if hi is not None and offset >= hi:
                return
            cut_lo, cut_hi = max(lo, offset), end if hi is None else min(hi, end)
            if cut_lo > offset or cut_hi < end:
                batch = batch.slice(cut_lo - offset, cut_hi - cut_lo)
            if batch.num_rows:
                yield cut_lo - lo, batch

    def _raw_batches_from(self, start: int, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(offset, batch) pairs from the batch holding row ``start`` on, skipping what lies before it
        without reading it (Parquet row groups by their metadata, tables by zero-copy slicing)."""
        offset = 0
        tables = [self.table] if self.table is not None else [_open_arrow(p) for p in self.arrow_files]
        for table in tables:
            if offset + table.num_rows <= start:
                offset += table.num_rows
                continue
            skip = max(0, start - offset)
            for batch in table.slice(skip).to_batches(max_chunksize=batch_rows):
                yield offset + skip, batch
                skip += batch.num_rows
            offset += table.num_rows
        for path in self.parquet_files:
            meta = pq.ParquetFile(path).metadata
            for group in range(meta.num_row_groups):
                n = meta.row_group(group).num_rows
                if offset + n > start:
                    for at, batch in _group_batches(path, group, max(0, start - offset), batch_rows):
                        yield offset + at, batch
                offset += n

    def selected_batches(self, indices: np.ndarray, batch_rows: int = BATCH_ROWS
                         ) -> Iterator[tuple[np.ndarray, int, pa.RecordBatch]]:
        """The rows at sorted ``indices`` (duplicates allowed) as Arrow batches: (indices, offset of the
        batch they were read from, rows); what ``rows`` turns into dicts, for columnar consumers."""
        if len(indices) == 0:
            return
        for offset, batch in self._batches_from(int(indices[0]), batch_rows):
            lo, hi = np.searchsorted(indices, [offset, offset + batch.num_rows])
            if hi > lo:
                chunk = indices[lo:hi]
                rows = chunk - offset
                whole = len(rows) == batch.num_rows and np.array_equal(rows, np.arange(len(rows)))
                yield chunk, offset, batch if whole else batch.take(pa.array(rows))  # every row: no copy
            if hi >= len(indices):
                return

    def rows(self, indices: np.ndarray, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[np.ndarray, list[dict]]]:
        """The rows at sorted ``indices`` (duplicates allowed), streamed: yields (indices, row dicts)."""
        for chunk, offset, batch in self.selected_batches(np.asarray(indices, dtype=np.int64), batch_rows):
            yield chunk, to_rows(batch, self.origin, offset)

    def take(self, indices: np.ndarray, batch_rows: int = BATCH_ROWS) -> pa.Table:
        """The rows at sorted, distinct ``indices`` as one Arrow table (no Python objects), read like rows()."""
        pieces = [batch for _, _, batch in self.selected_batches(np.asarray(indices, dtype=np.int64), batch_rows)]
        if not pieces:
            return pa.table({})
        return pa.Table.from_batches(pieces)



@dataclass
class _Cursor:
    """A read of one Parquet row group, where its last reader stopped."""

    key: tuple
    batches: Iterator[pa.RecordBatch]
    offset: int = 0  # of ``last`` within the group
    last: pa.RecordBatch | None = None


_parked: _Cursor | None = None  # this process's one parked read (see _group_batches)
_parking = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().update(_parked=None))  # a reader is not fork-safe


def _group_batches(path: Path, group: int, start: int, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(offset in the group, batch) of a Parquet row group, from the batch holding its row ``start`` on.

    Parquet cannot seek inside a row group: a read that starts mid-group decodes every row before its
    start. A big group (a file written with pyarrow's or pandas' defaults has up to 1Mi rows per group)
    is rendered in consecutive shards, so reading each shard from the group's top decoded the group once
    per shard (5.5M rows decoded for a 1M-row source on the benchmark). So when a reader stops, its read
    is parked, and the next reader of the same group starting at or after that point takes it over: one
    decode per group and process. The parked read is a cache of this process only (speed, never bytes).
    """
    global _parked
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, group, batch_rows)
    with _parking:
        cursor = _parked
        if cursor is not None and cursor.key == key and cursor.offset <= start:
            _parked = None  # taken: a reader running beside this one opens its own
        else:
            cursor = None
    if cursor is None:
        cursor = _Cursor(key, pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=[group]))
    try:
        if cursor.last is not None and cursor.offset + cursor.last.num_rows > start:
            yield cursor.offset, cursor.last
        for batch in cursor.batches:
            cursor.offset += cursor.last.num_rows if cursor.last is not None else 0
            cursor.last = batch
            if cursor.offset + batch.num_rows > start:
                yield cursor.offset, batch
    finally:
        with _parking:
            _parked = cursor


def to_rows(batch: pa.RecordBatch, origin: str, offset: int = 0) -> list[dict]:
    """A batch as row dicts; invalid UTF-8 in a string column is a one-line error, not a traceback."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError as e:
        raise FlanbuildError(f"invalid UTF-8 in a text column ({e.reason} at byte {e.start}) in the batch of rows "
                             f"from {offset} on", where=origin) from None


def _open_arrow(path: Path) -> pa.Table:
    """A datasets cache file (an Arrow IPC stream), memory-mapped: reading it costs no RAM."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def features_of(arrow_schema: pa.Schema) -> schema.Features:
    """Compact features from Parquet/Arrow metadata: Hugging Face's if present, else the Arrow types."""
    meta = arrow_schema.metadata or {}
    if b"huggingface" in meta:
        try:
            features = json.loads(meta[b"huggingface"])["info"]["features"]
        except (KeyError, ValueError, TypeError):
            return schema.from_arrow(arrow_schema)
        if not isinstance(features, dict):
            raise FlanbuildError(f"malformed Hugging Face metadata: 'features' is a {type(features).__name__}, "
                                 f"not a mapping of column -> feature")
        try:
            return schema.from_hf(features)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise FlanbuildError(f"malformed Hugging Face feature metadata: {type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:120]}") from None
    return schema.from_arrow(arrow_schema)


def _parquet_split(paths: list[Path], origin: str) -> SplitData:
    try:
        return SplitData(origin, features_of(pq.read_schema(paths[0])), parquet_files=paths)
    except (OSError, pa.ArrowInvalid) as e:
        raise FlanbuildError(f"cannot read Parquet file: {' '.join(str(e).split())}", where=str(paths[0])) from None
    except FlanbuildError as e:
        raise FlanbuildError(str(e), where=str(paths[0])) from None


def read_local_file(path: Path) -> SplitData:
    """A local Parquet, JSONL/JSON-lines or CSV file as a split."""
    if not path.exists():
        raise DataNotFound(f"local file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _parquet_split([path], f"file:{path}")
        if suffix in (".jsonl", ".json"):
            import pyarrow.json as pajson

            table = pajson.read_json(path)
        elif suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pacsv.read_csv(path, parse_options=parse)
        else:
            raise FlanbuildError("unsupported file type (use .parquet, .jsonl, .csv or .tsv)", where=str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise FlanbuildError(f"cannot read data file: {' '.join(str(e).split())}", where=str(path)) from None
    duplicated = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if duplicated:
        raise FlanbuildError(f"duplicate column name(s) {', '.join(map(repr, duplicated))}", where=str(path))
    return SplitData(f"file:{path}", schema.from_arrow(table.schema), table=table)


def find_in_mirror(data_dir: "Path | urls.RemoteMirror", hub_id: str, config: str, split: str) -> list[Path]:
    """Parquet files of one split in a mirror laid out as ``<hub id>/<config>/<split>.parquet``
    (local copies of them, for a mirror at a URL: sources/urls.py).

    Everything is confined to ``data_dir``: a hub id, config or split that would lead outside it (``..``,
    an absolute path, a symlink) is an error, and files that resolve outside it are not read.
    """
    from flanbuild.catalog.untrusted import confined, escape

    if isinstance(data_dir, urls.RemoteMirror):
        return data_dir.fetch(hub_id, config, split)
    folder = confined(data_dir, hub_id, config)
    if folder is None or confined(folder, split) is None:
        raise FlanbuildError(f"{escape(hub_id)}/{escape(config)}/{escape(split)} would read outside the data "
                             f"directory {data_dir}")
    folder = Path(data_dir) / hub_id / config
    single = folder / f"{split}.parquet"
    if single.is_file():
        found = [single]
    else:
        found = sorted(folder.glob(f"{split}-*.parquet")) or sorted((folder / split).glob("*.parquet"))
    return [p for p in found if confined(data_dir, str(p.relative_to(data_dir))) is not None and p.is_file()]


def load_split(task: Task, role: str, data_dirs: list[Path], allow_hub: bool = True) -> SplitData:
    """The data for ``role`` (train/eval) of a task, by the resolution order above; DataNotFound if none."""
    src = task.source
    if role in src.tables:
        table = src.tables[role]
        return SplitData(f"memory:{task.name}/{role}", features_of(table.schema), table=table)
    if role in src.files and role not in src.splits:
        return read_local_file(Path(src.files[role]))
    if role not in src.splits:
        note = f" ({src.manual})" if src.manual and not src.hub else ""
        raise DataNotFound(f"the card maps no source split to '{role}'{note}")
    split, last, head = parse_slice(src.splits[role])
    data = _load_whole_split(task, role, split, data_dirs, allow_hub)
    if src.max_rows is not None:  # the first N rows in file order, wherever they came from (streamed from the Hub)
        data = first_rows(data, src.max_rows, split)
    if last is not None:  # a carve: the last N rows (FLAN's train[-N:])
        return data.window(last, None)
    if head is not None:  # what a carve leaves: all but the last N rows
        return data.window(0, head)
    return data


def _load_whole_split(task: Task, role: str, split: str, data_dirs: list[Path], allow_hub: bool) -> SplitData:
    """A whole source split: the card's file for it, a mirror (under mirror_id if given), or the hub."""
    src = task.source
    for r, path in src.files.items():  # a carve reads the file of the role whose split it slices
        if r == role or src.base_split(r) == split:
            return read_local_file(Path(path))
    if not src.hub:
        raise DataNotFound(f"no file for '{role}' and no hub id")
    hub_id, config = src.mirror_location()
    for data_dir in data_dirs:
        paths = find_in_mirror(data_dir, hub_id, config, split)
        if paths:
            return _parquet_split(paths, f"mirror:{hub_id}/{config}/{split}")
    if not allow_hub:
        raise DataNotFound(f"{src.hub}/{src.config}/{split} is not in the local mirror")
    try:
        return _load_from_hub(task, split, data_dirs)
    except DataNotFound:  # the last resort: the embedded sample (flanbuild/sample, redistributable data only)
        from flanbuild.sources import sample

        paths = sample.find(hub_id, config, split)
        if not paths:
            raise
        return _parquet_split(paths, f"{sample.ORIGIN_PREFIX}{hub_id}/{config}/{split}")


def first_rows(data: SplitData, n: int, split: str) -> SplitData:
    """The first ``n`` rows of a whole split (``source.max_rows``), with the rule recorded in ``read``."""
    streamed = "; streamed from the Hub, nothing after them downloaded" if data.read == STREAMED else ""
    limited = data.window(0, n)
    if limited.num_rows < n:  # the split is shorter: all of it is read, still in file order
        limited.read = f"all {limited.num_rows} rows of {split} (fewer than source.max_rows: {n}){streamed}"
    else:
        limited.read = f"first {n} rows of {split} in file order (source.max_rows: {n}){streamed}"
    return limited


STREAMED = "streamed"


def _stream_head(src, split: str) -> SplitData:
    """The first ``src.max_rows`` rows of a Hub split, streamed: only the files (or row groups) that hold them are
    read, never the whole dataset. Rows keep their file order, so the same card reads the same rows each time."""
    import itertools

    import datasets

    ds = datasets.load_dataset(src.hub, None if src.config == "default" else src.config, split=split,
                               revision=src.revision, streaming=True)
    rows = list(itertools.islice(iter(ds), src.max_rows))
    hf_features = getattr(ds, "features", None)
    if hf_features is not None:
        table = pa.Table.from_pylist(rows, schema=hf_features.arrow_schema)
        features = schema.from_hf(hf_features.to_dict())
    else:
        table = pa.Table.from_pylist(rows)
        features = schema.from_arrow(table.schema)
    return SplitData(f"hub:{src.hub}/{src.config}/{split}", features, table=table, read=STREAMED)


def _load_from_hub(task: Task, split: str, data_dirs: list[Path]) -> SplitData:
    src = task.source
    mirrors = ", ".join(str(d) for d in data_dirs) or "none given"
    manual = f"; {src.manual}" if src.manual else ""
    from flanbuild.catalog.untrusted import escape, is_hub_id

    if not is_hub_id(src.hub) or Path(src.hub).exists():  # datasets would read a local directory
        raise FlanbuildError(f"task {task.name}: source.hub {escape(src.hub)!r} is not a Hub dataset id (it is a local "
                             f"path here); refusing to load it", where=task.origin or None)
    hub_offline = offline.is_offline()
    if hub_offline:  # the datasets cache may still hold it; loaded in offline mode, a miss fails at once
        if not _in_hf_cache(src.hub):
            raise DataNotFound(f"{src.hub}/{src.config}/{split} not in the local mirror ({mirrors}) and the hub is "
                               f"offline with no copy in the local Hugging Face cache{manual}")
    quiet_libraries()
    try:
        import datasets

        with offline.hub_offline(hub_offline):
            if src.max_rows is not None and not hub_offline:  # a huge source: only its first rows, streamed
                return _stream_head(src, split)
            ds = datasets.load_dataset(src.hub, None if src.config == "default" else src.config,
                                       split=split, revision=src.revision)
    except Exception as e:  # noqa: BLE001 - the datasets library raises many types; all mean "not here"
        offline_note = " (hub offline)" if hub_offline else ""
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataNotFound(
            f"{src.hub}/{src.config}/{split} not in the local mirror ({mirrors}) and not loadable from the "
            f"hub{offline_note}: {reason}{manual}"
        ) from None
    features = schema.from_hf(ds.features.to_dict())
    files = [Path(f["filename"]) for f in ds.cache_files]
    if files and getattr(ds, "_indices", None) is None:  # the usual case: a plain memory-mapped dataset, shareable with workers by path
        return SplitData(f"hub:{src.hub}/{src.config}/{split}", features, arrow_files=files)
    return SplitData(f"hub:{src.hub}/{src.config}/{split}", features, table=ds.data.table)


def _in_hf_cache(hub_id: str) -> bool:
    """Whether the local Hugging Face caches may hold this dataset (checked without importing datasets)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", home / "hub")))
    org_name = hub_id.replace("/", "___")
    return any(p.exists() for p in (datasets_cache / org_name, datasets_cache / hub_id.split("/")[-1],
                                    hub_cache / f"datasets--{hub_id.replace('/', '--')}"))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers (the one offline policy: ``flanbuild.sources.offline``)."""
    return offline.hub_reachable(timeout)


def quiet_libraries() -> None:
    """Turn off the Hugging Face libraries' own progress bars and info logs (flanbuild reports progress)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")


def source_key(task: Task, role: str) -> tuple[str, str, str, str] | None:
    """(source, config, split, part) identifying the rows a task reads for a role; part is ``all``, ``head``
    (all but a carve) or ``tail`` (a carve). None for in-memory tables (NIv2, the Python API)."""
    src = task.source
    if role in src.tables:
        return None
    if role in src.files and role not in src.splits:
        return (f"file:{Path(src.files[role]).resolve()}", "", "", "all")
    if role not in src.splits:
        return None
    split, last, head = parse_slice(src.splits[role])
    part = "tail" if last is not None else "head" if head is not None else "all"
    for r, path in src.files.items():
        if r == role or src.base_split(r) == split:
            return (f"file:{Path(path).resolve()}", "", split, part)
    return (src.hub or "", src.config, split, part)


def source_overlaps(selected: dict[str, tuple[Task, str]]) -> list[str]:
    """Pairs of selected tasks (name -> (task, role)) that would put the same source rows into one build:
    the same source split read twice (unless one reads a carve and the other what it leaves), or a task
    together with one its card says it duplicates. One message per pair, naming both tasks."""
    problems = []
    names = sorted(selected)
    keys = {n: source_key(*selected[n]) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ka, kb = keys[a], keys[b]
            if ka and kb and ka[:3] == kb[:3] and (ka[3] == kb[3] or "all" in (ka[3], kb[3])):
                problems.append(f"tasks {a} ({selected[a][1]}) and {b} ({selected[b][1]}) both read "
                                f"{ka[0]}/{ka[1]}/{ka[2]}: the same source rows would enter the build twice")
            elif b in selected[a][0].duplicates or a in selected[b][0].duplicates:
                problems.append(f"tasks {a} ({selected[a][1]}) and {b} ({selected[b][1]}) are copies of the same "
                                f"dataset (card 'duplicates'): its rows would enter the build twice")
    return problems
