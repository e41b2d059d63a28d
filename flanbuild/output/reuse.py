"""Split files a rebuild does not write again: the previous output's file, when the same rows go into it.

A split file's bytes follow from its write plan (``writer.ShardWrite``): which parts (named by their
render-cache keys), which of their rows decontamination dropped, the file's rows of the split, its
row-group cuts and, interleaved, the part of every row. Hashed together with the code of the writer and
of the card's statistics and the library versions, the plan names the file. Once a file is written, the
cache keeps, under that key, its size, its SHA-256 and the statistics of its rows for the card
(``<cache>/files``). A rebuild whose plan for a file has a key in the cache takes the previous output's
file, if it still has those bytes (hard link, else a copy), and its statistics from the cache. After
one training template changed, the eval files are neither written nor read again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from flanbuild.output import stats
from flanbuild.output.stats import StatsCollector
from flanbuild.pipeline import cachefile, writer
from flanbuild.pipeline.engine import library_versions

SCHEME = "split-file-v1"


def file_key(w: writer.ShardWrite, part_keys: dict[Path, str], seed: int, tokenizer: str | None) -> str | None:
    """The key of a planned split file (None when a part has no render-cache key: nothing to name it by)."""
    if any(path not in part_keys for part in w.parts for path in part.paths):
        return None
    h = hashlib.sha256(json.dumps([SCHEME, library_versions(), w.rel, w.split, w.start, w.stop, list(w.cuts),
                                   list(w.first), seed, tokenizer]).encode())
    for module in (writer.__file__, stats.__file__):
        h.update(Path(module).read_bytes())  # a change to how files or statistics are made never reuses old ones
    for part in w.parts:
        h.update(json.dumps([part.task, part.rows, [part_keys[p] for p in part.paths]]).encode())
        for dropped in part.dropped:
            h.update(len(dropped).to_bytes(8, "little") + dropped.astype("<i8").tobytes())
    if w.order is not None:
        h.update(w.order.astype("<i4").tobytes())
    return h.hexdigest()


class FileCache:
    """Written split files' records (size, SHA-256, statistics) under ``cache_dir/files``."""

    def __init__(self, cache_dir: Path):
        self.dir = Path(cache_dir) / "files"

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def reuse(self, key: str, previous: Path, stage: Path, rel: str, seed: int,
              tokenizer: str | None) -> tuple[writer.DataFile, StatsCollector] | None:
        """Put the previous output's file ``rel`` into ``stage`` if the cache says it is the file of
        ``key`` and its bytes verify; returns its record and statistics, or None."""
        try:
            doc = json.loads(self._path(key).read_text(encoding="utf-8"))
            record = writer.DataFile(**doc["file"])
            src = previous / rel
            if (doc.get("key") != key or record.path != rel or src.is_symlink() or not src.is_file()
                    or src.stat().st_size != record.bytes or writer.sha256_file(src) != record.sha256):
                return None
            collector = StatsCollector.from_json(doc["stats"], seed, tokenizer)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no entry, or a damaged one: the file is written
        cachefile.link_or_copy(src, stage / rel)
        cachefile.touch(self._path(key))
        return record, collector

    def store(self, key: str, record: writer.DataFile, collector: StatsCollector) -> None:
        cachefile.write(self._path(key), json.dumps({"key": key, "file": asdict(record),
                                                     "stats": collector.to_json()}).encode())
