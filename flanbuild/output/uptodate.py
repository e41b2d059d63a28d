"""Whether ``OUT`` already holds this build: the build key, and the check that makes a rebuild free.

A build's key is a SHA-256 over everything that decides what it writes into ``OUT``: the cache key of
every render shard (data identity, task card and templates, rows, seed, prompt style, library
versions), the resolved configuration and command line (both recorded in ``mixture.json`` and the
card), what the selection skipped and why, the mixer's numbers, every catalog entry the card may show,
and the versions recorded in the manifest. The key is written into ``mixture.json`` (``build_key``).

When ``OUT`` holds a manifest with the same key and its data files verify (every file present with its
recorded size and SHA-256), the build is up to date: nothing is rendered, written or plotted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from flanbuild.errors import FlanbuildError
from flanbuild.output.manifest import Manifest, load_manifest, verify

#: Bump when the meaning of the key changes (a key from another scheme never matches).
KEY_SCHEME = 1


def _plain(value: Any) -> Any:
    """JSON-able form of catalog objects (dataclasses, tuples, dicts); anything else as its str."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.name != "tables"}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def build_key(shard_keys: list[str], record: dict[str, Any], catalog: dict[str, Any]) -> str:
    """The key of a build: its shards' cache keys, the manifest's inputs (``record``) and the catalog
    entries the card may describe (``catalog``: task name -> Task)."""
    h = hashlib.sha256()
    h.update(f"flanbuild-build-key-{KEY_SCHEME}\n".encode())
    for key in shard_keys:
        h.update(key.encode() + b"\n")
    h.update(json.dumps(_plain(record), sort_keys=True, default=str).encode())
    for name in sorted(catalog):
        h.update(json.dumps([name, _plain(catalog[name])], sort_keys=True, default=str).encode())
    return h.hexdigest()


def current(out: Path, key: str) -> Manifest | None:
    """``OUT``'s manifest if OUT holds a verified build with this key, else None."""
    if not ((Path(out) / "mixture.json").is_file() and (Path(out) / "README.md").is_file()):
        return None
    try:
        manifest = load_manifest(out)
        if manifest.get("build_key") != key or verify(out):
            return None
    except FlanbuildError:
        return None
    return manifest
