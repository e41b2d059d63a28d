"""The cache directory: what it holds, and removing what is no longer worth keeping.

Builds keep what they computed under the cache directory (``--cache-dir``, else ``$FLANBUILD_CACHE``,
else ``$XDG_CACHE_HOME/flanbuild`` or ``~/.cache/flanbuild``) so that a rebuild redoes only what
changed. Nothing in it is ever needed: every entry is verified when it is used and computed again when
it is missing, so any entry may be deleted at any time, even while a build runs. Left alone, the cache
only grows; ``flanbuild cache`` shows it by kind and prunes it, least recently used first. A hit
refreshes its entry's modification time (``cachefile.touch``), which is what "used" means here (access
times are often not kept).

Only what flanbuild writes is ever removed: the kinds below, in their own folders, and its temporary
files. Anything else found in the directory is reported and left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from flanbuild.errors import FlanbuildError

KINDS = {  # kind -> its folder (render parts sit in two-hex-digit folders at the top)
    "render": "",  # rendered shards: a part and its record each
    "filters": "filters",  # the rows each card filter keeps, per source split
    "decontam": "decontam",  # decontamination outcomes per task, and eval indexes
    "files": "files",  # split-file records: size, SHA-256, statistics for the card
    "plots": "plots",  # the card's pictures
    "mirrors": "mirrors",  # local copies of files from remote mirrors (--data-dir s3://...)
    "models": "models",  # pretrained models converted for transformers (flanbuild finetune)
}
ABANDONED_AFTER = 3600.0  # seconds: a temporary file this old is no write in progress, but a killed one's
_RENDER_FOLDER = re.compile(r"[0-9a-f]{2}")
_RENDER_FILE = re.compile(r"[0-9a-f]{64}(\.[a-z]+)+")  # KEY.arrow, KEY.json (KEY.parquet: older versions')


@dataclass(frozen=True)
class Entry:
    """One thing the cache keeps, removed as a whole: its files (a render part and its record), or a folder
    (a converted model)."""

    kind: str
    paths: tuple[Path, ...]
    size: int
    used: float  # the newest modification time of its files (a hit refreshes it)


@dataclass
class Inventory:
    root: Path
    entries: list[Entry] = field(default_factory=list)
    leftovers: list[Entry] = field(default_factory=list)  # temporary files of writes killed mid-way
    others: list[Path] = field(default_factory=list)  # not flanbuild's: never removed

    def by_kind(self) -> dict[str, list[Entry]]:
        found: dict[str, list[Entry]] = {kind: [] for kind in KINDS}
        for entry in self.entries:
            found[entry.kind].append(entry)
        return found


def scan(root: Path, now: float | None = None) -> Inventory:
    """What ``root`` holds, by kind (an absent directory holds nothing)."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise FlanbuildError(f"cache directory {root} is not a directory")
    inventory = Inventory(root)
    if not root.is_dir():
        return inventory
    now = time.time() if now is None else now
    folders = {folder: kind for kind, folder in KINDS.items() if folder}
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and child.name in folders:
            kind = folders[child.name]
            for group in (_model_folders(child) if kind == "models" else _file_groups(child)):
                _add(inventory, kind, group, now)
        elif child.is_dir() and not child.is_symlink() and _RENDER_FOLDER.fullmatch(child.name):
            ours = {p for p in child.iterdir() if p.is_file() and not p.is_symlink()
                    and (_RENDER_FILE.fullmatch(p.name) or _is_temporary(p))}
            inventory.others.extend(sorted(set(child.iterdir()) - ours))
            for group in _groups(ours):
                _add(inventory, "render", group, now)
        else:
            inventory.others.append(child)
    return inventory


def _add(inventory: Inventory, kind: str, group: list[Path], now: float) -> None:
    """File a group of paths as an entry, or as a leftover when it is an abandoned temporary file."""
    entry = _entry(kind, group)
    if _is_temporary(group[0]):
        if now - entry.used > ABANDONED_AFTER:  # younger: perhaps a build writing it right now
            inventory.leftovers.append(entry)
    else:
        inventory.entries.append(entry)


def _is_temporary(path: Path) -> bool:
    """cachefile's ``.NAME.PID.tmp`` files and the models' ``.NAME-XXXX`` conversion folders."""
    return path.name.startswith(".")


def _file_groups(folder: Path) -> list[list[Path]]:
    """The files under ``folder`` (a kind's own folder: all flanbuild's), grouped by ``_groups``."""
    return _groups(Path(d) / f for d, _, files in os.walk(folder) for f in files if not (Path(d) / f).is_symlink())


def _groups(paths) -> list[list[Path]]:
    """Files grouped per folder by their name up to the first dot (``KEY.arrow`` with ``KEY.json``;
    ``train.parquet`` with ``train.parquet.remote.json``); a temporary file alone."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in sorted(paths):
        stem = path.name if _is_temporary(path) else path.name.split(".", 1)[0]
        groups.setdefault((path.parent, stem), []).append(path)
    return list(groups.values())


def _model_folders(folder: Path) -> list[list[Path]]:
    return [[child] for child in sorted(folder.iterdir())]


def _entry(kind: str, paths: list[Path]) -> Entry:
    size, used = 0, 0.0
    for path in paths:
        files = [path] if not path.is_dir() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            try:
                st = f.lstat()
            except OSError:  # removed meanwhile (a build replacing it): counts for nothing
                continue
            size += st.st_size
            used = max(used, st.st_mtime)
    return Entry(kind, tuple(paths), size, used)


# -- what to remove --------------------------------------------------------------------------------

def to_prune(inventory: Inventory, *, max_size: int | None = None, older_than: float | None = None,
             kinds: tuple[str, ...] = (), now: float | None = None) -> list[Entry]:
    """The entries to remove, least recently used first: those unused for ``older_than`` seconds, then
    more until the cache holds at most ``max_size`` bytes; and every leftover. ``kinds``: only these
    (entries of other kinds still count towards ``max_size``)."""
    now = time.time() if now is None else now
    candidates = sorted((e for e in inventory.entries if not kinds or e.kind in kinds), key=lambda e: (e.used, e.paths))
    chosen, kept = [], []
    for entry in candidates:
        (chosen if older_than is not None and now - entry.used > older_than else kept).append(entry)
    if max_size is not None:
        size = sum(e.size for e in inventory.entries) - sum(e.size for e in chosen)
        for entry in kept:
            if size <= max_size:
                break
            chosen.append(entry)
            size -= entry.size
    return [e for e in inventory.leftovers if not kinds or e.kind in kinds] + chosen


def to_clear(inventory: Inventory, kinds: tuple[str, ...] = ()) -> list[Entry]:
    return [e for e in inventory.leftovers + inventory.entries if not kinds or e.kind in kinds]


def remove(inventory: Inventory, entries: list[Entry]) -> int:
    """Delete these entries (and the folders they leave empty); returns the bytes freed. An entry a build
    removed or replaced meanwhile is skipped."""
    freed = 0
    for entry in entries:
        for path in entry.paths:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
        freed += entry.size
        _remove_empty_parents(entry.paths[0].parent, inventory.root)
    return freed


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): the folders above are not empty either
            return
        folder = folder.parent
