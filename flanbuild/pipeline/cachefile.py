"""Cache entries are written whole or not at all, and a cache that cannot be written only costs time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def write(path: Path, data: bytes) -> bool:
    """Write ``path`` atomically (a killed build never leaves half an entry); False if it could not be."""
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def copy(src: Path, path: Path) -> bool:
    """``write`` with the bytes of the file ``src``, copied without reading them into memory."""
    return _atomic(path, lambda tmp: shutil.copyfile(src, tmp))


def _atomic(path: Path, put: Callable[[Path], object]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        put(tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def touch(path: Path) -> None:
    """Mark a cache entry used now (its modification time): ``flanbuild cache prune`` removes the least
    recently used entries first, and access times are often not kept."""
    try:
        os.utime(path)
    except OSError:
        pass


def link_or_copy(src: Path, dst: Path) -> None:
    """Put a kept file (a cache entry, a previous output's file) at ``dst``: a hard link, else a copy.
    Kept files are replaced, never rewritten in place, so sharing the inode is safe."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
