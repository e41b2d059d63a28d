"""Mirrors at fsspec URLs (``s3://``, ``gs://``, ``hf://``, ``file://``...), read through local copies.

``--data-dir`` may name a mirror on an object store instead of a local directory: the same layout,
``<url>/<hub id>/<config>/<split>.parquet``. Only the split files a build reads are copied, into
``<cache>/mirrors/<hash of the URL>/`` (the cache of renders and decontamination results, on the
machine that runs ``flanbuild build``), and a copy is fetched again only when the remote file's size
or modification stamp changed. From there on they are ordinary local Parquet files: the build, its
cache keys and its bytes are those of a local mirror with the same files. Workers of a Dask cluster
never read a mirror (the client ships them their rows), so they need no access to the URL either.

Credentials and options are fsspec's (environment variables, ``~/.aws``, ``gcloud``, ``HF_TOKEN``);
the protocol's package must be installed (``s3fs``, ``gcsfs``; ``hf://`` comes with huggingface_hub).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from flanbuild.errors import FlanbuildError


def is_url(text: str | Path) -> bool:
    """``proto://...`` (a local path, even one with a colon in it, is not)."""
    head, sep, _ = str(text).partition("://")
    return bool(sep) and head.isidentifier() and isinstance(text, str)


def default_cache_dir() -> Path:
    """The cache root: rendered parts, decontamination results, copies of remote mirror files."""
    base = os.environ.get("FLANBUILD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flanbuild"
    return Path(base)


def split_dirs(value: str) -> list[str]:
    """``FLANBUILD_DATA_DIR``'s entries: split at ``os.pathsep``, but ``s3://b/m`` stays one entry."""
    pieces = value.split(os.pathsep)
    out: list[str] = []
    for piece in pieces:
        if out and piece.startswith("//") and out[-1].isidentifier():
            out[-1] += os.pathsep + piece
        elif piece:
            out.append(piece)
    return out


def filesystem(url: str):
    """(fsspec filesystem, path) of a URL; an unknown protocol or a missing package is a one-line error."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:  # unknown protocol, or its package is not installed
        raise FlanbuildError(f"cannot open {url}: {e}") from None


@dataclass(frozen=True)
class RemoteMirror:
    """A mirror at a URL; ``fetch`` gives local copies of one split's files."""

    url: str
    local_root: Path

    @classmethod
    def at(cls, url: str, cache_dir: Path | None = None) -> "RemoteMirror":
        digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
        return cls(url.rstrip("/"), Path(cache_dir or default_cache_dir()) / "mirrors" / digest)

    def __str__(self) -> str:
        return self.url

    def check(self) -> None:
        """A mirror URL that does not exist is an error now, not "not in the mirror" for every task."""
        fs, root = filesystem(self.url)
        try:
            exists = fs.isdir(root)
        except Exception as e:  # noqa: BLE001 - network and permission errors of any fsspec backend
            raise FlanbuildError(f"cannot read {self.url}: {type(e).__name__}: {e}") from None
        if not exists:
            raise FlanbuildError(f"directory {self.url} does not exist")

    def remote_files(self, hub_id: str, config: str, split: str) -> list[str]:
        """The remote files of ``<hub id>/<config>/<split>.parquet`` (or ``<split>-*.parquet``), [] if none."""
        from flanbuild.catalog.untrusted import confined, escape

        if confined(self.local_root, hub_id, config, split) is None:
            raise FlanbuildError(f"{escape(hub_id)}/{escape(config)}/{escape(split)} would read outside the data "
                                 f"directory {self.url}")
        fs, root = filesystem(self.url)
        folder = f"{root}/{hub_id}/{config}"
        try:
            single = f"{folder}/{split}.parquet"
            return [single] if fs.isfile(single) else sorted(fs.glob(f"{folder}/{split}-*.parquet"))
        except Exception as e:  # noqa: BLE001 - network and permission errors of any fsspec backend
            raise FlanbuildError(f"cannot read {self.url}/{hub_id}/{config}: {type(e).__name__}: {e}") from None

    def fetch(self, hub_id: str, config: str, split: str) -> list[Path]:
        """Local copies of the split's files (see :meth:`remote_files`), fetched if missing or changed."""
        fs, _ = filesystem(self.url)
        try:
            return [self._copy(fs, path, self.local_root / hub_id / config / path.rsplit("/", 1)[-1])
                    for path in self.remote_files(hub_id, config, split)]
        except FlanbuildError:
            raise
        except Exception as e:  # noqa: BLE001 - network and permission errors of any fsspec backend
            raise FlanbuildError(f"cannot read {self.url}/{hub_id}/{config}: {type(e).__name__}: {e}") from None

    def _copy(self, fs, remote: str, local: Path) -> Path:
        info = fs.info(remote)
        stamp = {"size": info.get("size"),
                 "changed": str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
                                or info.get("last_commit") or "")}
        meta = local.with_name(local.name + ".remote.json")
        try:
            if local.is_file() and json.loads(meta.read_text()) == stamp and local.stat().st_size == stamp["size"]:
                os.utime(meta)  # used now: flanbuild cache prune removes the least recently used first
                return local
        except (OSError, ValueError):
            pass
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        fs.get_file(remote, str(tmp))
        os.replace(tmp, local)
        meta.write_text(json.dumps(stamp))
        return local


def data_dir(entry: str | Path, cache_dir: Path | None = None) -> Path | RemoteMirror:
    """A ``--data-dir`` entry as the loader reads it."""
    return RemoteMirror.at(entry, cache_dir) if is_url(entry) else Path(entry)


def check_data_dir(d: Path | RemoteMirror, where: str = "") -> None:
    if isinstance(d, RemoteMirror):
        d.check()
    elif not d.expanduser().is_dir():
        raise FlanbuildError(f"directory {d} does not exist{where}")
